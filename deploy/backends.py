"""The engines a :class:`deploy.runtime.Predictor` runs on. Each takes a normalised float32 (N, C, H, W)
CPU batch and returns the raw outputs (logits) as a float32 CPU tensor; device transfers are theirs.
Detector backends (:class:`DetectorBackend`) take one float (C, H, W) image in [0, 1] at its own size
and return its boxes, labels and scores (the graph resizes, normalises and post-processes).

TensorRT's backend lives in :mod:`deploy.tensorrt_engine` (it needs ``tensorrt`` and CUDA).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

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


def open_onnx_session(path: Path, providers: Sequence[str] | None = None, threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession (with ``providers``, falling back to the CPU with a warning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads() if threads is None else threads
    wanted = list(providers) if providers is not None else default_providers()
    try:
        return ort.InferenceSession(str(path), options, providers=wanted)
    except Exception as error:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, ...)
        if wanted == ["CPUExecutionProvider"]:
            raise ArtifactLoadError(f"{path}: onnxruntime cannot load it ({type(error).__name__}: {error})") from None
        warnings.warn(f"{path}: onnxruntime could not start with {wanted} ({error}); using the CPU", stacklevel=3)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as cpu_error:
        raise ArtifactLoadError(f"{path}: onnxruntime cannot load it ({type(cpu_error).__name__}: {cpu_error})") from None


def _session_device(session: Any) -> str:
    return "cuda" if session.get_providers()[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider") else "cpu"


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: str | Path, input_name: str, output_name: str,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:  # fmt: skip
        self.path, self.input_name, self.output_name = Path(path), input_name, output_name
        self.session = open_onnx_session(self.path, providers, threads)
        self.providers: list[str] = self.session.get_providers()
        self.device = _session_device(self.session)
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


# ---------------------------------------------------------------- detectors
Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes (N, 4) float32, labels (N,) int64, scores (N,) float32


class DetectorBackend(Protocol):
    """Runs a detector on ONE float (C, H, W) image in [0, 1]; boxes in that image's pixels."""

    name: str
    device: str

    def __call__(self, image: torch.Tensor) -> Detections: ...


class OnnxDetectionBackend:
    name = "onnx"

    def __init__(self, path: str | Path, input_name: str, output_names: Sequence[str],
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:  # fmt: skip
        self.path, self.input_name, self.output_names = Path(path), input_name, list(output_names)
        self.session = open_onnx_session(self.path, providers, threads)
        self.providers: list[str] = self.session.get_providers()
        self.device = _session_device(self.session)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if input_name not in inputs or not set(self.output_names) <= set(outputs):
            raise ArtifactLoadError(f"{self.path}: the sidecar names input {input_name!r} and outputs {self.output_names}, "
                                    f"the model has inputs {list(inputs)} and outputs {outputs}")  # fmt: skip
        rank = len(inputs[input_name].shape)
        if rank != 3:
            raise ArtifactLoadError(f"{self.path}: input {input_name!r} has {rank} dimensions; a detector graph takes "
                                    "one (C, H, W) image")  # fmt: skip

    def __call__(self, image: torch.Tensor) -> Detections:
        feed = {self.input_name: image.detach().cpu().float().contiguous().numpy()}
        boxes, labels, scores = self.session.run(self.output_names, feed)
        return (torch.from_numpy(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4),
                torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                torch.from_numpy(np.asarray(scores, dtype=np.float32)))


class EagerDetectionBackend:
    """A torchvision detector (``model([image])[0]``) run as is: the reference exports are checked against."""

    name = "eager"

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactLoadError("device 'cuda' asked for, and torch.cuda.is_available() is False here")
        self.model, self.device = model.to(device).eval(), device

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> Detections:
        output = self.model([image.to(self.device, torch.float32)])[0]
        return output["boxes"].float().cpu(), output["labels"].long().cpu(), output["scores"].float().cpu()
