"""ImageNet from an image-folder tree: decoding, the paper's augmentation (§3.4), a BatchSource on a
torch DataLoader, and the test-time protocols (center crop, 10-crop, fully-convolutional multi-scale).

Layout: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (the flat ImageNet val folder
must first be sorted into class folders). Unreadable images are skipped with a warning naming the
file, never a crash; :class:`ImageFolderBatches` counts them in ``skipped``.

Every random choice for a sample comes from a generator seeded by (seed, epoch, dataset index), so
an augmented image depends only on where it sits in training, not on resumption, the number of
DataLoader workers or the number of processes.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from .sampling import EpochPlan, sample_generator

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AlexNet's colour augmentation: principal components of ImageNet's RGB pixel values (in [0, 1]
# units), eigenvectors as columns, as published with fb.resnet.torch (the paper's own training code).
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
TEST_SCALES = (224, 256, 384, 480, 640)
PROTOCOLS = ("center", "10crop", "multiscale")

ImageLike = Image.Image | torch.Tensor  # a PIL image, or a uint8 (C, H, W) tensor on any device


# ---------------------------------------------------------------- decoding
def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, CMYK, RGBA, palette … -> RGB (alpha is dropped, as torchvision's loader does)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return image.convert("RGB")


def decode_image(data: bytes | Path) -> Image.Image:
    """Decode fully (``load`` catches truncation) and convert to RGB; raises on unreadable data."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        image.load()
        return to_rgb(image)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def warn_skipped(path: Path, reason: str) -> None:
    warnings.warn(f"{path}: skipping unreadable image ({reason})", stacklevel=2)


# ---------------------------------------------------------------- the folder tree
def _is_visible_dir(entry: os.DirEntry) -> bool:
    return entry.is_dir() and not entry.name.startswith(".")


def _is_image_file(entry: os.DirEntry) -> bool:
    return entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_EXTENSIONS)


def _images_in(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if _is_image_file(e))


class ImageFolderDataset(Dataset):
    """``root/<split>/<class>/<image>``: classes are the sorted folder names of that split.

    ``class_names``, when given (e.g. the training classes for the val split), must equal the
    split's folders, so a missing class cannot silently shift every label after it.
    """

    def __init__(self, root: str | Path, split: str = "train", class_names: Sequence[str] | None = None) -> None:
        self.root, self.split = Path(root), split
        self.directory = directory = self.root / split
        if not directory.is_dir():
            raise ValueError(f"{directory}: ImageNet split directory not found "
                             f"(expected {self.root}/{split}/<class>/*.JPEG)")  # fmt: skip
        with os.scandir(directory) as entries:
            found = sorted(e.name for e in entries if _is_visible_dir(e))
        if not found:
            raise ValueError(f"{directory}: no class folders (expected {split}/<class>/*.JPEG; a flat ImageNet val "
                             "folder must first be sorted into one folder per class)")  # fmt: skip
        if class_names is not None and list(class_names) != found:
            missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
            raise ValueError(f"{directory}: class folders do not match the expected {len(class_names)} classes "
                             f"(missing {missing[:5]}, unexpected {extra[:5]}; names must be sorted)")  # fmt: skip
        self.class_names: list[str] = found
        files, labels = [], []
        for label, name in enumerate(found):
            names = _images_in(directory / name)
            files += [os.fsencode(f"{name}/{file}") for file in names]
            labels += [label] * len(names)
        if not files:
            raise ValueError(f"{directory}: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                             f"in its {len(found)} class folders")  # fmt: skip
        # Numpy arrays, not a list of 1.28M Python objects: forked DataLoader workers would touch every
        # object's reference count and so copy the whole list into each worker's memory.
        self._files = np.array(files, dtype=np.bytes_)
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        return self.directory / os.fsdecode(self._files[index])

    @property
    def samples(self) -> list[tuple[Path, int]]:
        """(path, label) of every image, in index order (built on demand)."""
        return [(self.path(i), int(label)) for i, label in enumerate(self.labels)]

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | None:
        """The decoded RGB image and its label, or None (with a warning) if the file is unreadable."""
        path = self.path(index)
        try:
            return decode_image(path), int(self.labels[index])
        except Exception as error:  # PIL raises many types on malformed files; one bad file must not stop training
            warn_skipped(path, _reason(error))
            return None

    def read_bytes(self, index: int) -> tuple[torch.Tensor, int] | None:
        """The raw file as a uint8 tensor (for decoding on the GPU), or None if it cannot be read."""
        path = self.path(index)
        try:
            return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), int(self.labels[index])
        except OSError as error:
            warn_skipped(path, _reason(error))
            return None


