"""fashion_det: a small real-object detection benchmark that trains and evaluates on a CPU.

Fashion-MNIST items are composited at several scales onto dark, slightly noisy canvases and written
once in BOTH the PASCAL VOC devkit layout and the COCO 2017 layout, so the same images run through
``VOCDetection`` + the devkit evaluator and ``COCODetection`` + pycocotools::

    DIR/VOCdevkit/VOC2007/Annotations/<id>.xml          VOC XML, boxes 1-based inclusive
    DIR/VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt
    DIR/VOCdevkit/VOC2007/JPEGImages/<id>.jpg           <id> = 000001, 000002, ...
    DIR/coco/annotations/instances_{train2017,val2017}.json
    DIR/coco/{train2017,val2017}/<12-digit id>.jpg      COCO image id = the VOC id as a number
    DIR/fashion_det.json                                parameters and counts, written last

Training canvases (VOC ``trainval`` = COCO ``train2017``) use items of the official Fashion-MNIST
train split, test canvases (VOC ``test`` = COCO ``val2017``) items of the official test split.

Each canvas: a dark background (a random grey level in [0, 20] plus Gaussian noise, sigma 3); then
0..max_objects items (uniformly many, so some canvases have none). An item is a random Fashion-MNIST
image of the split, resized (bilinear) to a random square size in [min_size, max_size], pasted by
max-compositing at a random position inside the canvas; a placement whose box has IoU > 0.3 with an
already placed box, or covers or is covered by one for more than half of the smaller box's area (a
small item inside a large one would be hidden by max-compositing), is rejected and re-drawn (up to
20 tries, then the item is dropped). The box is
the tight bounding box of the item's visible pixels (resized intensity > 32). Every random choice
of a canvas comes from a generator seeded by (seed, split, canvas index), so the output is a pure
function of the arguments (annotation files are byte-identical across runs) and the test canvases do
not change with ``--train-images``. Images are RGB JPEG, quality 95 (grey items on grey background).

Usage::

    python -m detection.fashion_det --output DIR [--seed 0] [--train-images 2000] [--test-images 500]
        [--canvas 128] [--min-size 20] [--max-size 64] [--max-objects 4] [--fashion-mnist DIR] [--force]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backbones.datasets import FASHION_MNIST_DIR, ArrayDataset, fashion_mnist_root, load_fashion_mnist
from backbones.fileio import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["FASHION_DET_CLASSES", "FashionDetConfig", "compose_canvas", "generate", "main", "voc_xml"]

# Fashion-MNIST's classes, in label order, spelled to be safe in file names (comp4_det_test_<class>.txt).
FASHION_DET_CLASSES: tuple[str, ...] = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip

FORMAT_NAME = "fashion_det"
FORMAT_VERSION = 1
ITEM_THRESHOLD = 32  # a resized item pixel brighter than this is visible (the background stays below it)
BACKGROUND_MAX_LEVEL = 20
BACKGROUND_NOISE = 3.0
MAX_IOU = 0.3
MAX_COVER = 0.5  # a small item inside a large one would be hidden by max-compositing: limit the covered share
PLACEMENT_TRIES = 20
JPEG_QUALITY = 95
WRITER_THREADS = 16  # atomic writes fsync every file; threads overlap the waits
VOC_DIR = Path("VOCdevkit") / "VOC2007"
COCO_DIR = Path("coco")
SUMMARY_FILE = "fashion_det.json"


@dataclass(frozen=True)
class _Split:
    name: str  # train / test
    fashion_mnist_split: str
    voc_image_set: str
    coco_split: str
    seed_code: int


SPLITS = (_Split("train", "train", "trainval", "train2017", 0), _Split("test", "test", "test", "val2017", 1))


@dataclass(frozen=True)
class FashionDetConfig:
    seed: int = 0
    train_images: int = 2000
    test_images: int = 500
    canvas: int = 128
    min_size: int = 20
    max_size: int = 64
    max_objects: int = 4

    def validate(self) -> None:
        if self.train_images < 0 or self.test_images < 0:
            raise ValueError(f"image counts must be >= 0, got {self.train_images} train and {self.test_images} test")
        if self.max_objects < 0:
            raise ValueError(f"max_objects must be >= 0, got {self.max_objects}")
        if not 1 <= self.min_size <= self.max_size <= self.canvas:
            raise ValueError(f"need 1 <= min_size <= max_size <= canvas, got min_size {self.min_size}, "
                             f"max_size {self.max_size}, canvas {self.canvas}")  # fmt: skip
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def count(self, split: _Split) -> int:
        return self.train_images if split.name == "train" else self.test_images


@dataclass(frozen=True)
class PlacedItem:
    """One item on a canvas: 0-based class index and box as inclusive pixel indices (x0, y0, x1, y1)."""

    label: int
    x0: int
    y0: int
    x1: int
    y1: int

    def continuous(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1 + 1, self.y1 + 1

    def voc(self) -> tuple[int, int, int, int]:
        return self.x0 + 1, self.y0 + 1, self.x1 + 1, self.y1 + 1

    def coco_bbox(self) -> list[int]:
        return [self.x0, self.y0, self.x1 - self.x0 + 1, self.y1 - self.y0 + 1]


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------


def _overlap(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(IoU, intersection / area of the smaller box) of two continuous boxes."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0, 0.0
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter), inter / min(area_a, area_b)


def _fits(box: PlacedItem, placed: Sequence[PlacedItem]) -> bool:
    """Little overlap: IoU <= MAX_IOU with every placed box, and no box mostly covered by another."""
    for other in placed:
        iou, cover = _overlap(box.continuous(), other.continuous())
        if iou > MAX_IOU or cover > MAX_COVER:
            return False
    return True


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    level = rng.uniform(0, BACKGROUND_MAX_LEVEL)
    noise = rng.normal(0.0, BACKGROUND_NOISE, (size, size))
    return np.clip(np.rint(level + noise), 0, 255).astype(np.uint8)


def _resize(item: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(item).resize((size, size), Image.Resampling.BILINEAR))


def _place(canvas: np.ndarray, item: np.ndarray, label: int, placed: list[PlacedItem],
           rng: np.random.Generator) -> PlacedItem | None:  # fmt: skip
    """Max-composite ``item`` at a random position whose box overlaps no placed box by IoU > MAX_IOU."""
    visible = item > ITEM_THRESHOLD
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if len(rows) == 0:
        return None  # nothing visible at this size
    size, limit = item.shape[0], canvas.shape[0] - item.shape[0] + 1
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(limit)), int(rng.integers(limit))
        box = PlacedItem(label, x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]), y + int(rows[-1]))
        if _fits(box, placed):
            region = canvas[y : y + size, x : x + size]
            np.maximum(region, item, out=region)
            return box
    return None


def compose_canvas(items: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                   config: FashionDetConfig) -> tuple[np.ndarray, list[PlacedItem]]:  # fmt: skip
    """One grey canvas (uint8 (S, S)) and its placed items, from grey ``items`` (N, h, w) and ``labels``."""
    canvas = _background(rng, config.canvas)
    placed: list[PlacedItem] = []
    for _ in range(int(rng.integers(config.max_objects + 1))):
        index = int(rng.integers(len(items)))
        size = int(rng.integers(config.min_size, config.max_size + 1))
        box = _place(canvas, _resize(items[index], size), int(labels[index]), placed, rng)
        if box is not None:
            placed.append(box)
    return canvas, placed


def _encode_jpeg(canvas: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(canvas).convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Annotation formats
# ---------------------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def voc_xml(stem: str, size: int, items: Sequence[PlacedItem]) -> str:
    """A VOC annotation (size, objects with 1-based inclusive bndbox, difficult=0, truncated=0)."""
    root = ET.Element("annotation")
    _sub(root, "folder", "VOC2007")
    _sub(root, "filename", f"{stem}.jpg")
    _sub(_sub(root, "source"), "database", FORMAT_NAME)
    size_element = _sub(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        _sub(size_element, tag, value)
    _sub(root, "segmented", 0)
    for item in items:
        obj = _sub(root, "object")
        _sub(obj, "name", FASHION_DET_CLASSES[item.label])
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", 0)
        _sub(obj, "difficult", 0)
        bndbox = _sub(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), item.voc()):
            _sub(bndbox, tag, value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _coco_annotation(annotation_id: int, image_id: int, item: PlacedItem) -> dict[str, Any]:
    x, y, w, h = item.coco_bbox()
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": item.label + 1,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": 0,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _coco_document(images: list[dict[str, Any]], annotations: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    return {
        "info": {
            "description": "fashion_det: Fashion-MNIST items composited onto canvases",
            "version": "1",
            "seed": seed,
        },  # fmt: skip
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(FASHION_DET_CLASSES)
        ],  # fmt: skip
    }


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class _Writer:
    """Atomic file writes on a thread pool (each write fsyncs; threads overlap the waits)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WRITER_THREADS)
        self._pending: list[Future[None]] = []

    def write(self, path: Path, data: bytes) -> None:
        self._pending.append(self._pool.submit(_write_bytes, path, data))
        if len(self._pending) >= 4 * WRITER_THREADS:
            self.wait()

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _prepare_output(output: Path, force: bool) -> None:
    """Refuse a non-empty directory unless ``force``; then remove this generator's earlier output."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise FileExistsError(f"{output}: directory is not empty; pass --force (force=True) to replace "
                                  "an earlier fashion_det output in it")  # fmt: skip
        (output / SUMMARY_FILE).unlink(missing_ok=True)  # first, so a half-replaced output never looks complete
        voc, coco = output / VOC_DIR, output / COCO_DIR
        for directory in (voc / "Annotations", voc / "JPEGImages", coco / "train2017", coco / "val2017"):
            shutil.rmtree(directory, ignore_errors=True)
        for split in SPLITS:
            (voc / "ImageSets" / "Main" / f"{split.voc_image_set}.txt").unlink(missing_ok=True)
            (coco / "annotations" / f"instances_{split.coco_split}.json").unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)


def _load_sources(fashion_mnist: str | Path | Sequence[ArrayDataset] | None,
                  config: FashionDetConfig) -> tuple[dict[str, ArrayDataset], str]:  # fmt: skip
    """{"train": .., "test": ..} grey item sets and a description of where they came from. A split with no
    canvases to make is not read (``--train-images 0`` needs only the test split, which ships with
    the package)."""
    if fashion_mnist is None or isinstance(fashion_mnist, (str, Path)):
        sources = {split.name: load_fashion_mnist(fashion_mnist, split.fashion_mnist_split) if config.count(split)
                   else _no_items(split.name) for split in SPLITS}  # fmt: skip
        roots = {split.name: str(fashion_mnist_root(fashion_mnist, split.fashion_mnist_split)) for split in SPLITS
                 if config.count(split)}  # fmt: skip
        # One directory for both splits reads as that directory; the test split can come from the
        # copy shipped with the package while the training split comes from the system copy.
        description = (next(iter(roots.values()), "") if len(set(roots.values())) <= 1
                       else ", ".join(f"{name}: {root}" for name, root in roots.items()))  # fmt: skip
    else:
        if len(fashion_mnist) != 2:
            raise ValueError("fashion_mnist must be a directory or a (train, test) pair of ArrayDatasets")
        sources = {"train": fashion_mnist[0], "test": fashion_mnist[1]}
        description = "in-memory: " + ", ".join(d.name for d in fashion_mnist)
    for dataset in sources.values():
        if dataset.channels != 1:
            raise ValueError(f"{dataset.name}: Fashion-MNIST items must be grey (1 channel), got {dataset.channels}")
        if len(dataset.class_names) != len(FASHION_DET_CLASSES):
            raise ValueError(f"{dataset.name}: expected the {len(FASHION_DET_CLASSES)} Fashion-MNIST classes, "
                             f"got {len(dataset.class_names)}")  # fmt: skip
    return sources, description


def _no_items(split: str) -> ArrayDataset:
    import torch

    return ArrayDataset(torch.zeros((0, 1, 28, 28), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64),
                        list(FASHION_DET_CLASSES), f"fashion-mnist/{split} (not read: no canvases)")  # fmt: skip


def _generate_split(output: Path, split: _Split, first_id: int, source: ArrayDataset, config: FashionDetConfig,
                    writer: _Writer) -> dict[str, Any]:  # fmt: skip
    """Write one split's canvases in both layouts; returns its counts."""
    count = config.count(split)
    if count and config.max_objects and len(source) == 0:
        raise ValueError(f"{source.name}: no items to composite")
    items, labels = source.images[:, 0].numpy(), source.labels.numpy()
    voc, coco = output / VOC_DIR, output / COCO_DIR
    stems: list[str] = []
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    per_class = [0] * len(FASHION_DET_CLASSES)
    empty = 0
    for index in range(count):
        image_id = first_id + index
        rng = np.random.default_rng([config.seed, split.seed_code, index])
        canvas, placed = compose_canvas(items, labels, rng, config)
        stem, file_name = f"{image_id:06d}", f"{image_id:012d}.jpg"
        jpeg = _encode_jpeg(canvas)
        writer.write(voc / "JPEGImages" / f"{stem}.jpg", jpeg)
        writer.write(coco / split.coco_split / file_name, jpeg)
        writer.write(voc / "Annotations" / f"{stem}.xml", voc_xml(stem, config.canvas, placed).encode())
        stems.append(stem)
        images.append({"id": image_id, "file_name": file_name, "width": config.canvas, "height": config.canvas})
        for item in placed:
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, item))
            per_class[item.label] += 1
        empty += not placed
    atomic_write_text(voc / "ImageSets" / "Main" / f"{split.voc_image_set}.txt", "".join(s + "\n" for s in stems))
    document = _coco_document(images, annotations, config.seed)
    atomic_write_json(coco / "annotations" / f"instances_{split.coco_split}.json", document, indent=None)
    return {
        "images": count,
        "objects": len(annotations),
        "empty_images": empty,
        "objects_per_class": dict(zip(FASHION_DET_CLASSES, per_class)),
        "image_ids": [first_id, first_id + count - 1] if count else [],
        "fashion_mnist_split": split.fashion_mnist_split,
        "voc_image_set": split.voc_image_set,
        "coco_split": split.coco_split,
    }


