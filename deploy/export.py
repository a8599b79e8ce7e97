"""``python -m deploy.export --model ARCH --weights W --format onnx|tensorrt|aoti|eager --output PATH``

Exports a zoo classifier and checks it: the artifact is run by the same code the runtime uses, on
natural-looking images through the artifact's own preprocessing, and compared with PyTorch eager
(fp32, CPU). Logits must agree within a relative error (||y - y_ref|| / ||y_ref||, per batch) of
1e-4 in fp32 (fp16 2e-2, int8 1e-1; --tolerance overrides). The largest error is printed and stored
in the sidecar. A mismatch fails the export and leaves nothing behind: everything is built in a
temporary folder beside PATH and moved into place only after the check passes.

* onnx: ``torch.onnx.export(dynamo=False)`` (the TorchScript exporter: see DESIGN.md, "Export
  facts"), opset 17, dynamic batch axis (``--dynamic-hw`` also height and width), checked with
  ``onnx.checker`` (full check, strict shape inference) and annotated with inferred shapes.
* tensorrt: the ONNX file, then a TensorRT 10 engine with one optimisation profile (batch
  1..--max-batch), FP16 or INT8 (entropy calibration on --calibration-dir images); needs tensorrt
  and a CUDA GPU.
* aoti: ``torch.export`` + AOTInductor, a ``.pt2`` package for --device cpu|cuda (compiles C++).
* eager: the weights as ``.safetensors`` with a sidecar, for the PyTorch runtime.

W is a zoo id, a backbones.train run directory or a weights file; without --weights the model is
randomly initialised (a warning; for testing pipelines only).

Detectors: ``--detector c4|fpn --weights RUN --format onnx`` exports a ``detection.train`` run's
Faster R-CNN as one graph (resize, normalise, RPN, RoI heads, box decoding, NMS, score threshold):
one float image (C, H, W) in [0, 1] in, boxes / labels / scores out, boxes in that image's pixels.
``--format tensorrt`` (fp32 or fp16) builds an engine from that graph for images up to
--max-image-side. The check compares detections with PyTorch at two image sizes (see
deploy.detection_export).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from backbones.cliargs import FRACTION, POSITIVE, POSITIVE_INT
from backbones.fileio import atomic_path, sha256_of

from .backends import ArtifactLoadError
from .models import PreparedModel, prepare_model
from .preprocess import Preprocessor
from .runtime import _open_backend
from .samples import natural_images
from .sidecar import FORMAT, VERSION, sidecar_path, tool_versions, validate, write_sidecar
from .tensorrt_build import TensorRTUnavailable

INPUT_NAME, OUTPUT_NAME = "images", "logits"
SUFFIXES = {"onnx": (".onnx",), "tensorrt": (".engine", ".plan"), "aoti": (".pt2",), "eager": (".safetensors",)}
PRECISIONS = {"onnx": ("fp32",), "tensorrt": ("fp32", "fp16", "int8"), "aoti": ("fp32", "fp16"), "eager": ("fp32",)}
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1}


class ExportError(RuntimeError):
    """An export that failed its check; nothing was written."""


@dataclass
class ExportOptions:
    format: str = "onnx"
    precision: str = "fp32"
    dynamic_hw: bool = False
    opset: int = 17
    device: str | None = None  # aoti: cpu (default) or cuda
    tolerance: float | None = None  # default: TOLERANCES[precision]
    top_k: int = 5
    opt_batch: int = 8  # tensorrt profile
    max_batch: int = 32
    workspace_gib: float = 4.0
    calibration_dir: Path | None = None
    calibration_images: int = 512
    calibration_cache: Path | None = None  # default <output>.calibration.cache
    timing_cache: Path | None = None  # default <output>.timing.cache
    command: str | None = None
    # detectors (deploy.detection_export): a detection.train run directory as weights
    detector: str | None = None  # "c4" or "fpn": export the run's Faster R-CNN (ONNX or TensorRT)
    score_thresh: float | None = None  # default: the detector's own (torchvision: 0.05)
    detections_per_image: int | None = None  # default: the detector's own (torchvision: 100)
    max_image_side: int = 2048  # detector TensorRT engines: largest height or width of the profile


DETECTOR_ONLY = ("score_thresh", "detections_per_image")


@dataclass
class ExportResult:
    artifact: Path
    sidecar: Path
    parity: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- the builders
def _onnx_dynamic_axes(dynamic_hw: bool) -> dict[str, dict[int, str]]:
    image_axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    return {INPUT_NAME: image_axes, OUTPUT_NAME: {0: "batch"}}


def build_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = 17, dynamic_hw: bool = False) -> None:
    """Export with the TorchScript exporter, check, and store inferred intermediate shapes."""
    with warnings.catch_warnings():
        # Deliberate: DESIGN.md, "Export facts". The tracer warnings come from the model's input
        # check (static channel count) and option A's strided slice; parity below is the real test.
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python boolean", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=_onnx_dynamic_axes(dynamic_hw),
                              do_constant_folding=True)  # fmt: skip
    check_onnx_file(path)


def check_onnx_file(path: Path) -> None:
    """``onnx.checker`` (full check) and strict shape inference; the inferred shapes are stored in the file."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"the exported ONNX graph is invalid: {error}") from None


