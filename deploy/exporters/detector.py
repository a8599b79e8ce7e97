"""Export a ``detection.train`` run's Faster R-CNN as one ONNX graph, and check it against PyTorch.

    python -m deploy.export --model resnet50 --detector c4 --weights runs/det-resnet50-c4-voc07+12 \\
        --format onnx --output det.onnx

The graph is the whole detector: resize (shorter side to min_size, longer at most max_size),
normalisation and padding (torchvision's GeneralizedRCNNTransform), backbone, RPN, RoIAlign, box
head, box decoding, per-class NMS, the score threshold and the top ``detections_per_image``, and
the boxes mapped back to the input image. Contract (also in the sidecar):

* input ``image``: ONE float32 image (C, H, W), pixel values / 255 in [0, 1] (RGB; luminance for a
  1-channel backbone), any H and W;
* outputs ``boxes`` (N, 4) float32 x1, y1, x2, y2 in the input image's pixels, ``labels`` (N,) int64
  in 1..C (``class_names[label - 1]``), ``scores`` (N,) float32, sorted by score, descending.

Exporter: ``torch.onnx.export(dynamo=False)``, opset 17 (DESIGN.md, "Export facts"). One fix is
applied while tracing: torchvision's traced resize computes the resized size in float32 where eager
PyTorch uses float64, so for some image sizes the graph resized to one pixel less than PyTorch
(e.g. 121 * float32(128 / 121) = 127.99999 -> 127) and shifted every box (seen: ~1/3 of random
sizes, boxes off by up to 2 px, other detections). :class:`ExactResizeTransform` traces eager's
size in integer arithmetic instead (pytorch/vision#3654 discusses the same float32/float64
difference), so runtimes without float64 (OpenVINO's CPU plugin, TensorRT) resize alike; and
batched NMS is traced without torchvision's empty-input branch, which OpenVINO mishandles
(:func:`traceable_for_every_runtime`).

``--format tensorrt`` builds a TensorRT engine from that graph traced with a constant RPN top-k
(:mod:`deploy.tensorrt.static_topk`: TensorRT's parser takes TopK's K only as a constant, which is exact for
images whose every RPN level has at least pre_nms_top_n anchors; the profile's smallest side is
chosen so) with one optimisation profile over the image's height and width up to
``--max-image-side`` (:mod:`deploy.tensorrt.detection`), and checks the engine the same way; it needs
``tensorrt`` and a CUDA GPU. ``--format openvino`` converts the checked graph to OpenVINO IR.

Reduced precision (fp16, int8: :mod:`deploy.exporters.precision`) applies to the convolutional
trunk, the RPN head and the box head (:data:`REDUCED_SCOPES`); resize and normalisation, anchors,
box decoding, RoIAlign, NMS and the mapping back to image pixels stay fp32. Such an export is
checked by the mAP it keeps on a labelled ``--eval-dataset`` (:mod:`.detection_accuracy`).

The check: natural-looking images (:mod:`deploy.samples`) at two sizes, one smaller than min_size
(upscaled) and one larger in the other orientation (downscaled), run through onnxruntime and
through the PyTorch detector; see :func:`match_detections` for the rule. Fewer than
``MIN_COMPARED`` detections to compare (a detector that finds little in synthetic images) makes the
check also run the same graph exported with ``score_thresh=0``, so the comparison always has
something to compare. A mismatch fails the export and leaves nothing behind.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from backbones.fileio import sha256_of

from ..backends import ArtifactLoadError, Detections, DetectorBackend, OnnxDetectionBackend, OpenVINODetectionBackend
from ..models import PreparedDetector, prepare_detector
from ..samples import natural_images
from ..sidecar import FORMAT, VERSION, sidecar_path, tool_versions, validate
from .common import ExportError, ExportOptions, ExportResult, check_output_suffix, exporter_failures, publish
from .images import ImageDataError
from .onnx_graph import check_onnx_file

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "labels", "scores")
BOX_TOLERANCE_PX = {"fp32": 1.0, "fp16": 4.0, "int8": 8.0}  # default --tolerance: largest coordinate difference, px
# scores must agree this well (detections this close in score may swap ranks). fp16 / int8: the pairing
# is recorded, not gating: detections near the score threshold legitimately come and go, and the mAP
# on real images (--eval-dataset) decides.
SCORE_TOLERANCES = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}
SCORE_TOLERANCE = SCORE_TOLERANCES["fp32"]
MIN_COMPARED = 10  # fewer matched detections over the check images: also check at score_thresh 0


# ---------------------------------------------------------------- the graph
EXACT_SIZE_LIMIT = 8192  # input sides up to this get eager's size bit for bit in every runtime


@functools.lru_cache(maxsize=8)
def _float64_short_sizes(limit: int, sides: int = EXACT_SIZE_LIMIT) -> torch.Tensor:
    """Keys ``denominator * (sides + 1) + side`` of every (side, denominator) up to ``sides`` where eager's
    float64 ``floor(side * (limit / denominator))`` is one less than the exact ``side * limit // denominator``
    (the product is an integer and float64 rounds it down a hair, e.g. 49 * (1 / 49) = 0.9999999999999999)."""
    keys = []
    for denominator in range(1, sides + 1):
        step = denominator // math.gcd(limit, denominator)  # only these sides give an integer product
        side = np.arange(step, sides + 1, step, dtype=np.int64)
        eager = np.floor(side.astype(np.float64) * (limit / denominator)).astype(np.int64)
        keys.append(denominator * (sides + 1) + side[eager != side * limit // denominator])
    return torch.from_numpy(np.concatenate(keys))


def eager_resized_size(shape: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """(H, W) int64 -> eager torchvision's resized (H, W), in integer arithmetic only.

    Eager: scale = min(min_size / shorter, max_size / longer) and size = floor(side * scale) in float64.
    Runtimes without float64 (OpenVINO's CPU plugin, TensorRT) compute a float64 graph in float32 and
    resize one pixel short for ~12 % of sizes at min_size 128. Here: the scale's choice and
    floor(side * limit / denominator) are exact integer arithmetic, and a table of the sizes where
    float64 rounds an integer product down (:func:`_float64_short_sizes`) takes off that pixel;
    values stay below 2**31 (OpenVINO's CPU plugin computes int64 in int32)."""
    sides = EXACT_SIZE_LIMIT
    shorter, longer = shape.min(), shape.max()
    by_shorter = min_size * longer <= max_size * shorter  # min_size / shorter <= max_size / longer
    limit = torch.where(by_shorter, torch.tensor(min_size), torch.tensor(max_size))
    denominator = torch.where(by_shorter, shorter, longer)
    exact = shape * limit // denominator
    table_id = (~by_shorter).to(torch.int64) if min_size != max_size else torch.zeros((), dtype=torch.int64)
    key = (table_id * (sides + 1) + denominator) * (sides + 1) + shape
    key = torch.where((denominator <= sides) & (shape <= sides), key, torch.full_like(key, -1))
    tables = [_float64_short_sizes(min_size)] + ([_float64_short_sizes(max_size) + (sides + 1) ** 2]
                                                 if min_size != max_size else [])  # fmt: skip
    short = (key[:, None] == torch.cat(tables)[None, :]).to(torch.int64).sum(dim=1)
    return exact - short


class ExactResizeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform whose traced resize gives eager PyTorch's size for every input size.

    Eager: scale = min(min_size / shorter, max_size / longer) and size = floor(side * scale), both in
    float64 (Python floats). Traced by torchvision: the same in float32, one pixel short for some
    sizes. Here the graph computes eager's size in integer arithmetic (:func:`eager_resized_size`:
    exact in runtimes without float64 too, for sides up to :data:`EXACT_SIZE_LIMIT`) and resizes
    to it (ONNX Resize with ``sizes``; bilinear, half-pixel, as ``interpolate(size=...)``). Eager
    calls are torchvision's own."""

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> ExactResizeTransform:
        return cls(transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
                   transform.size_divisible, transform.fixed_size)  # fmt: skip

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, Any]:
        if not torchvision._is_tracing() or self.training or self.fixed_size is not None or target is not None:
            return super().resize(image, target)
        size = eager_resized_size(torch._shape_as_tensor(image)[-2:], int(self.min_size[-1]), int(self.max_size))
        hw: Any = [size[0], size[1]]  # traced tensors: the graph resizes to a computed size
        resized = F.interpolate(image[None], size=hw, mode="bilinear", align_corners=False)
        return resized[0], target


