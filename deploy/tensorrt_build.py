"""TensorRT 10 engines from ONNX files: optimisation profiles, FP16, INT8 entropy calibration,
timing cache; and the check that an engine matches the TensorRT and GPU it is loaded on.

``tensorrt`` is imported inside the functions that need it, so this module imports (and its
compatibility check runs) where TensorRT is not installed. Real builds need ``tensorrt`` and a
CUDA GPU. ``python -m deploy.typecheck_tensorrt`` type-checks this file against tensorrt-stubs.

Engines are specific to the TensorRT version that built them and to the GPU architecture (compute
capability) they were built on; the sidecar records both and :func:`check_engine_compatibility`
refuses a mismatch with a message saying how to rebuild, instead of letting deserialisation fail.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backbones.fileio import atomic_path, atomic_write_text

from .preprocess import ImageInputError, Preprocessor

if TYPE_CHECKING:
    import tensorrt as trt

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU for it) is not available in this environment."""


class EngineCompatibilityError(RuntimeError):
    """An engine built by another TensorRT version or for another GPU."""


def require_tensorrt() -> None:
    """Raise :class:`TensorRTUnavailable` unless a working ``tensorrt`` and a CUDA GPU are present."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailable(f"TensorRT is not installed ({error}); install the 'gpu' extra "
                                  "(pip install 'resnet-zoo[gpu]', NVIDIA's tensorrt>=10 wheels) on a machine "
                                  "with an NVIDIA GPU") from None  # fmt: skip
    if not hasattr(tensorrt, "Builder"):  # e.g. only tensorrt-stubs installed: a namespace package of .pyi files
        raise TensorRTUnavailable(f"'import tensorrt' finds no TensorRT library (found {getattr(tensorrt, '__path__', '?')}, "
                                  "type stubs only?); install NVIDIA's tensorrt>=10 wheels")  # fmt: skip
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU, and torch.cuda.is_available() is False here")


def tensorrt_available() -> tuple[bool, str]:
    """(True, "") where TensorRT engines can be built and run; else (False, the reason)."""
    try:
        require_tensorrt()
    except TensorRTUnavailable as error:
        return False, str(error)
    return True, ""


def running_environment() -> dict[str, str]:
    """The TensorRT version, GPU name and compute capability here (needs :func:`require_tensorrt`)."""
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability()
    return {"version": trt.__version__, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def check_engine_compatibility(built: dict[str, Any], running: dict[str, str], artifact: str | Path,
                               strict_gpu: bool = True) -> None:  # fmt: skip
    """Compare a sidecar's ``tensorrt`` record with the running TensorRT and GPU.

    A different TensorRT version or compute capability cannot run the engine: always an error. A
    different GPU model of the same architecture can, with tactics timed for another chip: an
    error when ``strict_gpu``, else a warning.
    """
    rebuild = "rebuild it here from the ONNX file or the weights (python -m deploy.export ... --format tensorrt)"
    if built.get("version") != running["version"]:
        raise EngineCompatibilityError(f"{artifact}: built by TensorRT {built.get('version')}, this is TensorRT "
                                       f"{running['version']}; an engine loads only in the TensorRT version that "
                                       f"built it: {rebuild}")  # fmt: skip
    if built.get("compute_capability") != running["compute_capability"]:
        raise EngineCompatibilityError(f"{artifact}: built for {built.get('gpu')} (compute capability "
                                       f"{built.get('compute_capability')}), this GPU is {running['gpu']} (compute "
                                       f"capability {running['compute_capability']}); engines are specific to the "
                                       f"GPU architecture: {rebuild}")  # fmt: skip
    if built.get("gpu") != running["gpu"]:
        message = (f"{artifact}: built on {built.get('gpu')}, this GPU is {running['gpu']} (same compute capability "
                   f"{running['compute_capability']}); its kernels were timed on the other GPU")  # fmt: skip
        if strict_gpu:
            raise EngineCompatibilityError(f"{message}: {rebuild}, or load with strict_gpu=False to run it anyway")
        warnings.warn(message, stacklevel=2)


def dims_to_list(dims: trt.Dims) -> list[int]:
    """A TensorRT ``Dims`` as a list (it supports len and indexing, not the iterator protocol in its stubs)."""
    return [int(dims[index]) for index in range(len(dims))]


# ---------------------------------------------------------------- INT8 calibration data
def calibration_files(directory: str | Path, limit: int) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"calibration directory not found: {directory}")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate INT8 with")
    return files[:limit]


def calibration_batches(files: list[Path], preprocess: Preprocessor, batch_size: int) -> Iterator[torch.Tensor]:
    """Full batches of preprocessed images (unreadable files are skipped with a warning naming them)."""
    pending: list[torch.Tensor] = []
    for file in files:
        try:
            pending.append(preprocess([file])[0])
        except (ImageInputError, OSError) as error:
            warnings.warn(f"{file}: skipped for calibration ({error})", stacklevel=2)
            continue
        if len(pending) == batch_size:
            yield torch.stack(pending)
            pending = []
    if pending:  # TensorRT takes fixed-size batches: repeat the last images to fill the final one
        yield torch.stack((pending * batch_size)[:batch_size])


def make_entropy_calibrator(batches: Iterator[torch.Tensor], batch_size: int, cache_file: Path, cache_key: str) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` from GPU memory, caching its scales in ``cache_file``.

    With a cache file made for the same ``cache_key`` (weights, images, preprocessing: kept in
    ``<cache_file>.key``) TensorRT reads the scales from it and skips calibration; a cache made
    for anything else is ignored and overwritten.
    """
    key_file = cache_file.with_name(cache_file.name + ".key")
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.current: torch.Tensor | None = None  # keeps the batch alive while TensorRT reads it
            self.count = 0

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            batch = next(batches, None)
            if batch is None:
                return []  # no more data: calibration ends
            self.current = batch.to("cuda", torch.float32).contiguous()
            self.count += 1
            return [int(self.current.data_ptr())] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            if cache_file.is_file() and key_file.is_file() and key_file.read_text() == cache_key:
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: memoryview) -> None:
            with atomic_path(cache_file) as tmp:
                tmp.write_bytes(bytes(cache))
            atomic_write_text(key_file, cache_key)

    return EntropyCalibrator()