def _export_onnx(prepared: PreparedModel, path: Path, options: ExportOptions, example: torch.Tensor, work: Path) -> dict[str, Any]:
    build_onnx(prepared.model, example, path, options.opset, options.dynamic_hw)
    return {"exporter": "torch.onnx.export(dynamo=False)", "opset": options.opset}


def _export_aoti(prepared: PreparedModel, path: Path, options: ExportOptions, example: torch.Tensor, work: Path) -> dict[str, Any]:
    device = options.device or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda asked for, and torch.cuda.is_available() is False here")
    if options.precision == "fp16" and device != "cuda":
        raise ExportError("fp16 AOTInductor packages need --device cuda (CPU kernels are compiled for fp32)")
    dtype = torch.float16 if options.precision == "fp16" else torch.float32
    model = copy.deepcopy(prepared.model).to(device, dtype).eval()
    axes = {0: torch.export.Dim.DYNAMIC}
    if options.dynamic_hw:
        axes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    with torch.no_grad():
        program = torch.export.export(model, (example.to(device, dtype),), dynamic_shapes=(axes,))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return {"exporter": "torch.export.export + torch._inductor.aoti_compile_and_package", "device": device}


def _export_eager(prepared: PreparedModel, path: Path, options: ExportOptions, example: torch.Tensor, work: Path) -> dict[str, Any]:
    from backbones.weights import save_weights

    save_weights(prepared.model, path, metadata={"arch": prepared.arch})
    return {"exporter": "backbones.weights.save_weights (safetensors)"}


def _export_tensorrt(prepared: PreparedModel, path: Path, options: ExportOptions, example: torch.Tensor, work: Path) -> dict[str, Any]:
    from .tensorrt_build import (
        BuildOptions,
        build_engine,
        calibration_batches,
        calibration_files,
        default_profiles,  # fmt: skip
        make_entropy_calibrator,
    )

    onnx_path = work / "model.onnx"
    build_onnx(prepared.model, example, onnx_path, options.opset, options.dynamic_hw)
    profiles = default_profiles(INPUT_NAME, prepared.channels, prepared.input_size, opt_batch=options.opt_batch,
                                max_batch=options.max_batch, dynamic_hw=options.dynamic_hw)  # fmt: skip
    calibrator, calibration = None, None
    if options.precision == "int8":
        if options.calibration_dir is None:
            raise ExportError("--precision int8 needs --calibration-dir DIR with representative images")
        files = calibration_files(options.calibration_dir, options.calibration_images)
        batches = calibration_batches(files, Preprocessor.from_sidecar(prepared.preprocessing), options.opt_batch)
        assert options.calibration_cache is not None
        weights_id = prepared.weights_sha256 or os.urandom(16).hex()  # random init: never reuse a cache
        key = hashlib.sha256(json.dumps([prepared.arch, weights_id, prepared.preprocessing,
                                         [str(f) for f in files], options.opt_batch]).encode()).hexdigest()  # fmt: skip
        calibrator = make_entropy_calibrator(batches, options.opt_batch, options.calibration_cache, key)
        calibration = {"algorithm": "IInt8EntropyCalibrator2", "directory": str(options.calibration_dir),
                       "images": len(files), "batch_size": options.opt_batch,
                       "cache": options.calibration_cache.name, "cache_key": key}  # fmt: skip
    build = BuildOptions(options.precision, profiles, options.workspace_gib, options.timing_cache, calibrator)
    record = build_engine(onnx_path, path, build)
    record["calibration"] = calibration
    record["timing_cache"] = options.timing_cache.name if options.timing_cache else None
    return {"exporter": "torch.onnx.export(dynamo=False) + TensorRT OnnxParser/build_serialized_network",
            "opset": options.opset, "tensorrt": record}  # fmt: skip


