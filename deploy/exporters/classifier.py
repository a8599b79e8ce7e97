"""Export a zoo classifier and check it before anything is written.

The artifact is run by the same code the runtime uses and compared with PyTorch eager (fp32, CPU):
on natural-looking synthetic images through the artifact's own preprocessing (logits within a
relative error of 1e-4 in fp32, 2e-2 in fp16; recorded, not gating, for int8, whose error on
images unlike the training data says little), and for reduced precision on real held-out images
(:mod:`.accuracy`: agreement, logits error, accuracy side by side where labelled). Everything is
built in a temporary folder beside the output and moved into place only after the checks pass.

onnx, openvino and tensorrt artifacts all come from one ONNX graph whose precision is decided here
(:mod:`.precision`): fp32, fp16 tensors, or INT8 Q/DQ nodes calibrated on real images.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from backbones.fileio import sha256_of

from ..backends import ArtifactLoadError, OpenVINOBackend
from ..models import PreparedModel, prepare_model
from ..preprocess import Preprocessor
from ..samples import natural_images
from ..sidecar import FORMAT, VERSION, sidecar_path, tool_versions, validate
from ..tensorrt import TensorRTUnavailable
from .accuracy import compare_on_real_images
from .common import (
    CALIBRATION_METHODS,
    INT8_SCHEMES,
    OPENVINO_INT8,
    ExportError,
    ExportOptions,
    ExportResult,
    check_output_suffix,
    exporter_failures,
    publish,
)
from .images import ImageDataError, ImageSet, calibration_and_held_out, labelled_set
from .onnx_graph import INPUT_NAME, OUTPUT_NAME, build_onnx, onnx_dynamic_axes
from .precision import CalibrationFeed, convert_fp16, quantize_int8

PRECISIONS = {"onnx": ("fp32", "fp16", "int8"), "openvino": ("fp32", "fp16", "int8", "bf16"),
              "tensorrt": ("fp32", "fp16", "int8"), "aoti": ("fp32", "fp16"), "eager": ("fp32",)}  # fmt: skip
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2, "int8": 1e-1}
GATING = ("fp32", "fp16", "bf16")  # int8's synthetic-image error is recorded; real images decide


# ---------------------------------------------------------------- the graph of the export's precision
class Work:
    """What one export builds on the way: the fp32 graph, the graph of its precision, the real images."""

    def __init__(self, prepared: PreparedModel, options: ExportOptions, example: torch.Tensor, folder: Path) -> None:
        self.prepared, self.options, self.example, self.folder = prepared, options, example, folder
        self.preprocess = Preprocessor.from_sidecar(prepared.preprocessing)
        self.calibration: ImageSet | None = None
        self.held_out: ImageSet | None = None
        self.precision_record: dict[str, Any] | None = None

    def fp32_graph(self) -> Path:
        path = self.folder / "model.fp32.onnx"
        if not path.exists():
            build_onnx(self.prepared.model, self.example, path, self.options.opset, self.options.dynamic_hw)
        return path

    def real_images(self) -> None:
        """Calibration and held-out images, read once (before any export work, so bad data fails fast)."""
        options = self.options
        if options.calibration_dir is None and options.calibration_dataset is None:
            return
        # only int8 calibrates; for the other precisions these images are all held-out check images
        count = options.calibration_images if options.precision == "int8" else 0
        self.calibration, self.held_out = calibration_and_held_out(
            directory=options.calibration_dir, dataset=options.calibration_dataset, count=count,
            channels=self.prepared.channels, root=options.data_root)  # fmt: skip

    def calibration_batches(self, batch_size: int = 32) -> CalibrationFeed:
        assert self.calibration is not None
        images, preprocess = self.calibration, self.preprocess
        return CalibrationFeed(
            INPUT_NAME, len(images), lambda: (b.numpy() for b, _ in images.batches(preprocess, batch_size))
        )

    def graph(self) -> Path:
        """The ONNX graph holding the export's precision (bf16 is a runtime hint: the fp32 graph)."""
        precision = self.options.precision
        if precision in ("fp32", "bf16"):
            return self.fp32_graph()
        target = self.folder / f"model.{precision}.onnx"
        if precision == "fp16":
            self.precision_record = convert_fp16(self.fp32_graph(), target)
        else:
            if self.calibration is None:
                raise ExportError("--precision int8 needs real images to calibrate on: --calibration-dir DIR (any "
                                  "layout) or --calibration-dataset NAME (its training split)")  # fmt: skip
            self.precision_record = quantize_int8(self.fp32_graph(), target, self.calibration_batches(),
                                                  method=self.options.calibration_method,
                                                  scheme=self.options.int8_scheme,
                                                  reduce_range=self.options.int8_reduce_range)  # fmt: skip
            self.precision_record["calibration"] = {
                **self.calibration.describe(),
                "method": self.options.calibration_method,
            }
        return target


