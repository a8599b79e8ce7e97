"""Real images for reduced-precision detector exports: what INT8 is calibrated on, and the labelled
test set on which the artifact must keep fp32's mAP.

* calibration: ``--calibration-dir DIR`` (image files, any layout, searched recursively) or
  ``--calibration-dataset NAME`` (a detection training set under ``--data-root``, e.g. fashion-det's
  training canvases; a seeded draw, never a test split), one image at a time at its own size;
* the check: ``--eval-dataset NAME`` (a detection test set under ``--data-root``): the artifact and the
  fp32 PyTorch detector each detect on every image and are scored with the project's evaluators
  (VOC devkit rules, pycocotools); the export fails when the artifact's mAP (VOC where the set has
  VOC annotations, else COCO mAP@[.5,.95]) is more than ``--max-accuracy-drop`` points below fp32's.
  Also recorded: how many of fp32's confident detections (score >= 0.5) the artifact finds again
  (same label, IoU >= 0.5) and how far its boxes are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from detection.batches import to_model_input
from detection.catalog import TEST_DATASETS, TRAIN_DATASETS, training_set
from detection.inference import Prediction, evaluate_test_set

from ..backends import DetectorBackend
from ..models import PreparedDetector
from ..preprocess import ImageInputError, ImageReader
from .common import ExportError, ExportOptions
from .images import DRAW_SEED, ImageDataError, image_files
from .precision import CalibrationFeed

CONFIDENT = 0.5  # detections compared between fp32 and the artifact


@dataclass
class DetectorImages:
    """Calibration images for a detector graph: files, or indices of a detection dataset."""

    name: str
    files: list[Path] | None = None
    dataset: Any = None
    indices: list[int] | None = None
    channels: int = 3

    def images(self) -> Iterator[torch.Tensor]:
        """float (C, H, W) images in [0, 1], one at a time, as the detector graph takes them."""
        if self.files is not None:
            reader = ImageReader(self.channels)
            for file in self.files:
                try:
                    yield reader(file)[0]
                except ImageInputError as error:
                    raise ImageDataError(f"{file}: {error}") from None
        else:
            assert self.indices is not None
            for index in self.indices:
                yield to_model_input(self.dataset[index][0], self.channels)

    def feed(self, input_name: str) -> CalibrationFeed:
        count = len(self.files) if self.files is not None else len(self.indices or [])
        return CalibrationFeed(
            input_name, count, lambda: (image[None].numpy() for image in self.images()), batch_axis=False
        )

    def describe(self) -> dict[str, Any]:
        count = len(self.files) if self.files is not None else len(self.indices or [])
        return {"source": self.name, "images": count}


def calibration_images(options: ExportOptions, channels: int) -> DetectorImages:
    count = options.calibration_images
    if options.calibration_dir is not None:
        files = image_files(options.calibration_dir)[:count]
        return DetectorImages(f"{options.calibration_dir} ({len(files)} images)", files=files, channels=channels)
    name = str(options.calibration_dataset)
    dataset = training_set(name, _dataset_root("--calibration-dataset", name, TRAIN_DATASETS, options.data_root))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(DRAW_SEED))[:count].tolist()
    return DetectorImages(f"{name} training split ({len(order)} images, seeded draw {DRAW_SEED})", dataset=dataset,
                          indices=order, channels=channels)  # fmt: skip


def _dataset_root(flag: str, name: str, known: tuple[str, ...], root: Path | None) -> Path:
    if name not in known:
        raise ValueError(f"{flag} {name}: a detector takes a detection dataset ({', '.join(known)}) under --data-root")
    if root is None:
        raise ValueError(f"{flag} {name} needs --data-root (where the dataset lives)")
    return Path(root)


class BackendAsDetector:
    """A detector backend with the call convention of a torchvision detector (list of images in,
    list of {"boxes", "labels", "scores"} out), so the project's evaluation runs it unchanged."""

    def __init__(self, backend: DetectorBackend) -> None:
        self.backend = backend

    def eval(self) -> BackendAsDetector:
        return self

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [dict(zip(("boxes", "labels", "scores"), self.backend(image.cpu()))) for image in images]


def confident_matches(reference: list[Prediction], artifact: list[Prediction]) -> dict[str, Any]:
    """How many of the reference's confident detections the artifact finds (same label, IoU >= 0.5)."""
    total = found = 0
    ious: list[float] = []
    for ref, got in zip(reference, artifact):
        keep_ref, keep_got = ref.scores >= CONFIDENT, got.scores >= CONFIDENT
        ref_boxes, ref_labels = torch.as_tensor(ref.boxes[keep_ref]), ref.labels[keep_ref]
        got_boxes, got_labels = torch.as_tensor(got.boxes[keep_got]), got.labels[keep_got]
        total += len(ref_labels)
        if not len(ref_labels) or not len(got_labels):
            continue
        iou = box_iou(ref_boxes, got_boxes).numpy()
        iou[ref_labels[:, None] != got_labels[None, :]] = 0
        best = iou.max(1)
        found += int((best >= 0.5).sum())
        ious += best[best >= 0.5].tolist()
    return {"reference_confident": total, "matched": found, "matched_fraction": found / total if total else None,
            "mean_iou_of_matched": float(np.mean(ious)) if ious else None, "score_at_least": CONFIDENT}  # fmt: skip


def _primary(results: dict[str, Any]) -> tuple[str, float]:
    if "voc" in results:
        return f"VOC mAP ({results['voc']['metric']})", float(results["voc"]["mAP"])
    return "COCO mAP@[.5,.95]", float(results["coco"]["AP"])


def compare_on_test_set(prepared: PreparedDetector, backend: DetectorBackend, options: ExportOptions,
                        label: str) -> dict[str, Any]:  # fmt: skip
    name = str(options.eval_dataset)
    root = _dataset_root("--eval-dataset", name, TEST_DATASETS, options.data_root)
    channels = prepared.channels
    reference, ref_predictions, _ = evaluate_test_set(prepared.model, name, root, channels=channels)
    try:
        artifact, art_predictions, _ = evaluate_test_set(BackendAsDetector(backend), name, root,  # type: ignore[arg-type]
                                                         channels=channels)  # fmt: skip
    except Exception as error:  # any failure of the artifact on a real image is an export failure
        raise ExportError(f"{label}: running the artifact on {name} failed ({type(error).__name__}: {error})") from None
    metric, fp32_map = _primary(reference)
    _, artifact_map = _primary(artifact)
    drop = fp32_map - artifact_map
    record = {"reference": "PyTorch eager, fp32, cpu", "source": f"{name} test set ({root})",
              "images": len(ref_predictions), "metric": metric, "fp32": fp32_map, "artifact": artifact_map,
              "accuracy_drop": drop, "max_accuracy_drop": options.max_accuracy_drop,
              "results": {"fp32": reference, "artifact": artifact}}  # fmt: skip
    matched = record["confident_detections"] = confident_matches(ref_predictions, art_predictions)
    print(f"{label} on {name} ({len(ref_predictions)} images): {metric} {artifact_map:.1f} vs fp32 {fp32_map:.1f}; "
          f"{matched['matched']}/{matched['reference_confident']} of fp32's confident detections "
          "found again")  # fmt: skip
    if drop > options.max_accuracy_drop:
        raise ExportError(f"{label}: on {name}, {metric} {artifact_map:.2f} vs fp32 {fp32_map:.2f}: loses {drop:.2f} "
                          f"points, more than --max-accuracy-drop {options.max_accuracy_drop:g}")  # fmt: skip
    return record