BUILDERS: dict[str, Callable[[PreparedModel, Path, ExportOptions, torch.Tensor, Path], dict[str, Any]]] = {
    "onnx": _export_onnx, "tensorrt": _export_tensorrt, "aoti": _export_aoti, "eager": _export_eager}  # fmt: skip


@contextmanager
def exporter_failures(label: str, fmt: str, *passthrough: type[BaseException]) -> Iterator[None]:
    """Turn the exporter's own failure into an ExportError that says which step failed (cause chained);
    ExportError and the ``passthrough`` types already say what is wrong and pass unchanged."""
    try:
        yield
    except ExportError:
        raise
    except passthrough:
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise ExportError(f"{label}: the {fmt} export itself failed ({type(error).__name__}: {first})") from error


# ---------------------------------------------------------------- the check
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
                 tolerance: float, label: str) -> dict[str, Any]:  # fmt: skip
    """Compare ``run`` with ``reference`` (fp32, CPU) batch by batch; raise ExportError past ``tolerance``."""
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
              "tolerance": tolerance, "top1_agreement": agree / count, "batches": rows}  # fmt: skip
    summary = "; ".join(f"batch {r['shape']}: rel {r['rel_error']:.2e}, max abs {r['max_abs_error']:.2e}" for r in rows)
    print(f"{label} parity vs PyTorch: {summary}")
    print(f"{label} largest error: rel {worst_rel:.3e} (tolerance {tolerance:.0e}), max abs {worst_abs:.3e}, "
          f"top-1 agreement {100 * agree / count:.0f}%")  # fmt: skip
    if not worst_rel <= tolerance:
        raise ExportError(f"{label}: the artifact does not match PyTorch: relative error {worst_rel:.3e} > tolerance "
                          f"{tolerance:.0e} (max abs error {worst_abs:.3e}, top-1 agreement {agree}/{count})")  # fmt: skip
    return parity


# ---------------------------------------------------------------- the sidecar
def build_sidecar(prepared: PreparedModel, artifact: Path, name: str, options: ExportOptions, info: dict[str, Any]) -> dict[str, Any]:
    c, s = prepared.channels, prepared.input_size
    hw: list[int | str] = ["height", "width"] if options.dynamic_hw else [s, s]
    io_dtype = "float16" if options.format == "aoti" and options.precision == "fp16" else "float32"
    device = {"onnx": "any", "eager": "any", "tensorrt": "cuda"}.get(options.format, info.get("device", "cpu"))
    axes = {tensor: {str(axis): axis_name for axis, axis_name in mapping.items()}
            for tensor, mapping in _onnx_dynamic_axes(options.dynamic_hw).items()}  # fmt: skip
    export_info = {k: v for k, v in info.items() if k not in ("tensorrt", "device")}
    export_info.update(created=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=options.command)
    return {
        "format": FORMAT, "version": VERSION, "task": "classification", "backend": options.format,
        "artifact": {"file": name, "sha256": sha256_of(artifact), "size": artifact.stat().st_size},
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
        "parity": None,
        "tensorrt": info.get("tensorrt"),
    }  # fmt: skip


