"""Raw images -> the network's input batch, as a sidecar's ``preprocessing`` record says.

Every accepted input (a file path, a PIL image, a numpy array, a tensor) first becomes a float32
(C, H, W) tensor in [0, 1]; resizing, cropping and padding then run on tensors (torchvision's
antialiased resize), so the same pixels give the same network input whatever type they came in.
Detectors stop after that first step (:class:`ImageReader`): their graph resizes and normalises.

Geometry, in order:

* ``resize`` set (ImageNet): shorter side to ``resize``, then the center ``input_size`` crop.
* ``pad_to`` set (the small nets, e.g. Fashion-MNIST 28 px): images smaller than ``pad_to`` are
  zero-padded (black, before normalisation) around the center, as the training pipeline does.
* Otherwise, or for images larger than ``input_size`` without ``resize``: shorter side to
  ``input_size`` and the center crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.transforms.v2 import functional as F

from backbones.augment import Preprocess
from backbones.imagenet import IMAGENET_MEAN, IMAGENET_STD, decode_image, to_rgb

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
Images = ImageInput | Sequence[ImageInput]

_INTERPOLATION = {"bilinear": F.InterpolationMode.BILINEAR, "bicubic": F.InterpolationMode.BICUBIC,
                  "nearest": F.InterpolationMode.NEAREST}  # fmt: skip


class ImageInputError(ValueError):
    """An input the predictor cannot turn into an image (type, shape, channels, dtype, file)."""


def imagenet_preprocessing(resize: int = 256, crop: int = 224) -> dict[str, Any]:
    """The single-crop evaluation transform of the ImageNet nets (backbones.imagenet.CenterCrop)."""
    return {"input_size": crop, "channels": 3, "resize": resize, "pad_to": None, "interpolation": "bilinear",
            "antialias": True, "scale": 255.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "layout": "NCHW"}  # fmt: skip


def from_zoo_preprocess(record: dict[str, Any]) -> dict[str, Any]:
    """A zoo record's / training run's ``preprocessing`` (backbones.augment.Preprocess) as sidecar fields."""
    pre = Preprocess.from_dict(record)
    return {"input_size": pre.input_size, "channels": pre.channels, "resize": None, "pad_to": pre.pad_to,
            "interpolation": "bilinear", "antialias": True, "scale": 255.0, "mean": list(pre.mean),
            "std": list(pre.std), "layout": "NCHW"}  # fmt: skip


@dataclass(frozen=True)
class ImageReader:
    """Any accepted input -> float (C, H, W) tensors in [0, 1] with ``channels`` channels, sizes kept.

    Classifiers go on to :class:`Preprocessor`'s geometry; detectors take these images as they are
    (their graph resizes and normalises)."""

    channels: int

    def __call__(self, images: Images) -> list[torch.Tensor]:
        """Split ``images`` (one image, a batch, or a list of either) into float (C, H, W) tensors."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise ImageInputError("no images given (an empty list)")
            out: list[torch.Tensor] = []
            for index, item in enumerate(images):
                if isinstance(item, (list, tuple)):
                    raise ImageInputError(
                        f"images[{index}] is a nested {type(item).__name__}; pass a flat list of images"
                    )
                out += self._one_input(item, f"images[{index}]")
            return out
        return self._one_input(images, "the input")

    def _one_input(self, item: Any, where: str) -> list[torch.Tensor]:
        if isinstance(item, (str, Path)):
            return [self._from_pil(self._read(Path(item)))]
        if isinstance(item, Image.Image):
            return [self._from_pil(item)]
        if isinstance(item, np.ndarray):
            array = np.ascontiguousarray(item)
            if not array.flags.writeable:  # e.g. read-only sample images; torch wants writable memory
                array = array.copy()
            return self._from_array(torch.from_numpy(array), where, channels_last=True)
        if isinstance(item, torch.Tensor):
            return self._from_array(item.detach().cpu(), where, channels_last=False)
        raise ImageInputError(f"{where} has type {type(item).__name__}; expected a file path, a PIL image, "
                              "a uint8 numpy array (H, W, C) or (N, H, W, C), or a tensor (C, H, W) or (N, C, H, W), "
                              "or a list of these")  # fmt: skip

    @staticmethod
    def _read(path: Path) -> Image.Image:
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            return decode_image(path)
        except Exception as error:  # PIL raises many types on malformed files
            raise ImageInputError(f"{path}: cannot decode the image ({type(error).__name__}: {error}); "
                                  "corrupt, truncated or not an image?") from None  # fmt: skip

    def _from_pil(self, image: Image.Image) -> torch.Tensor:
        if self.channels == 3:
            image = to_rgb(image)
        elif self.channels == 1:
            image = image.convert("L")
        tensor = F.pil_to_tensor(image)
        if tensor.shape[0] != self.channels:
            raise ImageInputError(
                f"a {image.mode} image has {tensor.shape[0]} channel(s); the model takes {self.channels}"
            )
        return tensor.float().div_(255.0)

    def _from_array(self, array: torch.Tensor, where: str, channels_last: bool) -> list[torch.Tensor]:
        layout = "(H, W, C)" if channels_last else "(C, H, W)"
        if channels_last and array.dim() == 2 and self.channels == 1:  # (H, W) grayscale
            array = array.unsqueeze(-1)
        if array.dim() not in (3, 4):
            raise ImageInputError(f"{where} has shape {tuple(array.shape)}; expected one image {layout} or a batch "
                                  f"{'(N, H, W, C)' if channels_last else '(N, C, H, W)'}")  # fmt: skip
        batch = array if array.dim() == 4 else array.unsqueeze(0)
        if channels_last:
            batch = batch.permute(0, 3, 1, 2)
        if batch.shape[1] != self.channels:
            raise ImageInputError(f"{where} has {batch.shape[1]} channel(s) (shape {tuple(array.shape)}, read as "
                                  f"{layout}{' per image' if array.dim() == 4 else ''}); the model takes "
                                  f"{self.channels}")  # fmt: skip
        if batch.shape[0] == 0 or batch.shape[-1] == 0 or batch.shape[-2] == 0:
            raise ImageInputError(f"{where} is empty (shape {tuple(array.shape)})")
        if batch.dtype == torch.uint8:
            floats = batch.float().div_(255.0)
        elif batch.is_floating_point():
            floats = batch.float()
            low, high = float(floats.min()), float(floats.max())
            if not (math.isfinite(low) and math.isfinite(high)) or low < -1e-3 or high > 1 + 1e-3:
                raise ImageInputError(f"{where} is a float image with values in [{low:.4g}, {high:.4g}]; float images "
                                      "must lie in [0, 1] (pass uint8 for 0..255 pixel values)")  # fmt: skip
        else:
            raise ImageInputError(f"{where} has dtype {batch.dtype}; expected uint8 (0..255) or float (0..1)")
        return list(floats.contiguous().unbind(0))


