"""onnxruntime backends: classifier graphs (a normalised batch in, logits out) and detector graphs
(one image in, boxes / labels / scores out)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import ArtifactLoadError, Detections, env_threads


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
    options.intra_op_num_threads = env_threads() if threads is None else threads
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
        raise ArtifactLoadError(
            f"{path}: onnxruntime cannot load it ({type(cpu_error).__name__}: {cpu_error})"
        ) from None


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
            raise ArtifactLoadError(f"{self.path}: the sidecar names input {input_name!r} "
                                    f"and outputs {self.output_names}, "
                                    f"the model has inputs {list(inputs)} and outputs {outputs}")  # fmt: skip
        rank = len(inputs[input_name].shape)
        if rank != 3:
            raise ArtifactLoadError(f"{self.path}: input {input_name!r} has {rank} dimensions; a detector graph takes "
                                    "one (C, H, W) image")  # fmt: skip

    def __call__(self, image: torch.Tensor) -> Detections:
        feed = {self.input_name: image.detach().cpu().float().contiguous().numpy()}
        boxes, labels, scores = self.session.run(self.output_names, feed)
        return (
            torch.from_numpy(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            torch.from_numpy(np.asarray(scores, dtype=np.float32)),
        )
