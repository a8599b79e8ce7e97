"""Detection batches for the shared engine: lists of images and targets, seeded flips, exact resume.

A detection dataset yields ``(image uint8 (3, H, W), target)`` with ``boxes`` (N, 4) xyxy in
0-based continuous pixels, ``labels`` (N,) in 1..C, ``difficult`` (N,), ``image_id``. The
detector's own transform (GeneralizedRCNNTransform) resizes (shorter side 600, longer at most
1000) and normalises, so here images only become float in [0, 1] with the backbone's channel
count, and training images are flipped at random.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from backbones.sampling import EpochPlan, sample_generator

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")


def to_model_input(image: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float [0, 1] with ``channels`` channels (1: luminance)."""
    x = image.float().div_(255)
    if channels == 1:
        weights = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
        return (x * weights).sum(0, keepdim=True)
    if channels != 3:
        raise ValueError(f"detection images are RGB; a backbone with {channels} input channels is not supported")
    return x


def hflip(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


@dataclass(frozen=True)
class _Samples(Dataset):
    dataset: Any
    channels: int
    train: bool
    seed: int
    drop_difficult: bool

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        epoch, index = key
        image, target = self.dataset[index]
        target = dict(target)
        if self.train and self.drop_difficult and "difficult" in target and len(target["difficult"]):
            keep = ~target["difficult"]
            target.update(
                boxes=target["boxes"][keep], labels=target["labels"][keep], difficult=target["difficult"][keep]
            )
        x = to_model_input(image, self.channels)
        if self.train and torch.rand(1, generator=sample_generator(self.seed, epoch, index)).item() < 0.5:
            x, target = hflip(x, target)
        return x, target


def _collate(samples: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    return [image for image, _ in samples], [target for _, target in samples]


class DetectionBatches:
    """BatchSource over a detection dataset (``batch_size`` images per global batch)."""

    def __init__(self, dataset: Any, batch_size: int, *, train: bool, channels: int = 3, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 drop_difficult: bool = True) -> None:  # fmt: skip
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} processes")
        if train and len(dataset) < batch_size:
            raise ValueError(f"{len(dataset)} training images are fewer than one batch of {batch_size}")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.skipped = 0
        self.plan = EpochPlan(len(dataset), batch_size, shuffle=train, drop_last=train, seed=seed, rank=rank,
                              world_size=world_size)  # fmt: skip
        self.loader = DataLoader(_Samples(dataset, channels, train, seed, drop_difficult), batch_sampler=self.plan,
                                 collate_fn=_collate, num_workers=num_workers,
                                 persistent_workers=num_workers > 0)  # fmt: skip

    def __len__(self) -> int:
        return len(self.plan)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[list[torch.Tensor], list[dict[str, Any]]]]:
        self.plan.epoch, self.plan.start = epoch, start
        yield from self.loader


def detection_step(
    model: torch.nn.Module, batch: tuple[list[torch.Tensor], list[dict[str, Any]]]
) -> dict[str, torch.Tensor]:
    """The engine's step: torchvision's Faster R-CNN returns its four losses in training mode."""
    images, targets = batch
    losses = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    return {"loss": sum(losses.values()), **losses}