# ---------------------------------------------------------------- the builders
def _export_onnx(work: Work, path: Path) -> dict[str, Any]:
    shutil.copyfile(work.graph(), path)
    return {"exporter": "torch.onnx.export(dynamo=False)", "opset": work.options.opset}


def _export_openvino(work: Work, path: Path) -> dict[str, Any]:
    from .openvino_ir import inference_hint, nncf_int8, onnx_to_ir

    options = work.options
    if options.precision == "int8" and options.openvino_int8 == "nncf":
        if work.calibration is None:
            raise ExportError("--precision int8 needs --calibration-dir DIR or --calibration-dataset NAME")
        feed = work.calibration_batches(batch_size=1)
        record = nncf_int8(work.fp32_graph(), path, feed.batches(), len(work.calibration))
        work.precision_record = {"tool": "nncf.quantize", "scheme": "symmetric", **work.calibration.describe()}
    else:
        record = onnx_to_ir(work.graph(), path, compress_to_fp16=options.precision == "fp16")
    record["inference_precision"] = inference_hint(options.precision)
    record["int8_from"] = options.openvino_int8 if options.precision == "int8" else None
    return {"exporter": "torch.onnx.export(dynamo=False) + OpenVINO", "opset": options.opset, "openvino": record}


def _export_tensorrt(work: Work, path: Path) -> dict[str, Any]:
    from ..tensorrt.build import BuildOptions, build_engine, default_profiles

    options, prepared = work.options, work.prepared
    if options.precision == "int8" and options.int8_scheme != "symmetric":
        raise ExportError("TensorRT needs symmetric INT8 (zero points 0): use --int8-scheme symmetric")
    profiles = default_profiles(INPUT_NAME, prepared.channels, prepared.input_size, opt_batch=options.opt_batch,
                                max_batch=options.max_batch, dynamic_hw=options.dynamic_hw)  # fmt: skip
    record = build_engine(work.graph(), path, BuildOptions(profiles, options.workspace_gib, options.timing_cache,
                                                           graph_precision=options.precision))  # fmt: skip
    record["timing_cache"] = options.timing_cache.name if options.timing_cache else None
    return {"exporter": "torch.onnx.export(dynamo=False) + TensorRT OnnxParser/build_serialized_network "
                        "(strongly typed)",
            "opset": options.opset, "tensorrt": record}  # fmt: skip


def _export_aoti(work: Work, path: Path) -> dict[str, Any]:
    options = work.options
    device = options.device or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda asked for, and torch.cuda.is_available() is False here")
    if options.precision == "fp16" and device != "cuda":
        raise ExportError("fp16 AOTInductor packages need --device cuda (CPU kernels are compiled for fp32)")
    dtype = torch.float16 if options.precision == "fp16" else torch.float32
    model = copy.deepcopy(work.prepared.model).to(device, dtype).eval()
    axes = {0: torch.export.Dim.DYNAMIC}
    if options.dynamic_hw:
        axes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    with torch.no_grad():
        program = torch.export.export(model, (work.example.to(device, dtype),), dynamic_shapes=(axes,))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return {"exporter": "torch.export.export + torch._inductor.aoti_compile_and_package", "device": device}


