"""PASCAL VOC detection evaluation with the devkit's rules (VOCevaldet.m / VOCap.m).

Metric maths are small pure functions; :class:`VOCEvaluator` (reset / process / evaluate) collects
per-image results and calls them. Results are in percent, as in the paper's Table 7 and the
project's eval JSON contract: ``{"metric": "voc07"|"voc12", "mAP": .., "AP": {class: ..}}``.

The rules, per class (as VOCevaldet.m does them):

* detections are sorted by descending score; ties keep their input order (MATLAB's ``sort`` is
  stable, so is ours);
* each detection is compared with *every* ground-truth box of its image (matched or not, difficult
  or not) and takes the one with the highest IoU (the first one on an exact tie);
* if that IoU reaches the threshold (``IoU >= 0.5``: the devkit tests ``ovmax >= minoverlap``):
  a difficult box makes the detection "don't care" (neither TP nor FP); an unmatched box makes it
  a TP and marks the box matched; an already matched box makes it a FP (duplicate detection).
  Note that a duplicate is a FP even when it also overlaps another, still unmatched, box by more
  than the threshold: only the best-overlapping box is considered. Below the threshold: FP;
* IoU uses pixel-inclusive sizes, ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1`` (VOC XML boxes are
  1-based inclusive pixel indices). IoU is translation invariant, so 0-based boxes give the same
  result as long as ground truth and detections use the same origin; only the ``+ 1`` matters;
* difficult boxes are not positives: recall is ``TP / (#non-difficult boxes)``;
* ``voc07``: 11-point interpolated AP, the mean over ``t = 0, 0.1, ..., 1`` of the highest
  precision at recall ``>= t`` (0 where no such point); ``voc12`` (VOC2010 onwards): the area
  under the monotone (non-increasing) precision envelope, taken at the points where recall changes.

Decisions where the devkit is silent or produces NaN (documented so results are predictable):

* ``py-faster-rcnn`` / detectron2's ``voc_eval.py`` test ``IoU > 0.5`` (strictly). That differs from
  the devkit only at an IoU of exactly 0.5; ``strict_threshold=True`` reproduces those tools.
* Precision where no detection has been counted yet (only "don't care" detections so far) is 0,
  not 0/0: the devkit's NaN there is skipped by MATLAB's ``max``, so AP is the same.
* The 11 recall thresholds are exactly the doubles MATLAB's ``0:0.1:1`` holds (:data:`VOC07_THRESHOLDS`):
  0.30000000000000004 at ``t = 0.3``, so a recall of exactly 3/10 does *not* count there, as in the
  devkit; neither ``k / 10`` nor ``numpy.arange(0, 1.1, 0.1)`` (which differs from it at 0.6 and 0.7).
* A class with no positive (non-difficult) ground truth has no defined AP (the devkit divides by
  zero: NaN recall). :func:`evaluate_class` returns recall 0 and AP 0.0 for it;
  :class:`VOCEvaluator` / :func:`summarize` report its AP as 0.0 but leave it out of the mean,
  with a warning (on the official VOC test sets every class has positives, so the mean is the
  devkit's).
* A class without any detection has AP 0 (recall and precision are empty arrays).
* A detection on an image that has no ground-truth entry at all is an error (the devkit stops with
  "unrecognized image"); images without objects of a class must be present with empty boxes, and
  every detection on them is a FP.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from backbones.fileio import atomic_write_text

__all__ = [
    "METRICS",
    "VOC07_THRESHOLDS",
    "VOC_CLASSES",
    "ClassDetections",
    "ClassResult",
    "GroundTruth",
    "MatchResult",
    "VOCEvaluator",
    "devkit_result_path",
    "evaluate_class",
    "evaluate_detections",
    "match_detections",
    "precision_recall",
    "read_devkit_results",
    "summarize",
    "voc_ap",
    "voc_iou",
    "write_devkit_results",
]

Metric = Literal["voc07", "voc12"]
METRICS: tuple[str, ...] = ("voc07", "voc12")
# VOCevaldet.m loops `for t=0:0.1:1`. MATLAB's colon builds the first half of a range as a + k*d and
# the second half as b - (n - k)*d, so these are its doubles: 0.30000000000000004 (= 3 * 0.1) where
# k / 10 gives 0.3. A recall of exactly 3/10 is below it; recalls of 6/10 and 7/10 reach 0.6 and 0.7.
VOC07_THRESHOLDS: tuple[float, ...] = (*(k * 0.1 for k in range(5)), 0.5, *(1 - k * 0.1 for k in (4, 3, 2, 1, 0)))

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

DEFAULT_IOU_THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------
# Data holders
# --------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Array-like (list, numpy, torch tensor on any device) to a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_boxes(x: Any, what: str) -> np.ndarray:
    arr = _to_numpy(x).astype(np.float64, copy=False)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (N, 4) as x1, y1, x2, y2; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: boxes contain NaN or infinite values")
    return arr


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth boxes of one class in one image: ``boxes`` (M, 4) x1 y1 x2 y2, ``difficult`` (M,)."""

    boxes: np.ndarray
    difficult: np.ndarray

    @classmethod
    def create(cls, boxes: Any, difficult: Any = None, *, what: str = "ground truth") -> GroundTruth:
        b = _as_boxes(boxes, what)
        if difficult is None:
            d = np.zeros(len(b), dtype=bool)
        else:
            d = _to_numpy(difficult).astype(bool).reshape(-1)
            if len(d) != len(b):
                raise ValueError(f"{what}: {len(b)} boxes but {len(d)} 'difficult' flags")
        return cls(b, d)

    @classmethod
    def empty(cls) -> GroundTruth:
        return cls(np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=bool))

    @property
    def num_positives(self) -> int:
        return int(np.count_nonzero(~self.difficult))