def _branchless_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                            iou_threshold: float) -> torch.Tensor:  # fmt: skip
    """torchvision's coordinate-trick batched NMS without its ``if boxes.numel() == 0`` branch: OpenVINO
    (2026.4) gives that branch's empty constant one row, so an image without detections came out with
    one detection of label 0. Boxes are clipped to the image (coordinates >= 0), so
    max(boxes.max(), 0) is boxes.max(), and it is defined on no boxes at all."""
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return torchvision.ops.nms(boxes + offsets[:, None], scores, iou_threshold)


@contextmanager
def traceable_for_every_runtime(detector: nn.Module) -> Iterator[nn.Module]:
    """``detector`` with :class:`ExactResizeTransform` and :func:`_branchless_batched_nms` for the duration
    of a trace (eager results are unchanged)."""
    boxes_module = torchvision.ops.boxes
    original_nms = boxes_module.batched_nms
    boxes_module.batched_nms = _branchless_batched_nms  # roi_heads and rpn call box_ops.batched_nms
    try:
        with exact_resize(detector) as patched:
            yield patched
    finally:
        boxes_module.batched_nms = original_nms


@contextmanager
def exact_resize(detector: nn.Module) -> Iterator[nn.Module]:
    """``detector`` with :class:`ExactResizeTransform` for the duration (eager results are unchanged)."""
    original = detector.transform
    detector.transform = ExactResizeTransform.like(original)
    try:
        yield detector
    finally:
        detector.transform = original