# ---------------------------------------------------------------- the pipeline
def _check_request(output: Path, options: ExportOptions) -> None:
    if options.format not in BUILDERS:
        raise ValueError(f"format must be one of {list(BUILDERS)}, got {options.format!r}")
    if output.suffix not in SUFFIXES[options.format]:
        raise ValueError(f"{output}: a {options.format} artifact must end in {' or '.join(SUFFIXES[options.format])}")
    if options.precision not in PRECISIONS[options.format]:
        hint = " (the ONNX file stays fp32; lower the precision in TensorRT: --format tensorrt)" if options.format == "onnx" else ""
        raise ValueError(f"{options.format} exports support precision {list(PRECISIONS[options.format])}, "
                         f"not {options.precision!r}{hint}")  # fmt: skip
    if options.device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {options.device!r}")
    if options.format == "tensorrt":
        from .tensorrt_build import require_tensorrt

        require_tensorrt()  # fail before any work where TensorRT or CUDA is missing


def install_artifact(staged: Path, output: Path) -> None:
    """Move a checked artifact into place atomically, with the usual permissions (some writers make 0600 files)."""
    with atomic_path(output) as tmp:
        shutil.copymode(tmp, staged)
        os.replace(staged, tmp)


def export_model(arch: str, weights: str | Path | None, output: str | Path, options: ExportOptions | None = None,
                 **overrides: Any) -> ExportResult:  # fmt: skip
    """Export ``arch`` (with ``weights``) to ``output``, check parity, then write ``output`` and its sidecar.

    ``overrides`` set :class:`ExportOptions` fields (``format="aoti"``, ``dynamic_hw=True``, ...).
    """
    options = dataclasses.replace(options or ExportOptions(), **overrides)
    output = Path(output)
    if options.detector is not None:
        from .detection_export import export_detector

        return export_detector(arch, weights, output, options)
    given = [f"--{name.replace('_', '-')}" for name in DETECTOR_ONLY if getattr(options, name) is not None]
    if given:
        raise ValueError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to detector exports (--detector c4|fpn with a "
                         f"detection.train run as --weights); {arch} is exported as a classifier")  # fmt: skip
    _check_request(output, options)
    if options.format == "tensorrt":
        options.calibration_cache = options.calibration_cache or output.with_name(output.name + ".calibration.cache")
        options.timing_cache = options.timing_cache or output.with_name(output.name + ".timing.cache")
    tolerance = options.tolerance if options.tolerance is not None else TOLERANCES[options.precision]
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    prepared = prepare_model(arch, str(weights) if weights is not None else None)
    example = parity_inputs(prepared.preprocessing, False, None)[0][:2]  # batch 2: no 0/1 specialisation
    output.parent.mkdir(parents=True, exist_ok=True)
    label = f"{options.format} {options.precision} {arch}"
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as work_dir:
        work = Path(work_dir)
        staged = work / output.name
        with exporter_failures(label, options.format, TensorRTUnavailable, FileNotFoundError):
            info = BUILDERS[options.format](prepared, staged, options, example, work)
        seconds["export"] = time.perf_counter() - start
        data = build_sidecar(prepared, staged, output.name, options, info)
        validate(data, sidecar_path(output))
        try:
            backend = _open_backend(staged, data, options.device, ["CPUExecutionProvider"], strict_gpu=True)
        except ArtifactLoadError as error:
            raise ExportError(f"{label}: the new artifact does not load: {error}") from error
        batches = parity_inputs(prepared.preprocessing, options.dynamic_hw, backend.max_batch or options.max_batch)
        data["parity"] = check_parity(prepared.model, backend, batches, tolerance, label)
        seconds["check"] = time.perf_counter() - start - seconds["export"]
        del backend  # release the file (onnxruntime / AOTInductor keep it open)
        return publish(staged, output, data, seconds, start)


def publish(staged: Path, output: Path, data: dict[str, Any], seconds: dict[str, float], start: float) -> ExportResult:
    """Move a checked artifact into place, write its sidecar, and report (shared by every exporter)."""
    install_artifact(staged, output)
    sidecar = write_sidecar(output, data)
    seconds["total"] = time.perf_counter() - start
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) and {sidecar.name} in {seconds['total']:.1f} s "
          f"(export {seconds['export']:.1f} s, check {seconds['check']:.1f} s)")  # fmt: skip
    return ExportResult(output, sidecar, data["parity"], seconds)