def _export_eager(work: Work, path: Path) -> dict[str, Any]:
    from backbones.weights import save_weights

    save_weights(work.prepared.model, path, metadata={"arch": work.prepared.arch})
    return {"exporter": "backbones.weights.save_weights (safetensors)"}


BUILDERS: dict[str, Callable[[Work, Path], dict[str, Any]]] = {
    "onnx": _export_onnx, "openvino": _export_openvino, "tensorrt": _export_tensorrt, "aoti": _export_aoti,
    "eager": _export_eager}  # fmt: skip


# ---------------------------------------------------------------- the checks
def parity_inputs(preprocessing: dict[str, Any], dynamic_hw: bool, max_batch: int | None) -> list[torch.Tensor]:
    """Natural-looking batches through the artifact's own preprocessing: batch 4 and batch 1 (the
    dynamic batch axis), and with dynamic_hw a batch at another image size."""
    pre = Preprocessor.from_sidecar(preprocessing)
    raw_size = (pre.resize * 5 // 4, pre.resize) if pre.resize else (pre.input_size, pre.input_size)
    first = min(4, max_batch or 4)
    images = natural_images(first + 1, raw_size, pre.channels, seed=0)
    batches = [pre(images[:first]), pre(images[first:])]
    if dynamic_hw:
        other = natural_images(2, pre.input_size + 32, pre.channels, seed=1)
        batches.append(pre.normalise(other.float() / 255))
    return batches


def check_parity(reference: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor],
                 tolerance: float, label: str, gating: bool = True) -> dict[str, Any]:  # fmt: skip
    """Compare ``run`` with ``reference`` (fp32, CPU) batch by batch; raise ExportError past ``tolerance``
    (``gating=False``: record and print only)."""
    rows, worst_rel, worst_abs, agree, count = [], 0.0, 0.0, 0, 0
    for batch in batches:
        with torch.no_grad():
            expected = reference(batch).double()
        try:
            got = run(batch).double()
        except Exception as error:  # any failure of the artifact on a valid batch is an export failure
            raise ExportError(f"{label}: running the artifact on a batch of shape {tuple(batch.shape)} failed "
                              f"({type(error).__name__}: {error})") from None  # fmt: skip
        if got.shape != expected.shape:
            raise ExportError(f"{label}: output shape {tuple(got.shape)} for input {tuple(batch.shape)}, "
                              f"PyTorch gives {tuple(expected.shape)}")  # fmt: skip
        rel = float((got - expected).norm() / expected.norm().clamp_min(1e-30))
        abs_err = float((got - expected).abs().max())
        if math.isnan(rel) or math.isnan(abs_err):  # max() would drop a NaN silently
            rel, abs_err = float("inf"), float("inf")
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        count += len(batch)
        rows.append({"shape": list(batch.shape), "rel_error": rel, "max_abs_error": abs_err})
        worst_rel, worst_abs = max(worst_rel, rel), max(worst_abs, abs_err)
    parity = {"reference": "PyTorch eager, fp32, cpu", "inputs": "synthetic natural-looking images (deploy.samples)",
              "metric": "||y - y_ref||_2 / ||y_ref||_2 per batch", "rel_error": worst_rel, "max_abs_error": worst_abs,
              "tolerance": tolerance if gating else None, "top1_agreement": agree / count, "batches": rows}  # fmt: skip
    summary = "; ".join(f"batch {r['shape']}: rel {r['rel_error']:.2e}, max abs {r['max_abs_error']:.2e}" for r in rows)
    print(f"{label} parity vs PyTorch: {summary}")
    bound = f"tolerance {tolerance:.0e}" if gating else "recorded; real images decide"
    print(f"{label} largest error: rel {worst_rel:.3e} ({bound}), max abs {worst_abs:.3e}, "
          f"top-1 agreement {100 * agree / count:.0f}%")  # fmt: skip
    if gating and not worst_rel <= tolerance:
        raise ExportError(f"{label}: the artifact does not match PyTorch: relative error {worst_rel:.3e} > tolerance "
                          f"{tolerance:.0e} (max abs error {worst_abs:.3e}, "
                          f"top-1 agreement {agree}/{count})")  # fmt: skip
    return parity