class DetectorGraph(nn.Module):
    """The exported function: one (C, H, W) image -> (boxes, labels, scores)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.detector([image])[0]
        return found["boxes"], found["labels"], found["scores"]


def build_detector_onnx(detector: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> None:
    """Trace ``detector`` (eval mode) with the TorchScript exporter: dynamic height, width and detection count."""
    axes = {INPUT_NAME: {1: "height", 2: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    with warnings.catch_warnings():
        # Deliberate (DESIGN.md, "Export facts"); torchvision's detection code warns about traced
        # shape arithmetic by design. The parity check below is the real test.
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        warnings.filterwarnings("ignore", message=r"To copy construct from a tensor")  # torchvision's resize_boxes
        warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")  # torchvision's scripted helpers
        # torchvision indexes with nonzero()/topk() results, never negative indices
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator of advanced indexing")
        # A fresh wrapper is in training mode, and torch.onnx.export restores that mode on the whole
        # tree afterwards: export an eval-mode wrapper, so the detector stays in eval mode.
        with torch.no_grad(), traceable_for_every_runtime(detector.eval()):
            torch.onnx.export(DetectorGraph(detector).eval(), (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                              do_constant_folding=True)  # fmt: skip
    check_onnx_file(path)


# ---------------------------------------------------------------- the check
def check_sizes(min_size: int, max_size: int) -> list[tuple[int, int]]:
    """Two (H, W): landscape, shorter side under min_size (upscaled); portrait, over it (downscaled).
    Odd sizes, so rounding in the resize matters."""
    landscape = (3 * min_size // 4 + 1, min_size + min_size // 3 + 3)
    portrait = (min_size + min_size // 2 + 5, min_size + min_size // 8 + 1)
    return [landscape, portrait]


def parity_images(prepared: PreparedDetector) -> list[torch.Tensor]:
    pre = prepared.preprocessing()
    return [natural_images(1, size, prepared.channels, seed=10 + index)[0].float() / 255
            for index, size in enumerate(check_sizes(pre["min_size"], pre["max_size"]))]  # fmt: skip


def _floor(scores: torch.Tensor, score_thresh: float, max_detections: int) -> float:
    """Below this score a detection may exist on one side only: the threshold, or the lowest kept
    score when the detections_per_image cap was reached."""
    if len(scores) >= max_detections:
        return max(score_thresh, float(scores.min()))
    return score_thresh


def match_detections(expected: Detections, got: Detections, *, score_thresh: float, max_detections: int,
                     box_tolerance: float = BOX_TOLERANCE_PX["fp32"],
                     score_tolerance: float = SCORE_TOLERANCE) -> dict[str, Any]:  # fmt: skip
    """Pair PyTorch's detections (``expected``) with the artifact's (``got``), by order of score.

    Compared: the detections scoring at least ``floor + score_tolerance`` on either side, where floor
    is the score threshold (or, when an output hit the ``max_detections`` cap, its lowest score):
    detections at the edge may legitimately fall on one side only. Walking PyTorch's detections
    best first, each pairs with the artifact's detection of the same label whose score is within
    ``score_tolerance`` and whose box is closest (largest coordinate difference); that box must lie
    within ``box_tolerance`` pixels. Normally the partner is the one at the same rank; near-equal
    scores may swap ranks (counted as ``rank_swaps``). Every compared detection on both sides
    must be paired; anything left over is reported.
    """
    e_boxes, e_labels, e_scores = expected
    g_boxes, g_labels, g_scores = got
    floor = max(_floor(e_scores, score_thresh, max_detections), _floor(g_scores, score_thresh, max_detections))
    floor += score_tolerance
    e_order = torch.argsort(e_scores, descending=True, stable=True).tolist()
    g_order = torch.argsort(g_scores, descending=True, stable=True).tolist()
    g_rank = {index: rank for rank, index in enumerate(g_order)}
    used: set[int] = set()
    unmatched, worst_box, worst_score, swaps = [], 0.0, 0.0, 0
    compared = [i for i in e_order if float(e_scores[i]) >= floor]
    for rank, i in enumerate(compared):
        best, best_error = None, float("inf")
        for j in g_order:
            if (
                j in used
                or int(g_labels[j]) != int(e_labels[i])
                or abs(float(g_scores[j] - e_scores[i])) > score_tolerance
            ):
                continue
            error = float((g_boxes[j] - e_boxes[i]).abs().max())
            if error < best_error:
                best, best_error = j, error
        if best is None or best_error > box_tolerance:
            nearest = "none with that label and score" if best is None else f"nearest box off by {best_error:.2f} px"
            unmatched.append(f"#{rank + 1} label {int(e_labels[i])} score {float(e_scores[i]):.4f} box "
                             f"{[round(v, 1) for v in e_boxes[i].tolist()]} ({nearest})")  # fmt: skip
            continue
        used.add(best)
        swaps += int(g_rank[best] != rank)
        worst_box = max(worst_box, best_error)
        worst_score = max(worst_score, abs(float(g_scores[best] - e_scores[i])))
    extra = [f"label {int(g_labels[j])} score {float(g_scores[j]):.4f} box {[round(v, 1) for v in g_boxes[j].tolist()]}"
             for j in g_order if j not in used and float(g_scores[j]) >= floor]  # fmt: skip
    return {"reference_detections": len(e_scores), "artifact_detections": len(g_scores), "compared": len(compared),
            "compared_from_score": floor, "max_box_error_px": worst_box, "max_score_error": worst_score,
            "rank_swaps": swaps, "unmatched": unmatched, "extra": extra}  # fmt: skip


def check_detection_parity(reference: Any, run: Callable[[torch.Tensor], Detections], images: list[torch.Tensor],
                           box_tolerance: float, label: str, score_tolerance: float = SCORE_TOLERANCE,
                           gating: bool = True) -> dict[str, Any]:  # fmt: skip
    """Compare ``run`` with the eager ``reference`` detector image by image; raise ExportError on a
    mismatch (``gating=False``: count the unmatched detections instead)."""
    heads = reference.roi_heads
    score_thresh, max_detections = float(heads.score_thresh), int(heads.detections_per_img)
    rows = []
    for image in images:
        with torch.no_grad():
            found = reference.eval()([image])[0]
        expected = (found["boxes"], found["labels"], found["scores"])
        try:
            got = run(image)
        except Exception as error:  # any failure of the artifact on a valid image is an export failure
            raise ExportError(f"{label}: running the artifact on an image of shape {tuple(image.shape)} failed "
                              f"({type(error).__name__}: {error})") from None  # fmt: skip
        row = {"shape": list(image.shape), **match_detections(expected, got, score_thresh=score_thresh,
                                                               max_detections=max_detections,
                                                              box_tolerance=box_tolerance,
                                                               score_tolerance=score_tolerance)}  # fmt: skip
        rows.append(row)
        if gating and (row["unmatched"] or row["extra"]):
            problems = [f"PyTorch's {u} has no match in the artifact" for u in row["unmatched"][:3]]
            problems += [f"the artifact's {e} has no match in PyTorch" for e in row["extra"][:3]]
            raise ExportError(f"{label}: the artifact does not match PyTorch on an image of shape {tuple(image.shape)} "
                              f"({row['compared']} detections compared from score {row['compared_from_score']:.3f}, "
                              f"box tolerance {box_tolerance:g} px): " + "; ".join(problems))  # fmt: skip
    compared = sum(r["compared"] for r in rows)
    worst_box = max(r["max_box_error_px"] for r in rows)
    worst_score = max(r["max_score_error"] for r in rows)
    summary = "; ".join(f"image {r['shape']}: {r['compared']} of {r['reference_detections']} detections compared, "
                        f"max box error {r['max_box_error_px']:.2e} px, max score error {r['max_score_error']:.1e}, "
                        f"rank swaps {r['rank_swaps']}" for r in rows)  # fmt: skip
    print(f"{label} parity vs PyTorch (score_thresh {score_thresh:g}): {summary}")
    for row in rows:  # keep the record short: counts only
        row["unmatched"], row["extra"] = len(row["unmatched"]), len(row["extra"])
    return {"reference": "PyTorch eager, fp32, cpu", "inputs": "synthetic natural-looking images (deploy.samples)",
            "metric": "detections paired by score order (same label, score within "
                      f"{score_tolerance:g}); largest box coordinate difference in input pixels",
            "score_thresh": score_thresh, "compared": compared, "max_box_error_px": worst_box,
            "max_score_error": worst_score, "tolerance_px": box_tolerance if gating else None,
            "images": rows}  # fmt: skip


# ---------------------------------------------------------------- the sidecar
def detection_sidecar(prepared: PreparedDetector, artifact: Path, name: str, options: ExportOptions,
                      built: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    axes = {INPUT_NAME: {"1": "height", "2": "width"}, **{output: {"0": "detections"} for output in OUTPUT_NAMES}}
    tensorrt, openvino = built.get("tensorrt"), built.get("openvino")
    exporter = "torch.onnx.export(dynamo=False)"
    if tensorrt is not None:
        exporter += " + TensorRT OnnxParser/build_serialized_network (strongly typed)"
    if openvino is not None:
        exporter += " + OpenVINO convert_model"
    artifact_record: dict[str, Any] = {"file": name, "sha256": sha256_of(artifact), "size": artifact.stat().st_size}
    if options.format == "openvino":
        weights = artifact.with_suffix(".bin")
        artifact_record["weights"] = {
            "file": weights.name,
            "sha256": sha256_of(weights),
            "size": weights.stat().st_size,
        }
    device = {"tensorrt": "cuda", "openvino": "cpu"}.get(options.format, "any")
    return {
        "format": FORMAT, "version": VERSION, "task": "detection", "backend": options.format,
        "artifact": artifact_record,
        "model": {"arch": prepared.arch, "design": prepared.design, "weights": prepared.weights,
                  "weights_sha256": prepared.weights_sha256, "num_classes": prepared.num_classes,
                  "dataset": prepared.config.get("dataset"), "config": prepared.config.get("model", {})},
        "precision": options.precision, "device": device,
        "inputs": [{"name": INPUT_NAME, "shape": [prepared.channels, "height", "width"], "dtype": "float32"}],
        "outputs": [{"name": "boxes", "shape": ["detections", 4], "dtype": "float32"},
                    {"name": "labels", "shape": ["detections"], "dtype": "int64"},
                    {"name": "scores", "shape": ["detections"], "dtype": "float32"}],
        "dynamic_axes": axes,
        "preprocessing": prepared.preprocessing(),
        "postprocessing": prepared.postprocessing(),
        "class_names": prepared.class_names,
        "tools": {**tool_versions(), **({"tensorrt": tensorrt["version"]} if tensorrt else {})},
        "export": {"exporter": exporter, "opset": options.opset,
                   "resize": "deploy.exporters.detector.ExactResizeTransform "
                             "(eager PyTorch's float64 size, in integer arithmetic)",
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": options.command},
        "quantization": built.get("quantization"),
        "parity": None,
        "accuracy": None,
        "tensorrt": tensorrt,
        "openvino": openvino,
    }  # fmt: skip


# ---------------------------------------------------------------- the pipeline
PRECISIONS = {"onnx": ("fp32", "fp16", "int8"), "openvino": ("fp32", "fp16", "int8"),
              "tensorrt": ("fp32", "fp16", "int8")}  # fmt: skip
# Module scopes (the TorchScript exporter's node names) whose convolutions and linear layers take
# reduced precision; everything else in the graph stays fp32.
REDUCED_SCOPES = ("/detector/backbone/", "/detector/rpn/head/", "/detector/roi_heads/box_head/",
                  "/detector/roi_heads/box_predictor/")  # fmt: skip
INT8_FLOAT_SCOPES = (
    "/detector/rpn/head/cls_logits",
    "/detector/rpn/head/bbox_pred",
    "/detector/roi_heads/box_predictor/",
)


def _check_detector_request(output: Path, weights: str | Path | None, options: ExportOptions) -> None:
    if options.detector not in ("c4", "fpn"):
        raise ValueError(f"--detector must be c4 or fpn, got {options.detector!r}")
    if options.format not in PRECISIONS:
        raise ValueError(f"detectors export to ONNX, OpenVINO or TensorRT (--format onnx|openvino|tensorrt), not "
                         f"{options.format!r}; the eager PyTorch detector is the run directory itself: "
                         "deploy.load(RUN_DIR)")  # fmt: skip
    if options.precision not in PRECISIONS[options.format]:
        raise ValueError(f"detector {options.format} exports support precision {list(PRECISIONS[options.format])}, "
                         f"not {options.precision!r}")  # fmt: skip
    check_output_suffix(output, options.format, "detector ")
    if options.format == "tensorrt":
        from ..tensorrt import require_tensorrt

        require_tensorrt()  # fail before any work where TensorRT or CUDA is missing
    if weights is None:
        raise ValueError("a detector export needs --weights RUN_DIR, a detection.train run directory "
                         "(config.json + final.safetensors)")  # fmt: skip
    if options.precision != "fp32" and options.eval_dataset is None:
        raise ValueError(f"a {options.precision} detector is checked by the mAP it keeps against fp32: give "
                         "--eval-dataset (a detection test set, e.g. fashion-det) with --data-root")  # fmt: skip
    if options.precision == "int8" and options.calibration_dir is None and options.calibration_dataset is None:
        raise ValueError("an int8 detector needs calibration images: --calibration-dir DIR or --calibration-dataset "
                         "NAME (a detection training set under --data-root, e.g. fashion-det)")  # fmt: skip
    if options.format == "openvino" and options.precision == "int8" and options.openvino_int8 != "qdq":
        raise ValueError("detectors take OpenVINO int8 from the checked Q/DQ graph (--openvino-int8 qdq)")


def _open(path: Path, data: dict[str, Any], label: str) -> DetectorBackend:
    try:
        if data["backend"] == "tensorrt":
            from ..tensorrt.detection import TensorRTDetectionBackend

            return TensorRTDetectionBackend(path, data)
        if data["backend"] == "openvino":
            return OpenVINODetectionBackend(path, INPUT_NAME, OUTPUT_NAMES, data["openvino"]["inference_precision"])
        return OnnxDetectionBackend(path, INPUT_NAME, OUTPUT_NAMES, ["CPUExecutionProvider"])
    except ArtifactLoadError as error:
        raise ExportError(f"{label}: the new artifact does not load: {error}") from error


def reduce_precision(graph: Path, target: Path, options: ExportOptions, images: Any) -> dict[str, Any]:
    """The detector graph with the trunk and heads in fp16 or INT8 (Q/DQ, calibrated on ``images``), the rest fp32."""
    from .precision import WEIGHTED_OPS, convert_fp16_scoped, quantize_int8, scoped

    # int8 leaves the layers that give scores and box offsets in float, as the classifier's last layer
    in_scope, predictor = scoped(REDUCED_SCOPES), scoped(INT8_FLOAT_SCOPES)
    if options.precision == "fp16":
        return convert_fp16_scoped(graph, target, in_scope)
    record = quantize_int8(graph, target, images.feed(INPUT_NAME), method=options.calibration_method,
                           scheme=options.int8_scheme, nodes=lambda node: in_scope(node) and not predictor(node),
                           reduce_range=options.int8_reduce_range, op_types=WEIGHTED_OPS)  # fmt: skip
    record["calibration"] = {**images.describe(), "method": options.calibration_method}
    return record


def _build(model: nn.Module, prepared: PreparedDetector, example: torch.Tensor, staged: Path,
           options: ExportOptions, calibration: Any = None) -> dict[str, Any]:  # fmt: skip
    """Write the artifact at ``staged``; return the sidecar's ``tensorrt`` / ``openvino`` / ``quantization`` records."""
    built: dict[str, Any] = {}
    if options.format == "tensorrt":
        graph = staged.with_suffix(".fp32.onnx")
        profiles = build_tensorrt_onnx(model, prepared, example, graph, options)
    else:
        graph = staged.with_suffix(".fp32.onnx")
        build_detector_onnx(model, example, graph, options.opset)
    if options.precision != "fp32":
        reduced = staged.with_suffix(f".{options.precision}.onnx")
        built["quantization"] = reduce_precision(graph, reduced, options, calibration)
        graph = reduced
    if options.format == "onnx":
        os.replace(graph, staged)
    elif options.format == "openvino":
        from .openvino_ir import inference_hint, onnx_to_ir

        built["openvino"] = {**onnx_to_ir(graph, staged, compress_to_fp16=options.precision == "fp16"),
                             "inference_precision": inference_hint(options.precision),
                             "int8_from": "qdq" if options.precision == "int8" else None}  # fmt: skip
    else:
        from ..tensorrt.build import BuildOptions, build_engine

        if options.precision == "int8" and options.int8_scheme != "symmetric":
            raise ExportError("TensorRT needs symmetric INT8 (zero points 0): use --int8-scheme symmetric")
        built["tensorrt"] = build_engine(graph, staged, BuildOptions(profiles, options.workspace_gib,
                                                                     options.timing_cache,
                                                                     graph_precision=options.precision))  # fmt: skip
    return built