# ---------------------------------------------------------------- transforms
def pca_lighting(x: torch.Tensor, alpha: torch.Tensor, eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC) -> torch.Tensor:  # fmt: skip
    """AlexNet's colour augmentation: add ``eigvec @ (alpha * eigval)`` to every RGB pixel.

    ``x`` is float (..., 3, H, W) in [0, 1] units; ``alpha`` is (..., 3), one draw per image.
    """
    values = torch.as_tensor(eigval, dtype=x.dtype, device=x.device)
    vectors = torch.as_tensor(eigvec, dtype=x.dtype, device=x.device)
    shift = (vectors * (alpha.to(x) * values).unsqueeze(-2)).sum(-1)
    return x + shift[..., None, None]


def _to_uint8(image: ImageLike) -> torch.Tensor:
    return F.pil_to_tensor(image) if isinstance(image, Image.Image) else image


def _to_float(image: ImageLike) -> torch.Tensor:
    return F.to_dtype(_to_uint8(image), torch.float32, scale=True)


def resized_size(size: Sequence[int], shorter_side: int) -> tuple[int, int]:
    """(height, width) of an image of ``size`` (height, width) resized so that its shorter side is
    ``shorter_side``: the size torchvision's ``resize(image, [shorter_side])`` gives."""
    height, width = size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shorter_side * long / short)
    return (new_long, shorter_side) if width <= height else (shorter_side, new_long)


def resized_crop(image: ImageLike, resized: tuple[int, int], top: int, left: int, crop: int) -> ImageLike:
    """The ``crop`` x ``crop`` square at (top, left) of the image resized to ``resized`` (height, width).

    For a PIL image it resamples only that square, through the matching box of the original: PIL
    reads the filter's support outside the box, so the pixels are resize-then-crop's within 2 of 255
    levels (PIL rounds between its two passes, whose order may differ), about 3x faster at ImageNet
    sizes (benchmarks/data_throughput.py), where the §3.4 scale augmentation dominated a data
    worker's time. Tensors (the GPU-decoding path) are resized whole, then cropped."""
    if isinstance(image, Image.Image):
        scale_y, scale_x = image.height / resized[0], image.width / resized[1]
        box = (
            left * scale_x,
            top * scale_y,
            min((left + crop) * scale_x, image.width),
            min((top + crop) * scale_y, image.height),
        )  # float error
        return image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
    return F.crop(F.resize(image, list(resized), antialias=True), top, left, crop, crop)


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


