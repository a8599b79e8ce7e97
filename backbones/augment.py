"""Batch preprocessing and augmentation for in-memory datasets, on whatever device the batch is on.

Randomness is drawn from a generator seeded by (seed, epoch, batch index), so an augmented batch
depends only on where it sits in training: a resumed run, or a run split over several processes,
sees exactly the same augmented images as an uninterrupted single-process one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F

from .datasets import ArrayDataset
from .sampling import EpochPlan, batch_generator


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 images become network input; stored with weights and exported artifacts."""

    input_size: int
    channels: int
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]
    pad_to: int | None = None  # zero-pad smaller images (Fashion-MNIST 28 -> 32) to the net's native size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        try:
            return cls(int(data["input_size"]), int(data["channels"]), tuple(data["mean"]), tuple(data["std"]),
                       data.get("pad_to"))  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"preprocessing record {data!r} is malformed ({error!r})") from None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float (N, C, S, S)."""
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected uint8 images (N, {self.channels}, H, W), got {tuple(images.shape)}")
        x = images.float().div_(255)
        if self.pad_to is not None and x.shape[-1] < self.pad_to:
            total_h, total_w = self.pad_to - x.shape[-2], self.pad_to - x.shape[-1]
            x = F.pad(x, (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2))
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class CropFlip:
    """The CIFAR recipe (§4.2): pad 4 on each side, random crop back to size, random horizontal flip."""

    pad: int = 4
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator).to(x.device)
        flips = torch.rand(n, generator=generator).to(x.device) < 0.5 if self.flip else None
        padded = F.pad(x, (self.pad, self.pad, self.pad, self.pad))
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        if flips is not None:
            cols = torch.where(flips.view(n, 1, 1, 1), cols.flip(-1), cols)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        return padded[batch, channel, rows, cols]


ErasingFill = Literal["random", "mean"]
ERASING_FILLS: tuple[str, ...] = ("random", "mean")


@dataclass(frozen=True)
class RandomErasing:
    """Random Erasing (Zhong et al., 2017, Algorithm 1) on a normalised batch.

    Each image, with probability ``p``, gets one rectangle replaced: its area a fraction of the
    image drawn uniformly from ``area``, its aspect ratio (height / width) uniformly from ``aspect``,
    ``h = round(sqrt(S_e * r_e))``, ``w = round(sqrt(S_e / r_e))``; a draw that does not fit
    (``h >= H`` or ``w >= W``) is drawn again, up to ``attempts`` times (the authors' code: 100),
    then the image is left as it is. The top-left corner is uniform over the positions where the
    rectangle fits. ``fill="random"`` (the paper) gives every erased pixel a value drawn uniformly
    from the pixel range [0, 1] (then normalised with ``mean``/``std``, as the batch was);
    ``fill="mean"`` (the authors' Fashion-MNIST script) the dataset's per-channel mean, i.e. 0 after
    normalisation. All draws come from the batch's generator, so a resumed run erases the same boxes.
    """

    p: float = 0.5
    area: tuple[float, float] = (0.02, 0.4)
    aspect: tuple[float, float] = (0.3, 1 / 0.3)
    fill: ErasingFill = "random"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    attempts: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ValueError(f"random erasing probability must lie in [0, 1], got {self.p}")
        if not 0 < self.area[0] <= self.area[1] <= 1:
            raise ValueError(f"random erasing area must be fractions 0 < low <= high <= 1, got {self.area}")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"random erasing aspect ratios must be 0 < low <= high, got {self.aspect}")
        if self.fill not in ERASING_FILLS:
            raise ValueError(f"random erasing fill must be one of {ERASING_FILLS}, got {self.fill!r}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"random erasing: {len(self.mean)} means but {len(self.std)} stds")

    def boxes(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 4) int64 rows (top, left, h, w) on the CPU; h = w = 0 where the image is not erased."""
        erase = torch.rand(n, generator=generator) < self.p
        shape = (n, self.attempts)
        areas = self.area[0] + (self.area[1] - self.area[0]) * torch.rand(
            shape, generator=generator, dtype=torch.float64
        )
        ratios = self.aspect[0] + (self.aspect[1] - self.aspect[0]) * torch.rand(shape, generator=generator,
                                                                                dtype=torch.float64)  # fmt: skip
        target = areas * (height * width)
        h = torch.round(torch.sqrt(target * ratios)).long()
        w = torch.round(torch.sqrt(target / ratios)).long()
        fits = (h < height) & (w < width) & (h > 0) & (w > 0)
        first = torch.where(fits.any(1), fits.float().argmax(1), -1)  # the first draw that fits
        rows = torch.arange(n)
        h, w = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
        keep = erase & (first >= 0)
        h, w = torch.where(keep, h, 0), torch.where(keep, w, 0)
        corner = torch.rand((n, 2), generator=generator, dtype=torch.float64)
        top = (corner[:, 0] * (height - h + 1)).long().clamp(max=height - h)
        left = (corner[:, 1] * (width - w + 1)).long().clamp(max=width - w)
        return torch.stack([top, left, h, w], 1)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, channels, height, width = x.shape
        if len(self.mean) not in (1, channels):
            raise ValueError(f"random erasing has statistics for {len(self.mean)} channels, the batch has {channels}")
        boxes = self.boxes(n, height, width, generator)
        if self.fill == "random":
            pixels = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            values = (pixels - mean) / std
        else:
            values = torch.zeros_like(x)
        boxes = boxes.to(x.device)
        top, left, h, w = (boxes[:, i].view(n, 1, 1, 1) for i in range(4))
        ys = torch.arange(height, device=x.device).view(1, 1, -1, 1)
        xs = torch.arange(width, device=x.device).view(1, 1, 1, -1)
        inside = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)
        return torch.where(inside, values, x)


class BatchAugment(Protocol):
    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class Chain:
    """Batch augmentations applied in order, all drawing from the batch's one generator."""

    steps: Sequence[BatchAugment]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator)
        return x