def build_tensorrt_onnx(model: nn.Module, prepared: PreparedDetector, example: torch.Tensor, path: Path,
                        options: ExportOptions) -> list[dict[str, dict[str, list[int]]]]:  # fmt: skip
    """The detector graph for TensorRT (RPN top-k with a constant K, :mod:`deploy.tensorrt.static_topk`) and
    the optimisation profile of image sizes for which that graph equals PyTorch."""
    from ..tensorrt.detection import detector_profiles
    from ..tensorrt.static_topk import smallest_safe_side, static_rpn_topk

    try:
        min_side = smallest_safe_side(model, prepared.channels, options.max_image_side)
    except ValueError as error:
        raise ExportError(f"{prepared.arch} {prepared.design} detector: {error}") from None
    pre = prepared.preprocessing()
    with static_rpn_topk():
        build_detector_onnx(model, example, path, options.opset)
    return detector_profiles(INPUT_NAME, prepared.channels, pre["min_size"], pre["max_size"], options.max_image_side,
                             min_side)  # fmt: skip


def _low_threshold_check(prepared: PreparedDetector, example: torch.Tensor, images: list[torch.Tensor], work: Path,
                         options: ExportOptions, tolerances: tuple[float, float], label: str,
                         calibration: Any = None) -> dict[str, Any]:  # fmt: skip
    """The same graph with score_thresh 0 (the only difference: one constant), so detections exist."""
    probe: Any = copy.deepcopy(prepared.model)
    probe.roi_heads.score_thresh = 0.0
    from .common import SUFFIXES

    path = work / "score_thresh_0" / f"check{SUFFIXES[options.format][0]}"
    path.parent.mkdir()
    built = _build(probe, prepared, example, path, options, calibration)
    backend = _open(path, {"backend": options.format, **built, "inputs": [{"name": INPUT_NAME}],
                           "postprocessing": dict(zip(OUTPUT_NAMES, OUTPUT_NAMES))}, label)  # fmt: skip
    return check_detection_parity(probe, backend, images, tolerances[0], f"{label} (check graph, score_thresh 0)",
                                  tolerances[1], gating=options.precision == "fp32")  # fmt: skip