@dataclass(frozen=True)
class ClassDetections:
    """All detections of one class: parallel ``image_ids`` (N,), ``scores`` (N,), ``boxes`` (N, 4)."""

    image_ids: tuple[str, ...]
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def create(cls, image_ids: Sequence[Any], scores: Any, boxes: Any, *, what: str = "detections") -> ClassDetections:
        ids = tuple(str(i) for i in image_ids)
        s = _to_numpy(scores).astype(np.float64, copy=False).reshape(-1)
        b = _as_boxes(boxes, what)
        if not (len(ids) == len(s) == len(b)):
            raise ValueError(f"{what}: {len(ids)} image ids, {len(s)} scores and {len(b)} boxes; need equal counts")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{what}: scores contain NaN or infinite values")
        return cls(ids, s, b)

    @classmethod
    def empty(cls) -> ClassDetections:
        return cls((), np.zeros(0, dtype=np.float64), np.zeros((0, 4), dtype=np.float64))

    @classmethod
    def concatenate(cls, parts: Iterable[ClassDetections]) -> ClassDetections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        ids: list[str] = []
        for p in parts:
            ids.extend(p.image_ids)
        return cls(tuple(ids), np.concatenate([p.scores for p in parts]), np.concatenate([p.boxes for p in parts]))

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching one class's detections, in descending-score order.

    ``order`` indexes the input detections; ``tp`` / ``fp`` are boolean flags per sorted detection
    ("don't care" detections on difficult objects have both False); ``num_positives`` counts the
    non-difficult ground-truth boxes.
    """

    order: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_positives: int

    @property
    def ignored(self) -> np.ndarray:
        return ~(self.tp | self.fp)


@dataclass(frozen=True)
class ClassResult:
    """Per-class curve and AP (a fraction in [0, 1]); recall/precision follow descending score."""

    recall: np.ndarray
    precision: np.ndarray
    ap: float
    num_positives: int
    num_tp: int
    num_fp: int


# --------------------------------------------------------------------------------------------
# Pure metric functions
# --------------------------------------------------------------------------------------------


def voc_iou(box: Any, boxes: Any) -> np.ndarray:
    """IoU of one box with each of ``boxes`` using the devkit's pixel-inclusive sizes (``x2 - x1 + 1``).

    Boxes without a positive intersection (``iw <= 0`` or ``ih <= 0``) get 0, as the devkit skips them.
    """
    b = np.asarray(box, dtype=np.float64).reshape(4)
    g = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]) + 1.0
    ih = np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]) + 1.0
    overlapping = (iw > 0) & (ih > 0)
    inter = np.where(overlapping, iw * ih, 0.0)
    # Same operation order as the devkit: area(det) + area(gt) - intersection.
    union = (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlapping, inter / np.where(overlapping, union, 1.0), 0.0)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown VOC metric {metric!r}; expected one of {', '.join(METRICS)}")


def voc_ap(recall: Any, precision: Any, metric: Metric = "voc07") -> float:
    """Average precision (a fraction) from a precision/recall curve.

    ``voc07``: mean over the 11 thresholds :data:`VOC07_THRESHOLDS` (MATLAB's ``0:0.1:1``) of
    ``max(precision[recall >= t])`` (0 if none).
    ``voc12``: area under the precision envelope (precision made non-increasing from the right),
    summed over the points where recall changes, with sentinels (0, 0) before and (1, 0) after.
    """
    _check_metric(metric)
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall has {rec.size} points but precision has {prec.size}")
    if np.isnan(rec).any() or np.isnan(prec).any():
        raise ValueError("recall/precision contain NaN; compute them with precision_recall()")
    if metric == "voc07":
        ap = 0.0
        for threshold in VOC07_THRESHOLDS:
            above = rec >= threshold
            ap += (float(prec[above].max()) if above.any() else 0.0) / len(VOC07_THRESHOLDS)
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[change] - mrec[change - 1]) * mpre[change]))


def match_detections(
    detections: ClassDetections,
    ground_truth: Mapping[str, GroundTruth],
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    strict_threshold: bool = False,
) -> MatchResult:
    """Assign one class's detections to its ground truth with the devkit's rules (module docstring).

    ``ground_truth`` maps every evaluated image id to that image's boxes of this class (empty
    :class:`GroundTruth` for images without the class). A detection is a match candidate when its
    best IoU is ``>= iou_threshold`` (``> iou_threshold`` with ``strict_threshold=True``) and > 0.
    """
    order = np.argsort(-detections.scores, kind="stable")
    n = len(order)
    tp = np.zeros(n, dtype=bool)
    fp = np.zeros(n, dtype=bool)
    matched = {image_id: np.zeros(len(gt.boxes), dtype=bool) for image_id, gt in ground_truth.items()}
    for rank, d in enumerate(order):
        image_id = detections.image_ids[d]
        gt = ground_truth.get(image_id)
        if gt is None:
            raise ValueError(
                f"detection {int(d)} (score {detections.scores[d]:g}) is on image {image_id!r}, which has no "
                "ground-truth entry (the devkit stops with 'unrecognized image'); give images without "
                "objects of this class an empty GroundTruth"
            )
        if len(gt.boxes) == 0:
            fp[rank] = True
            continue
        ious = voc_iou(detections.boxes[d], gt.boxes)
        j = int(np.argmax(ious))  # first index on ties, like the devkit's strict `ov > ovmax`
        best = float(ious[j])
        hit = best > iou_threshold if strict_threshold else best >= iou_threshold
        if not (hit and best > 0.0):
            fp[rank] = True
        elif gt.difficult[j]:
            pass  # don't care: neither TP nor FP
        elif matched[image_id][j]:
            fp[rank] = True  # duplicate detection of an already matched object
        else:
            tp[rank] = True
            matched[image_id][j] = True
    num_positives = sum(gt.num_positives for gt in ground_truth.values())
    return MatchResult(order=order, tp=tp, fp=fp, num_positives=num_positives)


def precision_recall(match: MatchResult) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision per sorted detection.

    Recall is 0 when the class has no positives; precision is 0 where nothing has been counted yet.
    """
    ctp = np.cumsum(match.tp, dtype=np.float64)
    cfp = np.cumsum(match.fp, dtype=np.float64)
    if match.num_positives > 0:
        recall = ctp / float(match.num_positives)
    else:
        recall = np.zeros_like(ctp)
    counted = ctp + cfp
    precision = np.divide(ctp, counted, out=np.zeros_like(ctp), where=counted > 0)
    return recall, precision