# ---------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.export", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", required=True, help="zoo architecture, e.g. resnet50 (backbones.list_models())")
    parser.add_argument("--weights", help="zoo id, run directory, .safetensors or .pth (omit: random init, testing only)")
    parser.add_argument("--format", choices=list(BUILDERS), default="onnx", help="artifact kind (default: onnx)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                        help="fp16: aoti and tensorrt; int8: tensorrt, calibrated on --calibration-dir (default: fp32)")  # fmt: skip
    parser.add_argument("--dynamic-hw", action="store_true", help="also make height and width dynamic")
    parser.add_argument("--opset", type=POSITIVE_INT, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--output", type=Path, required=True, help="artifact path (.onnx, .engine/.plan, .pt2, .safetensors)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="aoti: device to compile for (default cpu)")
    parser.add_argument("--tolerance", type=POSITIVE, help="relative error allowed (default: fp32 1e-4, fp16 2e-2, int8 1e-1); "
                        "detectors: box error in pixels (default fp32 1, fp16 4)")
    parser.add_argument("--top-k", type=POSITIVE_INT, default=5, help="default top-k in the sidecar's postprocessing")
    det = parser.add_argument_group("detectors (--weights: a detection.train run directory; onnx, or tensorrt fp32/fp16)")
    det.add_argument("--detector", choices=["c4", "fpn"], help="export the run's Faster R-CNN (its design) instead of a classifier")
    det.add_argument("--score-thresh", type=FRACTION, help="drop detections scoring below this in the graph (default: the run's, 0.05)")
    det.add_argument("--detections-per-image", type=POSITIVE_INT, help="keep at most this many per image (default: the run's, 100)")
    det.add_argument("--max-image-side", type=POSITIVE_INT, default=2048,
                     help="tensorrt: largest image height or width the engine accepts (its optimisation profile)")
    trt = parser.add_argument_group("tensorrt")
    trt.add_argument("--opt-batch", type=POSITIVE_INT, default=8, help="profile batch TensorRT tunes for (and calibrates with)")
    trt.add_argument("--max-batch", type=POSITIVE_INT, default=32, help="largest batch of the profile")
    trt.add_argument("--workspace-gib", type=POSITIVE, default=4.0, help="builder workspace memory limit in GiB (default: 4)")
    trt.add_argument("--calibration-dir", type=Path, help="int8: folder of representative images (searched recursively)")
    trt.add_argument("--calibration-images", type=POSITIVE_INT, default=512, help="int8: use at most this many images")
    trt.add_argument("--calibration-cache", type=Path, help="default <output>.calibration.cache (reused when present)")
    trt.add_argument("--timing-cache", type=Path, help="default <output>.timing.cache (reused when present)")
    return parser


def main(argv: list[str] | None = None) -> int:
    if __name__ == "__main__":
        # `python -m deploy.export` runs this file as __main__, a second copy of deploy.export: run the
        # package's copy, whose ExportError is the one deploy.detection_export raises.
        from deploy.export import main as package_main

        return package_main(argv)
    args = build_parser().parse_args(argv)
    from .tensorrt_build import EngineCompatibilityError

    options = ExportOptions(format=args.format, precision=args.precision, dynamic_hw=args.dynamic_hw, opset=args.opset,
                            device=args.device, tolerance=args.tolerance, top_k=args.top_k, opt_batch=args.opt_batch,
                            max_batch=args.max_batch, workspace_gib=args.workspace_gib,
                            calibration_dir=args.calibration_dir, calibration_images=args.calibration_images,
                            calibration_cache=args.calibration_cache, timing_cache=args.timing_cache,
                            detector=args.detector, score_thresh=args.score_thresh,
                            detections_per_image=args.detections_per_image, max_image_side=args.max_image_side,
                            command="python -m deploy.export " + shlex.join(sys.argv[1:] if argv is None else argv))  # fmt: skip
    try:
        export_model(args.model, args.weights, args.output, options)
    except (ExportError, ValueError, FileNotFoundError, TensorRTUnavailable, EngineCompatibilityError) as error:
        raise SystemExit(f"error: {error}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