def held_out_images(work: Work) -> ImageSet | None:
    """Labelled --eval-dataset images, else the calibration images' held-out rest, else None."""
    options, prepared = work.options, work.prepared
    if options.eval_dataset is not None:
        return labelled_set(options.eval_dataset, prepared.class_names, prepared.channels, options.data_root,
                            options.eval_images)  # fmt: skip
    if work.held_out is not None and options.eval_images is not None:
        return ImageSet(work.held_out.name, work.held_out.images[: options.eval_images])
    return work.held_out


# ---------------------------------------------------------------- the sidecar
def build_sidecar(
    prepared: PreparedModel, artifact: Path, name: str, options: ExportOptions, info: dict[str, Any]
) -> dict[str, Any]:
    c, s = prepared.channels, prepared.input_size
    hw: list[int | str] = ["height", "width"] if options.dynamic_hw else [s, s]
    io_dtype = "float16" if options.format == "aoti" and options.precision == "fp16" else "float32"
    device = {"onnx": "any", "eager": "any", "tensorrt": "cuda", "openvino": "cpu"}.get(
        options.format, info.get("device", "cpu"))  # fmt: skip
    axes = {tensor: {str(axis): axis_name for axis, axis_name in mapping.items()}
            for tensor, mapping in onnx_dynamic_axes(options.dynamic_hw).items()}  # fmt: skip
    export_info = {k: v for k, v in info.items() if k not in ("tensorrt", "device", "openvino")}
    export_info.update(created=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=options.command)
    artifact_record: dict[str, Any] = {"file": name, "sha256": sha256_of(artifact), "size": artifact.stat().st_size}
    weights = artifact.with_suffix(".bin")
    if options.format == "openvino":
        artifact_record["weights"] = {
            "file": weights.name,
            "sha256": sha256_of(weights),
            "size": weights.stat().st_size,
        }
    return {
        "format": FORMAT, "version": VERSION, "task": "classification", "backend": options.format,
        "artifact": artifact_record,
        "model": {"arch": prepared.arch, "weights": prepared.weights, "weights_sha256": prepared.weights_sha256,
                  "num_classes": prepared.num_classes, "constructor": prepared.constructor},
        "precision": options.precision, "device": device,
        "inputs": [{"name": INPUT_NAME, "shape": ["batch", c, *hw], "dtype": io_dtype}],
        "outputs": [{"name": OUTPUT_NAME, "shape": ["batch", prepared.num_classes], "dtype": io_dtype}],
        "dynamic_axes": axes,
        "preprocessing": prepared.preprocessing,
        "postprocessing": {"type": "softmax_topk", "output": OUTPUT_NAME, "top_k": options.top_k},
        "class_names": prepared.class_names,
        "tools": {**tool_versions(), **({"tensorrt": info["tensorrt"]["version"]} if info.get("tensorrt") else {})},
        "export": export_info,
        "quantization": None,
        "parity": None,
        "accuracy": None,
        "tensorrt": info.get("tensorrt"),
        "openvino": info.get("openvino"),
    }  # fmt: skip