def evaluate_class(
    detections: ClassDetections,
    ground_truth: Mapping[str, GroundTruth],
    metric: Metric = "voc07",
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    strict_threshold: bool = False,
) -> ClassResult:
    """Match, build the precision/recall curve and compute AP (a fraction) for one class."""
    _check_metric(metric)
    match = match_detections(detections, ground_truth, iou_threshold=iou_threshold, strict_threshold=strict_threshold)
    recall, precision = precision_recall(match)
    ap = voc_ap(recall, precision, metric) if match.num_positives > 0 else 0.0
    return ClassResult(
        recall=recall,
        precision=precision,
        ap=ap,
        num_positives=match.num_positives,
        num_tp=int(match.tp.sum()),
        num_fp=int(match.fp.sum()),
    )


def summarize(results: Mapping[str, ClassResult], metric: Metric) -> dict[str, Any]:
    """Contract dict ``{"metric", "mAP", "AP": {class: ..}}`` in percent.

    Classes without positives report AP 0.0 and are left out of the mean (with a warning).
    """
    _check_metric(metric)
    ap = {name: 100.0 * r.ap for name, r in results.items()}
    scored = [ap[name] for name, r in results.items() if r.num_positives > 0]
    empty = [name for name, r in results.items() if r.num_positives == 0]
    if empty:
        warnings.warn(
            f"VOC evaluation: classes without any non-difficult ground truth are reported as AP 0 and left "
            f"out of the mAP: {', '.join(empty)}",
            stacklevel=2,
        )
    mean = float(np.mean(scored)) if scored else 0.0
    return {"metric": metric, "mAP": mean, "AP": ap}