@dataclass
class ArrayBatches:
    """Batches of an in-memory dataset: a seeded permutation per epoch, split over processes.

    ``batch_size`` is the global batch; each of ``world_size`` processes takes its contiguous
    share of every global batch, so the union over processes is the single-process batch.
    """

    dataset: ArrayDataset
    batch_size: int
    preprocess: Preprocess
    augment: BatchAugment | None = None
    shuffle: bool = True
    drop_last: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    skipped: int = field(default=0, init=False)  # the BatchSource interface: unreadable samples this epoch

    def __post_init__(self) -> None:
        if self.batch_size % self.world_size:
            raise ValueError(f"global batch {self.batch_size} is not divisible by {self.world_size} processes")
        if self.drop_last and len(self.dataset) < self.batch_size:
            raise ValueError(
                f"{self.dataset.name}: {len(self.dataset)} images are fewer than one batch of {self.batch_size}"
            )
        # The plan of global batches; this process's share is cut after augmentation (see batches).
        self.plan = EpochPlan(len(self.dataset), self.batch_size, shuffle=self.shuffle, drop_last=self.drop_last,
                              seed=self.seed, rank=0, world_size=1)  # fmt: skip

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.dataset)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.plan.order(epoch).to(self.dataset.images.device)
        for index in range(start, len(self)):
            global_indices = order[index * self.batch_size : (index + 1) * self.batch_size]
            x = self.preprocess(self.dataset.images[global_indices])
            if self.augment is not None:  # drawn for the global batch: identical for any world size
                x = self.augment(x, batch_generator(self.seed, epoch, index))
            labels = self.dataset.labels[global_indices]
            if self.world_size > 1:
                x = torch.tensor_split(x, self.world_size)[self.rank]
                labels = torch.tensor_split(labels, self.world_size)[self.rank]
            yield x, labels