# ---------------------------------------------------------------- the pipeline
def check_request(output: Path, options: ExportOptions) -> None:
    if options.format not in BUILDERS:
        raise ValueError(f"format must be one of {list(BUILDERS)}, got {options.format!r}")
    check_output_suffix(output, options.format)
    if options.precision not in PRECISIONS[options.format]:
        raise ValueError(f"{options.format} exports support precision {list(PRECISIONS[options.format])}, "
                         f"not {options.precision!r}")  # fmt: skip
    if options.device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {options.device!r}")
    if options.device is not None and options.format in ("onnx", "openvino"):
        raise ValueError(f"--device is for aoti and eager exports; {options.format} artifacts are device-free and "
                         "checked on the CPU here (run it on a GPU with deploy.load(PATH, device='cuda'))")  # fmt: skip
    if options.calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {options.calibration_method!r}")
    if options.int8_scheme not in INT8_SCHEMES:
        raise ValueError(f"--int8-scheme must be one of {INT8_SCHEMES}, got {options.int8_scheme!r}")
    if options.openvino_int8 not in OPENVINO_INT8:
        raise ValueError(f"--openvino-int8 must be one of {OPENVINO_INT8}, got {options.openvino_int8!r}")
    if options.calibration_dir is not None and options.calibration_dataset is not None:
        raise ValueError("give one calibration source: --calibration-dir or --calibration-dataset, not both")
    real_images = options.eval_dataset or options.calibration_dir or options.calibration_dataset
    if options.precision != "fp32" and options.format in ("onnx", "openvino", "tensorrt") and not real_images:
        raise ValueError(f"a {options.precision} artifact is checked against fp32 on real held-out images: give "
                         "--eval-dataset NAME|DIR (labelled), or --calibration-dir / --calibration-dataset (images "
                         "the calibration does not use are the held-out ones)")  # fmt: skip
    if options.format == "tensorrt":
        from ..tensorrt import require_tensorrt

        require_tensorrt()  # fail before any work where TensorRT or CUDA is missing


def export_classifier(arch: str, weights: str | Path | None, output: Path, options: ExportOptions) -> ExportResult:
    """Export ``arch`` (with ``weights``) to ``output``, check it, then write ``output`` and its sidecar."""
    from ..runtime import open_backend

    check_request(output, options)
    if options.format == "tensorrt":
        options.timing_cache = options.timing_cache or output.with_name(output.name + ".timing.cache")
    tolerance = options.tolerance if options.tolerance is not None else TOLERANCES[options.precision]
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    prepared = prepare_model(arch, str(weights) if weights is not None else None)
    example = parity_inputs(prepared.preprocessing, False, None)[0][:2]  # batch 2: no 0/1 specialisation
    output.parent.mkdir(parents=True, exist_ok=True)
    label = f"{options.format} {options.precision} {arch}"
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as work_dir:
        work = Work(prepared, options, example, Path(work_dir))
        work.real_images()
        held_out = held_out_images(work)
        if options.precision != "fp32" and options.format not in ("aoti", "eager") and held_out is None:
            raise ExportError(f"{label}: a reduced-precision export is checked against fp32 on real held-out images: "
                              "give --eval-dataset NAME|DIR (labelled), or calibration images with more than "
                              f"--calibration-images {options.calibration_images} of them")  # fmt: skip
        staged = work.folder / output.name
        with exporter_failures(label, options.format, TensorRTUnavailable, ImageDataError):
            info = BUILDERS[options.format](work, staged)
        seconds["export"] = time.perf_counter() - start
        data = build_sidecar(prepared, staged, output.name, options, info)
        data["quantization"] = work.precision_record
        validate(data, sidecar_path(output))
        try:
            backend = open_backend(staged, data, options.device, ["CPUExecutionProvider"], strict_gpu=True)
        except ArtifactLoadError as error:
            raise ExportError(f"{label}: the new artifact does not load: {error}") from error
        if isinstance(
            backend, OpenVINOBackend
        ):  # what this CPU really computes in (a bf16 hint without bf16 units: f32)
            data["openvino"]["inference_precision_on_export_cpu"] = backend.inference_precision()
        batches = parity_inputs(prepared.preprocessing, options.dynamic_hw, backend.max_batch or options.max_batch)
        data["parity"] = check_parity(prepared.model, backend, batches, tolerance, label,
                                      gating=options.precision in GATING)  # fmt: skip
        if held_out is not None and (options.precision != "fp32" or options.eval_dataset is not None):
            data["accuracy"] = compare_on_real_images(prepared.model, backend, held_out, work.preprocess,
                                                      options.max_accuracy_drop, label)  # fmt: skip
        seconds["check"] = time.perf_counter() - start - seconds["export"]
        del backend  # release the file (onnxruntime / AOTInductor keep it open)
        return publish(staged, output, data, seconds, start, data["accuracy"])