def evaluate_detections(
    detections_by_class: Mapping[str, ClassDetections],
    ground_truth_by_class: Mapping[str, Mapping[str, GroundTruth]],
    class_names: Sequence[str],
    metric: Metric = "voc07",
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    strict_threshold: bool = False,
) -> dict[str, Any]:
    """Evaluate every class in ``class_names`` and return the contract dict (percent).

    ``ground_truth_by_class[c]`` maps every evaluated image id to its boxes of class ``c``; a class
    missing from ``detections_by_class`` has no detections (AP 0).
    """
    results = {}
    for name in class_names:
        if name not in ground_truth_by_class:
            raise ValueError(f"no ground truth given for class {name!r}")
        dets = detections_by_class.get(name, ClassDetections.empty())
        results[name] = evaluate_class(
            dets,
            ground_truth_by_class[name],
            metric,
            iou_threshold=iou_threshold,
            strict_threshold=strict_threshold,
        )
    return summarize(results, metric)


# --------------------------------------------------------------------------------------------
# Evaluator (reset / process / evaluate)
# --------------------------------------------------------------------------------------------


class VOCEvaluator:
    """Collect per-image detections and ground truth; evaluate with the devkit rules.

    ``process(image_id, detections, ground_truth)`` takes mappings of array-likes (numpy or torch):
    detections ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}`` and ground truth
    ``{"boxes": (M, 4), "labels": (M,), "difficult": (M,) optional}``. Labels are class names or
    integers; integer ``l`` means ``class_names[l - label_offset]`` (``label_offset=1`` for
    torchvision-style detectors whose label 0 is the background). Boxes of detections and ground
    truth must share one coordinate origin (see the module docstring).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        label_offset: int = 0,
        iou_threshold: float = DEFAULT_IOU_THRESHOLD,
        strict_threshold: bool = False,
    ) -> None:
        names = [str(c) for c in class_names]
        if not names:
            raise ValueError("VOCEvaluator needs at least one class name")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate class names in {names}")
        self.class_names: tuple[str, ...] = tuple(names)
        self.label_offset = int(label_offset)
        self.iou_threshold = float(iou_threshold)
        self.strict_threshold = bool(strict_threshold)
        self._index = {name: i for i, name in enumerate(self.class_names)}
        self.reset()

    def reset(self) -> None:
        self._images: list[str] = []
        self._seen: set[str] = set()
        self._gt: dict[str, dict[str, GroundTruth]] = {c: {} for c in self.class_names}
        self._dets: dict[str, list[ClassDetections]] = {c: [] for c in self.class_names}

    def __len__(self) -> int:
        return len(self._images)

    def _class_indices(self, labels: Any, count: int, what: str) -> np.ndarray:
        raw = _to_numpy(labels).reshape(-1)
        if len(raw) != count:
            raise ValueError(f"{what}: {count} boxes but {len(raw)} labels")
        if raw.dtype.kind in "US" or raw.dtype == object:
            out = np.empty(len(raw), dtype=np.int64)
            for i, label in enumerate(raw):
                if isinstance(label, (int, np.integer)):
                    out[i] = self._int_label(int(label), what)
                elif str(label) in self._index:
                    out[i] = self._index[str(label)]
                else:
                    raise ValueError(f"{what}: unknown class name {label!r}; known: {', '.join(self.class_names)}")
            return out
        if raw.dtype.kind not in "iu":
            if raw.dtype.kind == "f" and np.all(raw == np.round(raw)):
                raw = raw.astype(np.int64)
            else:
                raise ValueError(f"{what}: labels must be integers or class names, got dtype {raw.dtype}")
        return np.array([self._int_label(int(v), what) for v in raw], dtype=np.int64)

    def _int_label(self, label: int, what: str) -> int:
        index = label - self.label_offset
        if not 0 <= index < len(self.class_names):
            lo, hi = self.label_offset, self.label_offset + len(self.class_names) - 1
            raise ValueError(f"{what}: label {label} outside [{lo}, {hi}] (label_offset={self.label_offset})")
        return index

    def process(self, image_id: Any, detections: Mapping[str, Any], ground_truth: Mapping[str, Any]) -> None:
        """Add one image. Every evaluated image must be processed once, even without objects."""
        image = str(image_id)
        if image in self._seen:
            raise ValueError(f"image {image!r} was already processed")
        what = f"image {image!r}"
        for key in ("boxes", "labels"):
            if key not in ground_truth:
                raise ValueError(f"{what}: ground truth lacks {key!r}")
            if key not in detections:
                raise ValueError(f"{what}: detections lack {key!r}")
        if "scores" not in detections:
            raise ValueError(f"{what}: detections lack 'scores'")

        gt_boxes = _as_boxes(ground_truth["boxes"], f"{what} ground truth")
        gt_cls = self._class_indices(ground_truth["labels"], len(gt_boxes), f"{what} ground truth")
        difficult = ground_truth.get("difficult")
        gt_diff = (
            np.zeros(len(gt_boxes), dtype=bool) if difficult is None else _to_numpy(difficult).astype(bool).reshape(-1)
        )
        if len(gt_diff) != len(gt_boxes):
            raise ValueError(f"{what}: {len(gt_boxes)} ground-truth boxes but {len(gt_diff)} 'difficult' flags")

        det_boxes = _as_boxes(detections["boxes"], f"{what} detections")
        det_cls = self._class_indices(detections["labels"], len(det_boxes), f"{what} detections")
        scores = _to_numpy(detections["scores"]).astype(np.float64, copy=False).reshape(-1)
        if len(scores) != len(det_boxes):
            raise ValueError(f"{what}: {len(det_boxes)} detected boxes but {len(scores)} scores")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"{what}: detection scores contain NaN or infinite values")

        self._seen.add(image)
        self._images.append(image)
        for c, name in enumerate(self.class_names):
            in_gt = gt_cls == c
            self._gt[name][image] = GroundTruth(gt_boxes[in_gt], gt_diff[in_gt])
            in_det = det_cls == c
            if in_det.any():
                n = int(in_det.sum())
                self._dets[name].append(ClassDetections((image,) * n, scores[in_det], det_boxes[in_det]))

    def class_detections(self) -> dict[str, ClassDetections]:
        """Detections per class, in processing order (for :func:`write_devkit_results`)."""
        return {name: ClassDetections.concatenate(parts) for name, parts in self._dets.items()}

    def class_ground_truth(self) -> dict[str, dict[str, GroundTruth]]:
        """Ground truth per class: ``{class: {image_id: GroundTruth}}`` over all processed images."""
        return {name: dict(per_image) for name, per_image in self._gt.items()}

    def class_results(self, metric: Metric = "voc07") -> dict[str, ClassResult]:
        _check_metric(metric)
        detections = self.class_detections()
        return {
            name: evaluate_class(
                detections[name],
                self._gt[name],
                metric,
                iou_threshold=self.iou_threshold,
                strict_threshold=self.strict_threshold,
            )
            for name in self.class_names
        }

    def evaluate(self, metric: Metric = "voc07") -> dict[str, Any]:
        """``{"metric": metric, "mAP": percent, "AP": {class: percent}}``."""
        if not self._images:
            raise ValueError("VOCEvaluator.evaluate: no images were processed")
        return summarize(self.class_results(metric), metric)


# --------------------------------------------------------------------------------------------
# Devkit result files: comp4_det_<split>_<class>.txt, lines "image_id score xmin ymin xmax ymax"
# --------------------------------------------------------------------------------------------

_FIELDS = ("image_id", "score", "xmin", "ymin", "xmax", "ymax")


def devkit_result_path(directory: str | os.PathLike, split: str, class_name: str) -> Path:
    return Path(directory) / f"comp4_det_{split}_{class_name}.txt"


def _format_float(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same double


def write_devkit_results(
    directory: str | os.PathLike, split: str, detections_by_class: Mapping[str, ClassDetections]
) -> list[Path]:
    """Write one ``comp4_det_<split>_<class>.txt`` per class (empty file for a class without detections).

    Each file is written to a temporary file in ``directory`` and then renamed over the target.
    """
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, dets in detections_by_class.items():
        path = devkit_result_path(out_dir, split, name)
        lines = []
        for image_id, score, box in zip(dets.image_ids, dets.scores, dets.boxes):
            if not image_id or any(ch.isspace() for ch in image_id):
                raise ValueError(f"{path}: image id {image_id!r} is empty or contains whitespace")
            lines.append(" ".join([image_id, _format_float(score), *(_format_float(v) for v in box)]) + "\n")
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def _parse_devkit_file(path: Path) -> ClassDetections:
    ids: list[str] = []
    values: list[list[float]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != len(_FIELDS):
                raise ValueError(
                    f"{path}, line {lineno}: expected {len(_FIELDS)} fields ({' '.join(_FIELDS)}), "
                    f"got {len(parts)}: {text!r}"
                )
            row = []
            for field, token in zip(_FIELDS[1:], parts[1:]):
                try:
                    value = float(token)
                except ValueError:
                    raise ValueError(f"{path}, line {lineno}: {field} is not a number: {token!r}") from None
                if not math.isfinite(value):
                    raise ValueError(f"{path}, line {lineno}: {field} is not finite: {token!r}")
                row.append(value)
            ids.append(parts[0])
            values.append(row)
    if not ids:
        return ClassDetections.empty()
    arr = np.asarray(values, dtype=np.float64)
    return ClassDetections(tuple(ids), arr[:, 0].copy(), arr[:, 1:].copy())


def read_devkit_results(
    directory: str | os.PathLike, split: str, class_names: Sequence[str], *, missing_ok: bool = False
) -> dict[str, ClassDetections]:
    """Read ``comp4_det_<split>_<class>.txt`` for every class; malformed lines raise ValueError.

    A missing file raises FileNotFoundError unless ``missing_ok`` (then the class has no detections).
    """
    out: dict[str, ClassDetections] = {}
    for name in class_names:
        path = devkit_result_path(directory, split, name)
        if not path.is_file():
            if missing_ok:
                out[name] = ClassDetections.empty()
                continue
            raise FileNotFoundError(f"no devkit result file for class {name!r}: {path}")
        out[name] = _parse_devkit_file(path)
    return out
