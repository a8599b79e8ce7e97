"""PyTorch backends: eager modules (the reference every export is checked against) and
AOTInductor packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ArtifactLoadError, Detections


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
                                    f"{error}); it must be loaded by the torch version "
                                    "that compiled it") from None  # fmt: skip

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
