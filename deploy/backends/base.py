"""What every runtime backend is: the protocols a :class:`deploy.runtime.Predictor` and a
:class:`deploy.runtime.DetectionPredictor` call, and the error an artifact that cannot be opened raises."""

from __future__ import annotations

import os
from typing import Protocol

import torch


class Backend(Protocol):
    name: str
    device: str
    max_batch: int | None  # the largest batch the artifact takes (None: any)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class ArtifactLoadError(RuntimeError):
    """An artifact its engine cannot open (corrupt file, wrong device, missing library)."""


def env_threads() -> int:
    """Honour OMP_NUM_THREADS for onnxruntime too (0 = its default)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


Detections = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]  # boxes (N, 4) float32, labels (N,) int64, scores (N,) float32


class DetectorBackend(Protocol):
    """Runs a detector on ONE float (C, H, W) image in [0, 1]; boxes in that image's pixels."""

    name: str
    device: str

    def __call__(self, image: torch.Tensor) -> Detections: ...
