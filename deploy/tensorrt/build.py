"""Strongly typed TensorRT engines from checked ONNX graphs, with TensorRT 10.x and 11.x.

An engine's precision is its ONNX graph's: fp32 tensors, fp16 tensors (deploy.exporters.precision),
or explicit, symmetric INT8 QuantizeLinear/DequantizeLinear nodes calibrated on the CPU. That graph
is what the export check ran in onnxruntime (and OpenVINO) on real images before TensorRT sees it.
The builder therefore sets no precision flag and takes no calibrator: TensorRT 11 removed
``BuilderFlag.FP16/INT8``, ``int8_calibrator`` and the ``IInt8*Calibrator`` classes, and 10.1 already
deprecated implicit calibration. TensorRT 10 builds the network with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; in 11 every network is strongly typed (the flag is
still accepted, and set where it exists). ``python -m deploy.tensorrt.api_check`` keeps removed APIs
out of this package; ``python -m deploy.tensorrt.typecheck`` type-checks it against tensorrt-stubs.

``tensorrt`` is imported inside the functions that need it: this module imports where TensorRT is
not installed. Real builds need ``tensorrt`` and a CUDA GPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backbones.fileio import atomic_path

from .environment import dims_to_list, require_tensorrt, running_environment

if TYPE_CHECKING:
    import tensorrt as trt

# Compute capability from which the GPU has fast fp16 / int8 math (Pascal GP100 / GP102 onwards).
FAST_FP16_CC, FAST_INT8_CC = (6, 0), (6, 1)


@dataclass
class BuildOptions:
    profiles: list[dict[str, dict[str, list[int]]]] | None = None  # per profile: input -> {min, opt, max}
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # read if present, written after the build
    graph_precision: str = "fp32"  # what the ONNX graph holds (for the record and the GPU check only)
    verbose: bool = False


def network_flags(trt_module: Any) -> int:
    """STRONGLY_TYPED where the enum has it (10.x; still accepted by 11.x, where it is the only mode)."""
    flag = getattr(trt_module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def _parse_onnx(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path) -> None:
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  " + "\n  ".join(errors))


def _warn_slow_precision(precision: str) -> None:
    capability = torch.cuda.get_device_capability()
    needed = {"fp16": FAST_FP16_CC, "int8": FAST_INT8_CC}.get(precision)
    if needed is not None and capability < needed:
        warnings.warn(f"this GPU (compute capability {capability[0]}.{capability[1]}) has no fast {precision} math; "
                      f"the {precision} graph will run, but slowly", stacklevel=3)  # fmt: skip


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: BuildOptions) -> dict[str, Any]:
    """Build and serialise a strongly typed engine from ``onnx_path``; return the sidecar's ``tensorrt`` record."""
    require_tensorrt()
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _warn_slow_precision(options.graph_precision)
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    _parse_onnx(network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)  # fp32 tensors stay fp32: TF32 matmuls would miss the 1e-4 parity
    profiles = options.profiles or []
    inputs = [network.get_input(index) for index in range(network.num_inputs)]
    for tensor in inputs:
        shape = dims_to_list(tensor.shape)
        if any(d < 0 for d in shape) and not any(tensor.name in profile for profile in profiles):
            raise ValueError(f"{onnx_path}: input {tensor.name!r} has dynamic axes {shape} "
                             "and needs min/opt/max shapes in an optimisation profile")  # fmt: skip
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, shapes in profile.items():
            trt_profile.set_shape(name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
        config.add_optimization_profile(trt_profile)
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=True)  # a cache from another GPU is ignored, not fatal
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine ({options.graph_precision} graph); "
                           "rerun with verbose=True for the builder log")  # fmt: skip
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(memoryview(serialized)))
    if options.timing_cache is not None:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return {**running_environment(), "profiles": profiles, "workspace_gib": options.workspace_gib, "tf32": False,
            "strongly_typed": True, "graph_precision": options.graph_precision}  # fmt: skip


def default_profiles(input_name: str, channels: int, size: int, *, opt_batch: int = 8, max_batch: int = 32,
                     dynamic_hw: bool = False) -> list[dict[str, dict[str, list[int]]]]:  # fmt: skip
    """One profile: batch 1..max_batch (tuned for opt_batch); with dynamic_hw sides size/2..2*size."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch} and {max_batch}")
    low, high = (max(32, size // 2), size * 2) if dynamic_hw else (size, size)
    return [{input_name: {"min": [1, channels, low, low], "opt": [opt_batch, channels, size, size],
                          "max": [max_batch, channels, high, high]}}]  # fmt: skip
