"""Real images for reduced-precision exports: what INT8 is calibrated on, and the held-out images the
artifact is compared with fp32 on.

* ``--calibration-dir DIR``: image files in any layout, searched recursively (sorted, the first N);
* ``--calibration-dataset NAME``: a dataset the trainer knows, its **training** split only (a seeded
  draw of N images; the test split is never used to calibrate);
* ``--eval-dataset NAME|DIR``: labelled held-out images: a known dataset's test split, or a folder of
  class subfolders named like the model's classes.

Without ``--eval-dataset``, the held-out images are calibration images the calibration did not use:
the next images of the dataset's draw, or the files after the first N.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones.datasets import ArrayDataset, load_cifar10, load_fashion_mnist

from ..preprocess import ImageInputError, Preprocessor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
KNOWN_DATASETS = ("fashion-mnist", "cifar10")
DRAW_SEED = 0
DEFAULT_HELD_OUT = 1000  # held-out images when no --eval-dataset is given


class ImageDataError(ValueError):
    """A calibration or check image that cannot be read (the message names the file)."""


@dataclass
class ImageSet:
    """Raw images (file paths, or a uint8 (N, C, H, W) tensor) with optional labels."""

    name: str  # for messages and the sidecar, e.g. "fashion-mnist test split" or a folder
    images: list[Path] | torch.Tensor
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def batches(
        self, preprocess: Preprocessor, batch_size: int = 64
    ) -> Iterator[tuple[torch.Tensor, list[int] | None]]:
        """(normalised float32 batch, its labels) through the artifact's own preprocessing."""
        for start in range(0, len(self.images), batch_size):
            part = self.images[start : start + batch_size]
            labels = self.labels[start : start + batch_size] if self.labels is not None else None
            if isinstance(part, torch.Tensor):
                yield preprocess(part), labels
            else:
                yield _files_batch(part, preprocess), labels

    def describe(self) -> dict[str, Any]:
        return {"source": self.name, "images": len(self), "labelled": self.labels is not None}


def _files_batch(files: Sequence[Path], preprocess: Preprocessor) -> torch.Tensor:
    try:
        return preprocess(list(files))
    except ImageInputError as error:
        raise ImageDataError(f"one of {files[0]} … {files[-1]}: {error}") from None


def _dataset(name: str, split: str, root: Path | None) -> ArrayDataset:
    if name == "fashion-mnist":
        return load_fashion_mnist(root, split)
    if name == "cifar10":
        if root is None:
            raise ValueError("cifar10 needs --data-root DIR (the cifar-10-batches-py directory or its parent)")
        return load_cifar10(root, split)
    raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(KNOWN_DATASETS)} or a folder")


def _check_channels(dataset: ArrayDataset, channels: int, role: str) -> None:
    if dataset.channels != channels:
        raise ValueError(f"{role} {dataset.name} has {dataset.channels}-channel images; the model takes {channels} "
                         f"channel(s): calibrate and check on images like the model's own")  # fmt: skip


def image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder not found: {directory}")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) found, searched recursively")
    return files


def calibration_and_held_out(*, directory: Path | None, dataset: str | None, count: int, channels: int,
                             root: Path | None = None,
                             held_out: int = DEFAULT_HELD_OUT) -> tuple[ImageSet, ImageSet | None]:  # fmt: skip
    """(calibration images, unlabelled held-out images not used for calibration, or None if there are none)."""
    if (directory is None) == (dataset is None):
        raise ValueError("give one calibration source: --calibration-dir DIR or --calibration-dataset NAME")
    if directory is not None:
        files = image_files(directory)
        rest = files[count : count + held_out]
        after = "files after the calibration images" if count else f"{len(rest)} of {len(files)} images"
        return (ImageSet(f"{directory} ({len(files[:count])} of {len(files)} images)", files[:count]),
                ImageSet(f"{directory} ({after})", rest) if rest else None)  # fmt: skip
    assert dataset is not None
    train = _dataset(dataset, "train", root)
    _check_channels(train, channels, "calibration set")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(DRAW_SEED))
    chosen, remaining = order[:count], order[count : count + held_out]
    calibration = ImageSet(
        f"{dataset} training split ({len(chosen)} images, seeded draw {DRAW_SEED})", train.images[chosen]
    )
    held = (ImageSet(f"{dataset} training split (held out from calibration)", train.images[remaining])
            if len(remaining) else None)  # fmt: skip
    return calibration, held


def labelled_set(spec: str, class_names: Sequence[str], channels: int, root: Path | None = None,
                 limit: int | None = None) -> ImageSet:  # fmt: skip
    """A dataset's test split, or a folder of class subfolders named like ``class_names``."""
    if spec in KNOWN_DATASETS:
        test = _dataset(spec, "test", root)
        _check_channels(test, channels, "evaluation set")
        if list(test.class_names) != list(class_names):
            raise ValueError(f"{spec}'s classes {test.class_names} are not the model's {list(class_names)}")
        n = len(test) if limit is None else min(limit, len(test))
        return ImageSet(f"{spec} test split", test.images[:n], test.labels[:n].tolist())
    directory = Path(spec)
    if not directory.is_dir():
        raise FileNotFoundError(f"--eval-dataset {spec}: neither a known dataset ({', '.join(KNOWN_DATASETS)}) "
                                "nor a folder of class subfolders")  # fmt: skip
    index = {name: i for i, name in enumerate(class_names)}
    files: list[Path] = []
    labels: list[int] = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise ValueError(f"{folder}: no class of the model is named {folder.name!r} (classes: "
                             f"{', '.join(list(class_names)[:8])}"
                             f"{', ...' if len(class_names) > 8 else ''})")  # fmt: skip
        found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [index[folder.name]] * len(found)
    if not files:
        raise ValueError(f"{directory}: no labelled images (class subfolders with {', '.join(IMAGE_SUFFIXES)} files)")
    if limit is not None:
        picked = np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int)  # every class, evenly
        files, labels = [files[i] for i in picked], [labels[i] for i in picked]
    return ImageSet(f"{directory} (class folders)", files, labels)