@dataclass(frozen=True)
class Preprocessor:
    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    pad_to: int | None = None
    interpolation: str = "bilinear"
    antialias: bool = True
    scale: float = 255.0

    @classmethod
    def from_sidecar(cls, record: dict[str, Any]) -> Preprocessor:
        return cls(record["input_size"], record["channels"], tuple(record["mean"]), tuple(record["std"]),
                   record.get("resize"), record.get("pad_to"), record.get("interpolation", "bilinear"),
                   record.get("antialias", True), float(record.get("scale", 255.0)))  # fmt: skip

    # ------------------------------------------------------------ inputs -> float (C, H, W) in [0, 1]
    def to_float_images(self, images: Images) -> list[torch.Tensor]:
        """Split ``images`` (one image, a batch, or a list of either) into float (C, H, W) tensors."""
        return ImageReader(self.channels)(images)

    # ------------------------------------------------------------ geometry and normalisation
    def geometry(self, image: torch.Tensor) -> torch.Tensor:
        """float (C, H, W) -> float (C, input_size, input_size)."""
        size, (height, width) = self.input_size, image.shape[-2:]
        mode = _INTERPOLATION[self.interpolation]
        if self.resize is not None:
            image = F.resize(image, [self.resize], interpolation=mode, antialias=self.antialias)
            return F.center_crop(image, [size, size])
        if self.pad_to is not None and height <= self.pad_to and width <= self.pad_to:
            pad_h, pad_w = self.pad_to - height, self.pad_to - width
            return nnf.pad(image, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        if (height, width) != (size, size):
            image = F.center_crop(F.resize(image, [size], interpolation=mode, antialias=self.antialias), [size, size])
        return image

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=batch.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=batch.dtype).view(1, -1, 1, 1)
        return (batch - mean) / std

    def __call__(self, images: Images) -> torch.Tensor:
        """Any accepted input -> normalised float32 (N, C, input_size, input_size)."""
        return self.normalise(torch.stack([self.geometry(image) for image in self.to_float_images(images)]))
