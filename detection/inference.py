"""Run a detector over a test set, write the ecosystems' result files, and score them."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .batches import DetectionBatches
from .coco_eval import evaluate_coco, write_coco_results
from .datasets import continuous_to_voc
from .voc_eval import ClassDetections, Metric, VOCEvaluator, write_devkit_results


@dataclass
class Prediction:
    image_id: Any
    boxes: np.ndarray  # (N, 4) continuous xyxy in original image pixels
    scores: np.ndarray
    labels: np.ndarray  # 1..C


@torch.no_grad()
def predict(model: nn.Module, dataset: Any, *, channels: int, batch_size: int = 4,
            device: torch.device | str = "cpu", progress: bool = False) -> list[Prediction]:  # fmt: skip
    """Detections for every image of ``dataset``, in dataset order."""
    model.eval()
    source = DetectionBatches(dataset, batch_size, train=False, channels=channels)
    batches: Iterable[Any] = source.batches(0)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=len(source), unit="batch", desc="detect")
    predictions = []
    for images, targets in batches:
        outputs = model([image.to(device) for image in images])
        for output, target in zip(outputs, targets):
            # float(): under bf16/fp16 autocast the heads return half-precision boxes and scores
            predictions.append(Prediction(target["image_id"], output["boxes"].float().cpu().numpy(),
                                          output["scores"].float().cpu().numpy(),
                                          output["labels"].long().cpu().numpy()))  # fmt: skip
    return predictions


def voc_detections_by_class(predictions: list[Prediction], class_names: list[str]) -> dict[str, ClassDetections]:
    """Per-class detections in the devkit's 1-based inclusive pixel convention."""
    result = {}
    for label, name in enumerate(class_names, start=1):
        ids, scores, boxes = [], [], []
        for prediction in predictions:
            keep = prediction.labels == label
            ids += [str(prediction.image_id)] * int(keep.sum())
            scores.append(prediction.scores[keep])
            boxes.append(np.asarray(continuous_to_voc(prediction.boxes[keep])).reshape(-1, 4))
        result[name] = ClassDetections.create(ids, np.concatenate(scores) if scores else np.zeros(0),
                                              np.concatenate(boxes) if boxes else np.zeros((0, 4)))  # fmt: skip
    return result


def score_voc(predictions: list[Prediction], dataset: Any, metric: Metric, results_dir: Path | None = None,
              split: str = "test") -> dict[str, Any]:  # fmt: skip
    """The devkit's mAP; with ``results_dir``, also the comp4 files any devkit can score."""
    evaluator = VOCEvaluator(dataset.class_names, label_offset=1)
    for index, prediction in enumerate(predictions):
        detections = {"boxes": np.asarray(continuous_to_voc(prediction.boxes)).reshape(-1, 4),
                      "scores": prediction.scores, "labels": prediction.labels}  # fmt: skip
        evaluator.process(str(prediction.image_id), detections, dataset.ground_truth(index))
    if results_dir is not None:
        write_devkit_results(results_dir, split, voc_detections_by_class(predictions, list(dataset.class_names)))
    return evaluator.evaluate(metric)


def score_coco(predictions: list[Prediction], dataset: Any, results_file: Path | None = None) -> dict[str, float]:
    """pycocotools' bbox AP; with ``results_file``, also the results JSON."""
    detections = []
    for prediction in predictions:
        detections += dataset.to_coco_results(
            prediction.image_id, prediction.boxes, prediction.scores, prediction.labels
        )
    if results_file is not None:
        write_coco_results(results_file, detections)
    return evaluate_coco(dataset.evaluation_ground_truth(), detections)


def check_category_names(categories: Sequence[tuple[int, str]], dataset: Any) -> None:
    """Every category of a COCO-layout ``dataset`` must have the detector's name for its id (else ValueError)."""
    names = dict(categories)
    for label, name in enumerate(dataset.class_names, start=1):
        category_id = dataset.label_to_category_id[label]
        if names.get(category_id) != name:
            known = repr(names[category_id]) if category_id in names else "unknown"
            raise ValueError(f"{dataset.annotation_file}: category id {category_id} is {name!r}, but to the detector "
                             f"it is {known}: the detector predicts another dataset's categories")  # fmt: skip