def export_detector(arch: str, weights: str | Path | None, output: str | Path, options: ExportOptions) -> ExportResult:
    """Export the detector of run ``weights`` to ``output`` (ONNX, OpenVINO IR, or a TensorRT engine built
    from the ONNX graph), check it against PyTorch, then write it and its sidecar."""
    output = Path(output)
    _check_detector_request(output, weights, options)
    assert weights is not None and options.detector is not None
    box_tolerance = options.tolerance if options.tolerance is not None else BOX_TOLERANCE_PX[options.precision]
    tolerances = (box_tolerance, SCORE_TOLERANCES[options.precision])
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    prepared = prepare_detector(arch, weights, options.detector, score_thresh=options.score_thresh,
                                detections_per_image=options.detections_per_image)  # fmt: skip
    pre = prepared.preprocessing()
    example_size = (pre["min_size"] * 7 // 8 + 3, pre["min_size"] * 6 // 5 + 1)
    example = natural_images(1, example_size, prepared.channels, seed=9)[0].float() / 255
    label = f"{options.format} {options.precision} {arch} {prepared.design} detector"
    output.parent.mkdir(parents=True, exist_ok=True)
    if options.format == "tensorrt":
        options.timing_cache = options.timing_cache or output.with_name(output.name + ".timing.cache")
    calibration = None
    if options.precision == "int8":  # bad calibration data fails before any export work
        from .detection_accuracy import calibration_images

        calibration = calibration_images(options, prepared.channels)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as work_dir:
        work = Path(work_dir)
        staged = work / output.name
        with exporter_failures(label, options.format, ImageDataError):
            built = _build(prepared.model, prepared, example, staged, options, calibration)
        seconds["export"] = time.perf_counter() - start
        data = detection_sidecar(prepared, staged, output.name, options, built)
        validate(data, sidecar_path(output))
        backend = _open(staged, data, label)
        images = parity_images(prepared)
        gating = options.precision == "fp32"  # reduced precision: the mAP on real images decides
        parity = check_detection_parity(prepared.model, backend, images, tolerances[0], label, tolerances[1], gating)
        if parity["compared"] < MIN_COMPARED:
            print(f"{label}: only {parity['compared']} detection(s) above score_thresh {parity['score_thresh']:g} "
                  "on the check images; checking the same graph at score_thresh 0 as well")  # fmt: skip
            parity["score_thresh_0"] = _low_threshold_check(prepared, example, images, work, options, tolerances, label,
                                                            calibration)  # fmt: skip
        data["parity"] = parity
        if options.eval_dataset is not None:
            from .detection_accuracy import compare_on_test_set

            data["accuracy"] = compare_on_test_set(prepared, backend, options, label)
        del backend  # release the file
        seconds["check"] = time.perf_counter() - start - seconds["export"]
        return publish(staged, output, data, seconds, start, data["accuracy"])