def generate(
    output: str | Path,
    seed: int = 0,
    train_images: int = 2000,
    test_images: int = 500,
    canvas: int = 128,
    min_size: int = 20,
    max_size: int = 64,
    max_objects: int = 4,
    fashion_mnist: str | Path | Sequence[ArrayDataset] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the benchmark under ``output`` and return the summary stored in ``fashion_det.json``.

    ``fashion_mnist``: a directory of the official IDX files (default: the system copy), or a
    ``(train, test)`` pair of grey :class:`ArrayDataset` with the 10 Fashion-MNIST classes.
    """
    config = FashionDetConfig(seed, train_images, test_images, canvas, min_size, max_size, max_objects)
    config.validate()
    sources, description = _load_sources(fashion_mnist, config)
    output = Path(output)
    _prepare_output(output, force)
    writer = _Writer()
    splits: dict[str, Any] = {}
    try:
        first_id = 1
        for split in SPLITS:
            splits[split.name] = _generate_split(output, split, first_id, sources[split.name], config, writer)
            first_id += config.count(split)
        writer.wait()
    finally:
        writer.close()
    summary = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        **asdict(config),
        "item_threshold": ITEM_THRESHOLD,
        "max_iou": MAX_IOU,
        "max_cover": MAX_COVER,
        "jpeg_quality": JPEG_QUALITY,
        "fashion_mnist": description,
        "class_names": list(FASHION_DET_CLASSES),
        "voc_devkit": "VOCdevkit",
        "coco_root": "coco",
        "splits": splits,
    }
    atomic_write_json(output / SUMMARY_FILE, summary, indent=2)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detection.fashion_det", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = FashionDetConfig()
    parser.add_argument("--output", required=True, type=Path, help="output directory (must be empty or new)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-images", type=int, default=defaults.train_images)
    parser.add_argument("--test-images", type=int, default=defaults.test_images)
    parser.add_argument("--canvas", type=int, default=defaults.canvas, help="canvas side in pixels")
    parser.add_argument("--min-size", type=int, default=defaults.min_size, help="smallest item side in pixels")
    parser.add_argument("--max-size", type=int, default=defaults.max_size, help="largest item side in pixels")
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects, help="most items per canvas")
    parser.add_argument(
        "--fashion-mnist",
        type=Path,
        default=None,
        help=f"directory of the official Fashion-MNIST IDX files (default {FASHION_MNIST_DIR}; the test "
        "split also ships with the package, so --train-images 0 needs no download)",
    )
    parser.add_argument("--force", action="store_true", help="replace an earlier output in a non-empty directory")
    args = parser.parse_args(argv)
    try:
        summary = generate(args.output, args.seed, args.train_images, args.test_images, args.canvas, args.min_size,
                           args.max_size, args.max_objects, args.fashion_mnist, args.force)  # fmt: skip
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    splits = summary["splits"].items()
    counts = ", ".join(f"{name}: {s['images']} images / {s['objects']} objects" for name, s in splits)
    print(f"wrote {args.output} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
