"""Run a detector over a test set, write the ecosystems' result files, and score them."""

from __future__ import annotations

from collections.abc import Iterable
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
        detections += dataset.to_coco_results(prediction.image_id, prediction.boxes, prediction.scores, prediction.labels)
    if results_file is not None:
        write_coco_results(results_file, detections)
    return evaluate_coco(dataset.evaluation_ground_truth(), detections)


def evaluate_test_set(model: nn.Module, dataset: str, root: Path, *, channels: int, device: torch.device | str = "cpu",
                      metric: Metric | None = None, results_dir: Path | None = None, batch_size: int = 4,
                      progress: bool = False) -> tuple[dict[str, Any], list[Prediction], dict[str, Any]]:  # fmt: skip
    """Detect once on the test set, score it in each layout it has: ({"voc": .., "coco": ..}, predictions, sets)."""
    from .catalog import default_metric, evaluation_sets

    sets = evaluation_sets(dataset, root)
    first = next(iter(sets.values()))
    predictions = predict(model, first, channels=channels, batch_size=batch_size, device=device, progress=progress)
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