def to_dataset_labels(predictions: list[Prediction], categories: Sequence[tuple[int, str]],
                      dataset: Any) -> tuple[list[Prediction], int]:  # fmt: skip
    """Predictions of a detector whose label l predicts category ``categories[l - 1]`` = (category id, name),
    in the labels 1..C of a COCO-layout ``dataset``, and the number of detections dropped.

    Every category of the annotation file must have the detector's name for its id (else ValueError).
    Detections of ids the file lacks (COCO's unused "N/A" ids, or categories a subset leaves out) are
    dropped: pycocotools would ignore them too."""
    check_category_names(categories, dataset)
    to_label = np.zeros(len(categories) + 1, dtype=np.int64)  # 0: not a category of the dataset
    for label, (category_id, _) in enumerate(categories, start=1):
        to_label[label] = dataset.category_id_to_label.get(category_id, 0)
    mapped, dropped = [], 0
    for p in predictions:
        labels = to_label[p.labels]
        keep = labels > 0
        dropped += int((~keep).sum())
        mapped.append(Prediction(p.image_id, p.boxes[keep], p.scores[keep], labels[keep]))
    return mapped, dropped


def _some(names: Sequence[str]) -> str:
    return f"{len(names)} classes ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def evaluate_test_set(model: nn.Module, dataset: str, root: Path, *, channels: int, device: torch.device | str = "cpu",
                      metric: Metric | None = None, results_dir: Path | None = None, batch_size: int = 4,
                      progress: bool = False, categories: Sequence[tuple[int, str]] | None = None,
                      class_names: Sequence[str] | None = None,
                      ) -> tuple[dict[str, Any], list[Prediction], dict[str, Any]]:  # fmt: skip
    """Detect once on the test set, score it in each layout it has: ({"voc": .., "coco": ..}, predictions, sets).

    ``class_names``: what a trained detector's labels 1..K name; the test set must have the same classes.
    ``categories``: for a detector whose labels are annotation-file category ids (torchvision's COCO
    detectors), the (category id, name) of each label 1..K; such a detector is scored on a COCO-layout
    test set only, and the predictions returned are in the dataset's labels."""
    from .catalog import default_metric, evaluation_sets

    sets = evaluation_sets(dataset, root)
    if categories is not None and list(sets) != ["coco"]:
        raise ValueError(f"the detector's labels are COCO category ids; {dataset} is not a COCO-layout test set")
    first = next(iter(sets.values()))
    if categories is not None:
        check_category_names(categories, first)  # before the detector runs
    elif class_names is not None and list(class_names) != list(first.class_names):
        raise ValueError(f"the detector predicts {_some(class_names)}; {dataset} in {root} has "
                         f"{_some(first.class_names)}: its label i would be scored as the set's class i")  # fmt: skip
    predictions = predict(model, first, channels=channels, batch_size=batch_size, device=device, progress=progress)
    if categories is not None:
        predictions, dropped = to_dataset_labels(predictions, categories, first)
        if dropped:
            warnings.warn(f"{dropped} detection(s) of categories {first.annotation_file} does not have were left out "
                          "(pycocotools would ignore them)", stacklevel=2)  # fmt: skip
    results: dict[str, Any] = {}
    if "voc" in sets:
        results["voc"] = score_voc(predictions, sets["voc"], metric or default_metric(dataset), results_dir)
    if "coco" in sets:
        coco_predictions = predictions
        if "voc" in sets:  # the same images in both layouts: VOC stems are the zero-padded COCO ids
            coco_predictions = [Prediction(int(p.image_id), p.boxes, p.scores, p.labels) for p in predictions]
            if sorted(p.image_id for p in coco_predictions) != sorted(sets["coco"].image_ids):
                raise ValueError(f"{root}: the VOC and COCO layouts do not hold the same images")
        results["coco"] = score_coco(coco_predictions, sets["coco"],
                                     results_dir / "coco_results.json" if results_dir else None)  # fmt: skip
    return results, predictions, sets
