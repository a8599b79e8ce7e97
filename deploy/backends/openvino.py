"""OpenVINO backends: IR (``.xml`` + ``.bin``) on the CPU, for classifier and detector graphs.

OpenVINO's CPU plugin runs fp32 models in bf16 on CPUs with AVX512-BF16 or AMX unless told
otherwise (measured on such a CPU: 4.4e-3 relative logits error, DESIGN.md). The sidecar's
``openvino.inference_precision`` is therefore always passed as ``INFERENCE_PRECISION_HINT``: ``f32``
for fp32, fp16 (compressed weights) and int8 artifacts, ``bf16`` only for an artifact exported with
that explicit choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import ArtifactLoadError, Detections, env_threads

HINTS = ("f32", "bf16", "f16")


def compile_ir(path: Path, hint: str = "f32", threads: int | None = None, device: str = "CPU") -> Any:
    """An OpenVINO CompiledModel for the IR at ``path`` (its ``.bin`` must sit beside it)."""
    try:
        import openvino as ov
    except ImportError as error:
        raise ArtifactLoadError(f"{path}: OpenVINO is not installed ({error}); pip install openvino") from None
    if hint not in HINTS:
        raise ArtifactLoadError(f"{path}: inference precision {hint!r} is not one of {HINTS}")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise ArtifactLoadError(f"{path}: its weights file {weights.name} is missing (an OpenVINO IR is the .xml "
                                f"and the .bin beside it); copy both")  # fmt: skip
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint}
    count = env_threads() if threads is None else threads
    if count:
        config["INFERENCE_NUM_THREADS"] = count
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(str(path), str(weights)), device, config)
    except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
        first = (str(error).strip().splitlines() or [""])[0]
        raise ArtifactLoadError(f"{path}: OpenVINO cannot load it ({type(error).__name__}: {first})") from None


def _port_names(ports: Sequence[Any]) -> list[str]:
    """Every name of every port (OpenVINO keeps the ONNX tensor name beside names of its own)."""
    return sorted(name for port in ports for name in port.get_names())


class OpenVINOBackend:
    name = "openvino"
    device = "cpu"

    def __init__(self, path: str | Path, input_name: str, output_name: str, hint: str = "f32",
                 threads: int | None = None) -> None:  # fmt: skip
        self.path, self.input_name, self.output_name, self.hint = Path(path), input_name, output_name, hint
        self.compiled = compile_ir(self.path, hint, threads)
        inputs, outputs = _port_names(self.compiled.inputs), _port_names(self.compiled.outputs)
        if input_name not in inputs or output_name not in outputs:
            raise ArtifactLoadError(f"{self.path}: the sidecar names input {input_name!r} and output {output_name!r}, "
                                    f"the model has inputs {inputs} and outputs {outputs}")  # fmt: skip
        batch = self.compiled.input(input_name).get_partial_shape()[0]
        self.max_batch: int | None = batch.get_length() if batch.is_static else None
        self.request = self.compiled.create_infer_request()

    def inference_precision(self) -> str:
        """What the compiled model computes in here, e.g. "f32" (a bf16 hint on a CPU without bf16 units)."""
        return str(self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: batch.detach().cpu().float().contiguous().numpy()}
        result = self.request.infer(feed)
        return torch.from_numpy(np.array(result[self.compiled.output(self.output_name)], dtype=np.float32))


class OpenVINODetectionBackend:
    name = "openvino"
    device = "cpu"

    def __init__(self, path: str | Path, input_name: str, output_names: Sequence[str], hint: str = "f32",
                 threads: int | None = None) -> None:  # fmt: skip
        self.path, self.input_name, self.output_names = Path(path), input_name, list(output_names)
        self.compiled = compile_ir(self.path, hint, threads)
        inputs, outputs = _port_names(self.compiled.inputs), _port_names(self.compiled.outputs)
        if input_name not in inputs or not set(self.output_names) <= set(outputs):
            raise ArtifactLoadError(f"{self.path}: the sidecar names input {input_name!r} and outputs "
                                    f"{self.output_names}, the model has inputs {inputs} "
                                    f"and outputs {outputs}")  # fmt: skip
        self.request = self.compiled.create_infer_request()

    def __call__(self, image: torch.Tensor) -> Detections:
        result = self.request.infer({self.input_name: image.detach().cpu().float().contiguous().numpy()})
        boxes, labels, scores = (np.array(result[self.compiled.output(name)]) for name in self.output_names)
        return (torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4), torch.from_numpy(labels.astype(np.int64)),
                torch.from_numpy(scores.astype(np.float32)))  # fmt: skip