# ---------------------------------------------------------------- building
@dataclass
class BuildOptions:
    precision: str = "fp32"  # fp32 (TF32 off: strict parity), fp16, int8 (with FP16 fallback)
    profiles: list[dict[str, dict[str, list[int]]]] | None = None  # per profile: input -> {min, opt, max}
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # read if present, written after the build
    calibrator: Any = None  # make_entropy_calibrator(...) for int8
    verbose: bool = False


def _parse_onnx(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path) -> None:
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  " + "\n  ".join(errors))


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: BuildOptions) -> dict[str, Any]:
    """Build and serialise an engine from ``onnx_path``; return the sidecar's ``tensorrt`` record."""
    require_tensorrt()
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if options.precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, got {options.precision!r}")
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
    _parse_onnx(network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 matmuls would miss the 1e-4 parity
    if options.precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            warnings.warn("this GPU has no fast FP16; TensorRT may fall back to FP32 kernels", stacklevel=2)
        config.set_flag(trt.BuilderFlag.FP16)
    profiles = options.profiles or []
    inputs = [network.get_input(index) for index in range(network.num_inputs)]
    for tensor in inputs:
        shape = dims_to_list(tensor.shape)
        if any(d < 0 for d in shape) and not any(tensor.name in profile for profile in profiles):
            raise ValueError(f"{onnx_path}: input {tensor.name!r} has dynamic axes {shape} "
                             "and needs min/opt/max shapes in an optimisation profile")  # fmt: skip
    trt_profiles = []
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, shapes in profile.items():
            trt_profile.set_shape(name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
        config.add_optimization_profile(trt_profile)
        trt_profiles.append(trt_profile)
    if options.precision == "int8":
        if options.calibrator is None:
            raise ValueError("INT8 needs a calibrator: pass --calibration-dir with representative images")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = options.calibrator
        if trt_profiles:
            config.set_calibration_profile(trt_profiles[0])
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=True)  # a cache from another GPU is ignored, not fatal
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine ({options.precision}); "
                           "rerun with verbose=True for the builder log")  # fmt: skip
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(memoryview(serialized)))
    if options.timing_cache is not None:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    record: dict[str, Any] = {**running_environment(), "profiles": profiles, "workspace_gib": options.workspace_gib,
                              "tf32": False, "int8_calibrated": options.precision == "int8"}  # fmt: skip
    return record


def default_profiles(input_name: str, channels: int, size: int, *, opt_batch: int = 8, max_batch: int = 32,
                     dynamic_hw: bool = False) -> list[dict[str, dict[str, list[int]]]]:  # fmt: skip
    """One profile: batch 1..max_batch (tuned for opt_batch); with dynamic_hw sides size/2..2*size."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch} and {max_batch}")
    low, high = (max(32, size // 2), size * 2) if dynamic_hw else (size, size)
    return [{input_name: {"min": [1, channels, low, low], "opt": [opt_batch, channels, size, size],
                          "max": [max_batch, channels, high, high]}}]  # fmt: skip


def environment_summary() -> str:
    """One line for logs: TensorRT version and GPU, or why there are none."""
    ok, reason = tensorrt_available()
    if not ok:
        return f"TensorRT unavailable: {reason}"
    env = running_environment()
    return f"TensorRT {env['version']} on {env['gpu']} (compute capability {env['compute_capability']}, " \
           f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"  # fmt: skip
