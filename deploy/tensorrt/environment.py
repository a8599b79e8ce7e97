"""Where TensorRT runs: whether it is installed with a GPU, which version and GPU this is, and the
check that an engine matches the TensorRT and GPU it is loaded on.

Nothing here imports ``tensorrt`` at module level, so this module imports (and its compatibility
check runs) where TensorRT is not installed.

Engines are specific to the TensorRT version that built them and to the GPU architecture (compute
capability) they were built on; the sidecar records both and :func:`check_engine_compatibility`
refuses a mismatch with a message saying how to rebuild, instead of letting deserialisation fail.
A TensorRT 10 engine under TensorRT 11 is such a mismatch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import tensorrt as trt


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
        raise TensorRTUnavailable("'import tensorrt' finds no TensorRT library "
                                  f"(found {getattr(tensorrt, '__path__', '?')}, "
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


def environment_summary() -> str:
    """One line for logs: TensorRT version and GPU, or why there are none."""
    ok, reason = tensorrt_available()
    if not ok:
        return f"TensorRT unavailable: {reason}"
    env = running_environment()
    return f"TensorRT {env['version']} on {env['gpu']} (compute capability {env['compute_capability']}, " \
           f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"  # fmt: skip
