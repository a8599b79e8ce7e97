"""Small image-classification datasets held in memory as uint8 tensors: Fashion-MNIST (official IDX
files), CIFAR-10 (official python batches) and a generated ``synthetic`` set.

Each loader returns an :class:`ArrayDataset`: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,),
and the class names. Such a dataset can live on the GPU with its augmentation (see
``backbones.augment``). Malformed files raise ValueError naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# The official test split ships with the package (MIT licence, 4.4 MB): real images in every clone.
BUNDLED_FASHION_MNIST = Path(__file__).resolve().parent / "data" / "fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class ArrayDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.class_names):
            raise ValueError(f"{self.name}: labels must lie in [0, {len(self.class_names)}), found "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")  # fmt: skip

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def subset(self, indices: torch.Tensor, name: str) -> ArrayDataset:
        return ArrayDataset(self.images[indices], self.labels[indices], self.class_names, name)

    def to(self, device: torch.device | str) -> ArrayDataset:
        return ArrayDataset(self.images.to(device), self.labels.to(device), self.class_names, self.name)


# ---------------------------------------------------------------- Fashion-MNIST / MNIST IDX files
_IDX_TYPES = {0x08: np.uint8}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), checking its header against its size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: cannot read IDX file ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_TYPES:
        raise ValueError(f"{path}: IDX element type 0x{dtype_code:02x} is not supported (expected 0x08, unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    shipped = " (only the test split ships with this package)" if stem.startswith("train") else ""
    raise FileNotFoundError(f"{root}: missing {stem}(.gz); expected the official Fashion-MNIST IDX files there "
                            f"(apt-get install dataset-fashion-mnist, or pass --data DIR){shipped}")  # fmt: skip


def fashion_mnist_root(root: str | Path | None, split: str) -> Path:
    """Where a split's IDX files are: ``root`` if given, else $FASHION_MNIST_DIR or the system copy, and
    for the test split, when neither has it, the copy shipped with this package."""
    if root:
        return Path(root)
    system = Path(os.environ.get("FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    if split == "test" and not any((system / f"t10k-images-idx3-ubyte{s}").exists() for s in (".gz", "")):
        return BUNDLED_FASHION_MNIST
    return system


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> ArrayDataset:
    """The official 60k/10k split from ``train-*`` / ``t10k-*`` IDX files (the test split also ships with
    the package: :data:`BUNDLED_FASHION_MNIST`)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = fashion_mnist_root(root, split)
    images_path, labels_path = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected 3-D images (N, H, W), got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path}: {labels.shape} labels for {len(images)} images in {images_path}")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path}: labels must lie in [0, {len(FASHION_MNIST_CLASSES)}), found {labels.max()}")
    return ArrayDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        list(FASHION_MNIST_CLASSES), f"fashion-mnist/{split}")  # fmt: skip


# ---------------------------------------------------------------- CIFAR-10 python batches
class _CifarBatchUnpickler(pickle.Unpickler):
    """A pickle reader that builds only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays):
    a plain ``pickle.load`` of a downloaded file would run whatever code the file names."""

    _ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
        for name in ("_reconstruct", "ndarray", "dtype", "scalar")
    } | {("_codecs", "encode")}  # how Python 3 writes bytes at pickle protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays")
        return super().find_class(module, name)


def load_cifar10(root: str | Path, split: str = "train") -> ArrayDataset:
    """CIFAR-10 from ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``)."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = (
        [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"] if split == "test" else None
    )
    if names is None:
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"{root}: missing {name}; expected the official cifar-10-batches-py directory")
        try:
            with open(path, "rb") as handle:
                batch = _CifarBatchUnpickler(handle, encoding="bytes").load()  # the official format is a pickle
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not a CIFAR-10 python batch ({error})") from None
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels'")
        data, batch_labels = np.asarray(batch[b"data"], dtype=np.uint8), batch[b"labels"]
        if data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != len(data):
            raise ValueError(
                f"{path}: field 'data' must be (N, 3072) with N labels, got {data.shape} and {len(batch_labels)}"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch_labels)
    return ArrayDataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64),
                        list(CIFAR10_CLASSES), f"cifar10/{split}")  # fmt: skip


# ---------------------------------------------------------------- synthetic (no download)
def make_synthetic(split: str = "train", num_images: int | None = None, seed: int = 0, size: int = 32,
                   channels: int = 3, num_classes: int = 10) -> ArrayDataset:  # fmt: skip
    """A learnable generated set: each class is a fixed smooth random texture, shown shifted by up to
    ±4 pixels under noise. Train and test share the class textures but not the samples."""
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be 'train' or 'test', got {split!r}")
    num_images = num_images or (5000 if split == "train" else 1000)
    classes = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 6, 6, generator=classes)
    textures = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    samples = torch.Generator().manual_seed(seed * 1000 + (1 if split == "train" else 2))
    labels = torch.randint(num_classes, (num_images,), generator=samples)
    shifts = torch.randint(-4, 5, (num_images, 2), generator=samples)
    images = torch.empty(num_images, channels, size, size)
    for index in range(num_images):
        dy, dx = shifts[index].tolist()
        images[index] = torch.roll(textures[labels[index]], shifts=(dy, dx), dims=(1, 2))
    images = images + 0.8 * torch.randn(images.shape, generator=samples)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ArrayDataset(images, labels, [f"pattern{i}" for i in range(num_classes)], f"synthetic/{split}")


def train_val_split(dataset: ArrayDataset, val_size: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """A fixed random hold-out (the paper's 45k/5k CIFAR split)."""
    if not 0 < val_size < len(dataset):
        raise ValueError(f"{dataset.name}: validation size {val_size} must lie in (0, {len(dataset)})")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return (dataset.subset(order[val_size:], f"{dataset.name}[train]"),
            dataset.subset(order[:val_size], f"{dataset.name}[val]"))  # fmt: skip


def channel_stats(dataset: ArrayDataset, max_images: int = 10000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units over (up to) ``max_images`` images."""
    sample = dataset.images[:max_images].float().div_(255)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3))
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]