@dataclass(frozen=True)
class TrainAugment:
    """§3.4: shorter side to a random integer in ``scale``, random crop, random horizontal flip,
    PCA lighting, then mean/std normalisation. Works on PIL images and on uint8 tensors (GPU too)."""

    scale: tuple[int, int] = (256, 480)
    crop_size: int = 224
    flip: bool = True
    alphastd: float = 0.1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not self.crop_size <= self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale range {self.scale} must satisfy crop_size ({self.crop_size}) <= low <= high")

    def geometric(self, image: ImageLike, generator: torch.Generator) -> ImageLike:
        height, width = resized_size(F.get_size(image), _randint(generator, *self.scale))
        top = _randint(generator, 0, height - self.crop_size)
        left = _randint(generator, 0, width - self.crop_size)
        image = resized_crop(image, (height, width), top, left, self.crop_size)
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            image = F.horizontal_flip(image)
        return image

    def crop(self, image: ImageLike, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The data worker's half: the scaled, cropped, flipped uint8 (3, crop, crop) pixels and the
        lighting draw (3,). uint8 is a quarter of float32's bytes through the worker queue and the
        host-to-GPU copy."""
        pixels = _to_uint8(self.geometric(image, generator))
        alpha = self.alphastd * torch.randn(3, generator=generator) if self.alphastd > 0 else torch.zeros(3)
        return pixels, alpha

    def finish(self, pixels: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The batch's half, on whatever device the pixels are on: float, PCA lighting, normalisation
        of uint8 (..., 3, H, W) with the draws (..., 3)."""
        x = F.to_dtype(pixels, torch.float32, scale=True)
        if self.alphastd > 0:
            x = pca_lighting(x, alpha)
        return F.normalize(x, list(self.mean), list(self.std))

    def __call__(self, image: ImageLike, generator: torch.Generator) -> torch.Tensor:
        return self.finish(*self.crop(image, generator))


@dataclass(frozen=True)
class CenterCrop:
    """The single-crop evaluation transform: shorter side to ``resize``, center ``crop_size`` crop.
    ``crop`` and ``finish`` split it like :class:`TrainAugment`'s (the lighting draw is zeros)."""

    resize: int = 256
    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def crop(self, image: ImageLike, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = resized_size(F.get_size(image), self.resize)
        top, left = round((height - self.crop_size) / 2.0), round((width - self.crop_size) / 2.0)
        return _to_uint8(resized_crop(image, (height, width), top, left, self.crop_size)), torch.zeros(3)

    def finish(self, pixels: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        return _normalised(pixels, self.mean, self.std)

    def __call__(self, image: ImageLike, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.finish(*self.crop(image))


# ---------------------------------------------------------------- test-time protocols
def _normalised(image: ImageLike, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return F.normalize(_to_float(image), list(mean), list(std))


def center_crop_views(image: Image.Image, *, resize: int = 256, crop_size: int = 224,
                      mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:  # fmt: skip
    """(1, 3, crop, crop)."""
    return CenterCrop(resize, crop_size, tuple(mean), tuple(std))(image).unsqueeze(0)


def ten_crop_views(image: Image.Image, *, resize: int = 256, crop_size: int = 224,
                   mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:  # fmt: skip
    """(10, 3, crop, crop): the 4 corners and the center, then the same five of the flipped image."""
    crops = F.ten_crop(F.resize(image, [resize], antialias=True), [crop_size, crop_size])
    return torch.stack([_normalised(crop, mean, std) for crop in crops])


def multiscale_views(image: Image.Image, scales: Sequence[int] = TEST_SCALES, *,
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> list[torch.Tensor]:  # fmt: skip
    """One (2, 3, s, W_s) tensor per scale ``s``: the whole image with its shorter side at ``s``, and
    its horizontal flip. A network ending in global average pooling then computes exactly the mean of
    the paper's fully-convolutional score map."""
    views = []
    for scale in scales:
        x = _normalised(F.resize(image, [scale], antialias=True), mean, std)
        views.append(torch.stack([x, x.flip(-1)]))
    return views


def protocol_views(image: Image.Image, protocol: str = "10crop", *, scales: Sequence[int] = TEST_SCALES,
                   **options: Any) -> list[torch.Tensor]:  # fmt: skip
    """The network inputs of one image under a protocol, grouped into same-size batches."""
    if protocol == "center":
        return [center_crop_views(image, **options)]
    if protocol == "10crop":
        return [ten_crop_views(image, **options)]
    if protocol == "multiscale":
        return multiscale_views(image, scales, **options)
    raise ValueError(f"unknown test protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


@torch.no_grad()
def average_softmax(model: nn.Module, views: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Softmax of every view, averaged with equal weight: (num_classes,). ``model`` should be in eval mode."""
    groups = [views] if isinstance(views, torch.Tensor) else list(views)
    device = next(model.parameters()).device
    probabilities = [nnf.softmax(model(group.to(device)).float(), dim=1) for group in groups]
    return torch.cat(probabilities).mean(0)


def predict_image(model: nn.Module, image: Image.Image, protocol: str = "10crop", *,
                  scales: Sequence[int] = TEST_SCALES, **options: Any) -> torch.Tensor:  # fmt: skip
    return average_softmax(model, protocol_views(image, protocol, scales=scales, **options))


# ---------------------------------------------------------------- batches
@dataclass(frozen=True)
class _Samples(Dataset):
    """What the DataLoader workers run: key (epoch, index) -> the transform's worker half
    (uint8 pixels, lighting draw, label), the raw bytes for GPU decoding (index, bytes, label), or
    None for an unreadable file."""

    dataset: ImageFolderDataset
    transform: TrainAugment | CenterCrop
    seed: int
    raw: bool = False

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, ...] | None:
        epoch, index = key
        if self.raw:
            record = self.dataset.read_bytes(index)
            return None if record is None else (index, *record)
        sample = self.dataset[index]
        if sample is None:
            return None
        image, label = sample
        return *self.transform.crop(image, sample_generator(self.seed, epoch, index)), label


@dataclass(frozen=True)
class _Collate:
    """Drops skipped samples and reports how many, so the count reaches the main process."""

    image_shape: tuple[int, ...]
    raw: bool = False

    def __call__(self, samples: list[tuple[Any, ...] | None]) -> tuple[Any, ...]:
        kept = [sample for sample in samples if sample is not None]
        skipped = len(samples) - len(kept)
        if self.raw:
            return kept, skipped
        if not kept:
            return (torch.empty((0, *self.image_shape), dtype=torch.uint8), torch.empty(0, 3),
                    torch.empty(0, dtype=torch.int64), skipped)  # fmt: skip
        pixels = torch.stack([pixels for pixels, _, _ in kept])
        alphas = torch.stack([alpha for _, alpha, _ in kept])
        return pixels, alphas, torch.tensor([label for _, _, label in kept], dtype=torch.int64), skipped


class ImageFolderBatches:
    """The BatchSource interface over an :class:`ImageFolderDataset`, loaded by a torch DataLoader.

    Training (``train=True``) shuffles, drops the last partial batch and applies :class:`TrainAugment`;
    evaluation keeps the folder order and every sample, with :class:`CenterCrop`. The workers decode,
    scale, crop and flip, and pass uint8 crops; lighting and normalisation run batched on ``device``
    (pass the training device: the host-to-GPU copy is then uint8 too). ``gpu_decode`` reads raw
    bytes in the workers and decodes (nvJPEG) and augments on the current CUDA device.
    """

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, *, train: bool = True,
                 transform: TrainAugment | CenterCrop | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, shuffle: bool | None = None,
                 drop_last: bool | None = None, gpu_decode: bool = False,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} processes")
        drop_last = train if drop_last is None else drop_last
        if drop_last and len(dataset) < batch_size:
            raise ValueError(f"{dataset.directory}: {len(dataset)} images are fewer than "
                             f"one batch of {batch_size}")  # fmt: skip
        if gpu_decode and not torch.cuda.is_available():
            raise ValueError("gpu_decode=True needs a CUDA device, and torch.cuda.is_available() is False")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.seed, self.gpu_decode, self.device = seed, gpu_decode, torch.device(device)
        self.transform: TrainAugment | CenterCrop = transform or (TrainAugment() if train else CenterCrop())
        self.plan = EpochPlan(len(dataset), batch_size, shuffle=train if shuffle is None else shuffle,
                              drop_last=drop_last, seed=seed, rank=rank, world_size=world_size)  # fmt: skip
        self.skipped = 0
        self.loader = DataLoader(
            _Samples(dataset, self.transform, seed, raw=gpu_decode),
            batch_sampler=self.plan,
            collate_fn=_Collate((3, self.transform.crop_size, self.transform.crop_size), raw=gpu_decode),
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda" and not gpu_decode,
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.plan.drop_last else len(self.dataset)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} is outside the epoch's {len(self)} batches")
        self.skipped = 0
        self.plan.epoch, self.plan.start = epoch, start
        for batch in self.loader:
            if self.gpu_decode:
                records, skipped = batch
                images, labels, unreadable = self._on_gpu(records, epoch)
                skipped += unreadable
            else:
                pixels, alphas, labels, skipped = batch
                images = self.transform.finish(pixels.to(self.device, non_blocking=True), alphas.to(self.device))
            self.skipped += skipped
            yield images, labels

    def _on_gpu(self, records: list[tuple[int, torch.Tensor, int]],
                epoch: int) -> tuple[torch.Tensor, torch.Tensor, int]:  # fmt: skip
        device = torch.device("cuda", torch.cuda.current_device())
        paths = [self.dataset.path(index) for index, _, _ in records]
        decoded = decode_batch([data for _, data, _ in records], paths, device)
        inputs, labels = [], []
        for (index, _, label), image in zip(records, decoded):
            if image is not None:
                inputs.append(self.transform(image, sample_generator(self.seed, epoch, index)))
                labels.append(label)
        size = self.transform.crop_size
        images = torch.stack(inputs) if inputs else torch.empty((0, 3, size, size), device=device)
        return images, torch.tensor(labels, dtype=torch.int64, device=device), len(records) - len(inputs)


# ---------------------------------------------------------------- batched (GPU) decoding
def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and data[:3].tolist() == [0xFF, 0xD8, 0xFF]


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


def decode_batch(datas: list[torch.Tensor], paths: list[Path], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 (3, H, W) images on ``device``: JPEGs in one batched ``decode_jpeg`` call (nvJPEG on a
    CUDA device); files it cannot decode (PNG, a corrupt member of the batch) by PIL on the CPU;
    None, with a warning naming the file, for files that neither can decode."""
    images: list[torch.Tensor | None] = [None] * len(datas)
    jpegs = [i for i, data in enumerate(datas) if _is_jpeg(data)]
    try:
        for i, image in zip(jpegs, _decode_jpegs([datas[i] for i in jpegs], device) if jpegs else []):
            images[i] = image
    except RuntimeError:  # the batched call gives nothing when one image fails: decode one by one
        for i in jpegs:
            try:
                images[i] = _decode_jpegs([datas[i]], device)[0]
            except RuntimeError:
                pass
    for i, decoded in enumerate(images):
        if decoded is None:
            try:
                images[i] = F.pil_to_tensor(decode_image(datas[i].numpy().tobytes())).to(device)
            except Exception as error:  # as in ImageFolderDataset.__getitem__
                warn_skipped(paths[i], _reason(error))
    return images
