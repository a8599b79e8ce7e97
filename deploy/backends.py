"""The engines a :class:`deploy.runtime.Predictor` runs on. Each takes a normalised float32 (N, C, H, W)
CPU batch and returns the raw outputs (logits) as a float32 CPU tensor; device transfers are theirs.

TensorRT's backend lives in :mod:`deploy.tensorrt_engine` (it needs ``tensorrt`` and CUDA).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn


class Backend(Protocol):
    name: str
    device: str
    max_batch: int | None  # the largest batch the artifact takes (None: any)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class ArtifactLoadError(RuntimeError):
    """An artifact its engine cannot open (corrupt file, wrong device, missing library)."""


def _threads() -> int:
    """Honour OMP_NUM_THREADS for onnxruntime too (0 = its default)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def default_providers() -> list[str]:
    """TensorRT EP, then CUDA EP, where this onnxruntime build has them; the CPU EP always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    preferred = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    return preferred + ["CPUExecutionProvider"]


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: str | Path, input_name: str, output_name: str,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:  # fmt: skip
        import onnxruntime as ort

        self.path, self.input_name, self.output_name = Path(path), input_name, output_name
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads() if threads is None else threads
        wanted = list(providers) if providers is not None else default_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as error:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
            if wanted == ["CPUExecutionProvider"]:
                raise ArtifactLoadError(f"{self.path}: onnxruntime cannot load it ({type(error).__name__}: {error})") from None
            warnings.warn(f"{self.path}: onnxruntime could not start with {wanted} ({error}); using the CPU", stacklevel=2)
            try:
                self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            except Exception as cpu_error:
                raise ArtifactLoadError(f"{self.path}: onnxruntime cannot load it ({type(cpu_error).__name__}: "
                                        f"{cpu_error})") from None  # fmt: skip
        self.providers: list[str] = self.session.get_providers()
        self.device = "cuda" if self.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider") else "cpu"
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if input_name not in inputs or output_name not in outputs:
            raise ArtifactLoadError(f"{self.path}: the sidecar names input {input_name!r} and output {output_name!r}, "
                                    f"the model has inputs {list(inputs)} and outputs {outputs}")  # fmt: skip
        batch_dim = inputs[input_name].shape[0]
        self.max_batch: int | None = batch_dim if isinstance(batch_dim, int) else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: batch.detach().cpu().float().contiguous().numpy()}
        (output,) = self.session.run([self.output_name], feed)
        return torch.from_numpy(np.asarray(output, dtype=np.float32))


class AotiBackend:
    """An AOTInductor package (``.pt2``) compiled by ``torch._inductor.aoti_compile_and_package``."""

    name = "aoti"

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.path, self.device, self.dtype = Path(path), device, dtype
        self.max_batch: int | None = None
        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactLoadError(f"{self.path}: compiled for CUDA, and torch.cuda.is_available() is False here")
        try:
            self.runner: Any = torch._inductor.aoti_load_package(str(self.path))
        except Exception as error:  # a corrupt zip, a package for another torch or platform
            raise ArtifactLoadError(f"{self.path}: cannot load the AOTInductor package ({type(error).__name__}: "
                                    f"{error}); it must be loaded by the torch version that compiled it") from None  # fmt: skip

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        output = self.runner(batch.to(self.device, self.dtype).contiguous())
        if isinstance(output, (list, tuple)):
            output = output[0]
        return output.float().cpu()


class EagerBackend:
    """A PyTorch module run as is (the reference every exported artifact is checked against)."""

    name = "eager"

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactLoadError("device 'cuda' asked for, and torch.cuda.is_available() is False here")
        self.model, self.device = model.to(device).eval(), device
        self.max_batch: int | None = None

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device, torch.float32)).float().cpu()
