"""Dataset names the CLIs accept, their layouts, and the paper's training recipes for them.

Training sets: ``voc07+12`` and ``voc07++12`` (the paper's), ``voc07-trainval``, ``voc12-trainval``,
``coco`` (train2017) and ``fashion-det`` (this project's Fashion-MNIST benchmark, VOC layout).
Test sets: ``voc07-test`` (VOC07 11-point metric), ``voc12-test`` (area metric), ``coco`` (val2017,
pycocotools) and ``fashion-det`` (both: the VOC07 test split and the COCO val2017 split of the same
images, so one run reports VOC07 mAP and COCO mAP@.5 / mAP@[.5,.95]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datasets import COCODetection, OnError, VOCConcat, VOCDetection, voc_dataset
from .fashion_det import FASHION_DET_CLASSES
from .voc_eval import VOC_CLASSES, Metric

VOC_TRAIN = ("voc07+12", "voc07++12", "voc07-trainval", "voc12-trainval")
VOC_TEST = ("voc07-test", "voc12-test")
TRAIN_DATASETS = (*VOC_TRAIN, "coco", "fashion-det")
TEST_DATASETS = (*VOC_TEST, "coco", "fashion-det")
# The test set each training set is evaluated on (VOC12 test annotations are not public: none).
TEST_FOR_TRAIN = {"voc07+12": "voc07-test", "voc07++12": None, "voc07-trainval": "voc07-test",
                  "voc12-trainval": None, "coco": "coco", "fashion-det": "fashion-det"}  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """A schedule given for ``images_per_batch`` images; other batch sizes scale it linearly."""

    images_per_batch: int
    lr: float
    steps: tuple[int, ...]
    max_iters: int
    model: dict[str, Any] = field(default_factory=dict)
    warmup_iters: int = 0

    def scaled(self, images_per_batch: int) -> tuple[float, list[int], int]:
        """(lr, lr steps, iterations) for another batch: lr ∝ batch, iterations ∝ 1/batch."""
        factor = images_per_batch / self.images_per_batch
        return self.lr * factor, [round(s / factor) for s in self.steps], max(1, round(self.max_iters / factor))


PAPER_MODEL = dict(min_size=600, max_size=1000, anchor_sizes=(32, 64, 128, 256, 512))
RECIPES: dict[str, Recipe] = {
    # Faster R-CNN's VOC setting (1 image per batch: lr 0.001 for 60k iterations, 0.0001 for 20k more)
    "voc": Recipe(1, 0.001, (60_000,), 80_000, PAPER_MODEL),
    # The paper's COCO setting: 8 GPUs x 1 image, lr 0.001 for 240k iterations, 0.0001 for 80k
    "coco": Recipe(8, 0.001, (240_000,), 320_000, PAPER_MODEL),
    # The Fashion-MNIST benchmark: 128-px canvases at native size, objects of 20-64 px
    "fashion-det": Recipe(8, 0.02, (1500,), 2000, dict(min_size=128, max_size=128, anchor_sizes=(16, 32, 64, 128),
                          box_batch_size_per_image=128, rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                          rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300), warmup_iters=100),
}  # fmt: skip


def recipe_for(dataset: str) -> Recipe:
    return RECIPES["voc" if dataset.startswith("voc") else dataset]


def class_names_for(dataset: str) -> list[str]:
    if dataset == "fashion-det":
        return list(FASHION_DET_CLASSES)
    if dataset.startswith("voc"):
        return list(VOC_CLASSES)
    raise ValueError(f"{dataset}: class names come from the annotation file")


def training_set(dataset: str, root: Path, on_error: OnError = "raise") -> VOCDetection | VOCConcat | COCODetection:
    if dataset not in TRAIN_DATASETS:
        raise ValueError(f"unknown training set {dataset!r}; expected one of {', '.join(TRAIN_DATASETS)}")
    if dataset == "coco":
        return COCODetection(root, "train2017", on_error=on_error)
    if dataset == "fashion-det":
        return voc_dataset("voc07-trainval", root / "VOCdevkit", class_names=FASHION_DET_CLASSES, on_error=on_error)
    return voc_dataset(dataset, root, on_error=on_error)


def evaluation_sets(dataset: str, root: Path, on_error: OnError = "raise") -> dict[str, Any]:
    """{"voc": dataset, "coco": dataset}: the layouts this test set is scored in."""
    if dataset not in TEST_DATASETS:
        raise ValueError(f"unknown test set {dataset!r}; expected one of {', '.join(TEST_DATASETS)}")
    if dataset == "coco":
        return {"coco": COCODetection(root, "val2017", on_error=on_error)}
    if dataset == "fashion-det":
        return {"voc": voc_dataset("voc07-test", root / "VOCdevkit", class_names=FASHION_DET_CLASSES,
                                   on_error=on_error),
                "coco": COCODetection(root / "coco", "val2017", on_error=on_error)}  # fmt: skip
    return {"voc": voc_dataset(dataset, root, on_error=on_error)}


def default_metric(dataset: str) -> Metric:
    """VOC07 test is scored with the 11-point metric, VOC12 (and the others) with the area metric."""
    return "voc12" if dataset == "voc12-test" else "voc07"
