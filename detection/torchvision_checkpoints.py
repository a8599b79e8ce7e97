"""torchvision's Faster R-CNN checkpoints (``fasterrcnn_resnet50_fpn`` v1 and ``_v2``), used unchanged.

Such a state dict is recognised by its keys and shapes, never by its file name: the ResNet in
``backbone.body.*`` (its block counts name the zoo model), the pyramid in ``backbone.fpn.*`` (v2: a
BatchNorm after each conv), the RPN convs in ``rpn.head.conv.*`` (v2: two) and the box head
(v1: ``fc6``/``fc7``; v2: four conv + BN layers and one FC). The detector is then built by
:func:`detection.models.build_faster_rcnn` with those parts and torchvision's transform sizes
(shorter side 800, longer at most 1333) and default thresholds, and the state dict must fit it
exactly. Anything else — a classifier, a Mask or Keypoint R-CNN, a file that is not a state dict —
gets one ValueError naming the file and what was found.

Labels. A 91-output torchvision detector is a COCO one: its label ``l`` IS the COCO category id
(0 is the background, the 10 ids COCO does not use are "N/A"), not this project's contiguous
labels 1..80. The config of such a detector therefore carries ``category_ids`` (label ``l`` predicts
category ``category_ids[l - 1]``) next to ``class_names``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.weights import check_state_dict, describe_state_dict, load_state_dict_file

from .models import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["COCO_OUTPUTS", "TORCHVISION_FPN_PARTS", "TORCHVISION_SIZES", "NotATorchvisionDetector",
           "TorchvisionDetector", "coco_category_names", "detector_config", "identify_checkpoint",
           "identify_state_dict", "load_into_new_detector", "load_torchvision_detector"]  # fmt: skip

# The builder keywords that make detection.models' FPN detector torchvision's v1 or v2.
TORCHVISION_FPN_PARTS: dict[str, dict[str, Any]] = {
    "v1": {"rpn_conv_depth": 1, "fpn_batchnorm": False, "box_head": "mlp"},
    "v2": {"rpn_conv_depth": 2, "fpn_batchnorm": True, "box_head": "conv_fc"},
}
TORCHVISION_SIZES = {"min_size": 800, "max_size": 1333}  # torchvision's GeneralizedRCNNTransform for these
TORCHVISION_ANCHOR_SIZES = [32, 64, 128, 256, 512]
COCO_OUTPUTS = 91  # the background + COCO category ids 1..90
CLASS_LAYERS = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.")
# (block kind, blocks per stage) -> the zoo model with torchvision's ResNet layout
RESNET_LAYOUTS: dict[tuple[str, tuple[int, ...]], str] = {
    ("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152"}  # fmt: skip


class NotATorchvisionDetector(ValueError):
    """A readable state dict that is not one of torchvision's ResNet-FPN Faster R-CNNs (the message says what it is)."""


@dataclass(frozen=True)
class TorchvisionDetector:
    """What a torchvision Faster R-CNN checkpoint is: ``version`` "v1" | "v2", the zoo ``backbone``, and
    ``num_classes`` outputs including the background (91 for COCO)."""

    source: str
    version: str
    backbone: str
    num_classes: int

    @property
    def name(self) -> str:
        """torchvision's builder name, e.g. ``fasterrcnn_resnet50_fpn_v2``."""
        return f"fasterrcnn_{self.backbone}_fpn" + ("_v2" if self.version == "v2" else "")

    @property
    def parts(self) -> dict[str, Any]:
        return dict(TORCHVISION_FPN_PARTS[self.version])

    @property
    def is_coco(self) -> bool:
        return self.num_classes == COCO_OUTPUTS


def coco_category_names() -> list[str]:
    """torchvision's COCO label names, index = COCO category id (0 "__background__", unused ids "N/A")."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def _has(keys: set[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def _what_it_is(state: Mapping[str, torch.Tensor]) -> str:
    """A short description of a state dict that is not a torchvision Faster R-CNN."""
    keys = set(state)
    if "fc.weight" in keys and _has(keys, "layer1."):
        return f"a classifier state dict ({describe_state_dict(state)})"
    if _has(keys, "roi_heads.mask_"):
        return "a Mask R-CNN checkpoint (roi_heads.mask_* keys); only Faster R-CNN box detectors are supported"
    if _has(keys, "roi_heads.keypoint_"):
        return "a Keypoint R-CNN checkpoint (roi_heads.keypoint_* keys); only Faster R-CNN box detectors are supported"
    if _has(keys, "roi_heads.box_predictor.") and not _has(keys, "backbone.fpn."):
        body = sorted({key.split(".")[2] for key in keys if key.startswith("backbone.body.")})[:4]
        return f"a Faster R-CNN without a ResNet-FPN backbone (backbone.body: {', '.join(body) or 'none'})"
    first = ", ".join(sorted(keys)[:3])
    return f"{len(keys)} tensors, none of a Faster R-CNN's roi_heads.box_predictor.* (first keys: {first})"


def _resnet_arch(state: Mapping[str, torch.Tensor], source: str) -> str:
    """The zoo ResNet whose layout the checkpoint's ``backbone.body`` has."""
    body = {
        key.removeprefix("backbone.body."): value for key, value in state.items() if key.startswith("backbone.body.")
    }
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for key in body if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        blocks.append(max(indices) + 1 if indices else 0)
    kind = "bottleneck" if any(".conv3." in key for key in body) else "basic"
    arch = RESNET_LAYOUTS.get((kind, tuple(blocks)))
    if arch is None:
        raise NotATorchvisionDetector(f"{source}: a Faster R-CNN whose backbone.body is not a torchvision ResNet "
                                      f"layout ({describe_state_dict(body)})")  # fmt: skip
    return arch


def identify_state_dict(state: Mapping[str, torch.Tensor], source: str) -> TorchvisionDetector:
    """Which torchvision Faster R-CNN ``state`` is (``source`` names it in errors); raises
    :class:`NotATorchvisionDetector` for anything else, saying what it is."""
    keys = set(state)
    fpn_detector = (_has(keys, "backbone.body.") and _has(keys, "backbone.fpn.") and _has(keys, "rpn.head.")
                    and "roi_heads.box_predictor.cls_score.weight" in keys)  # fmt: skip
    if not fpn_detector or _has(keys, "roi_heads.mask_") or _has(keys, "roi_heads.keypoint_"):
        raise NotATorchvisionDetector(
            f"{source}: not a torchvision Faster R-CNN checkpoint: found {_what_it_is(state)}"
        )
    parts = {"rpn_conv_depth": sum(1 for key in keys if re.fullmatch(r"rpn\.head\.conv\.\d+\.0\.weight", key)),
             "fpn_batchnorm": "backbone.fpn.inner_blocks.0.1.weight" in keys,
             "box_head": "mlp" if "roi_heads.box_head.fc6.weight" in keys else "conv_fc"}  # fmt: skip
    versions = [version for version, expected in TORCHVISION_FPN_PARTS.items() if expected == parts]
    if not versions:
        raise NotATorchvisionDetector(f"{source}: a Faster R-CNN with parts {parts}, neither torchvision's v1 "
                                      f"{TORCHVISION_FPN_PARTS['v1']} "
                                      f"nor v2 {TORCHVISION_FPN_PARTS['v2']}")  # fmt: skip
    scores, deltas = (
        state["roi_heads.box_predictor.cls_score.weight"],
        state.get("roi_heads.box_predictor.bbox_pred.weight"),
    )
    if scores.dim() != 2 or deltas is None or deltas.shape[0] != 4 * scores.shape[0]:
        found = "missing" if deltas is None else tuple(deltas.shape)
        raise NotATorchvisionDetector(f"{source}: roi_heads.box_predictor.cls_score.weight has shape "
                                      f"{tuple(scores.shape)} "
                                      f"but bbox_pred.weight {found}: expected 4 box deltas per class")  # fmt: skip
    return TorchvisionDetector(source, versions[0], _resnet_arch(state, source), int(scores.shape[0]))


def identify_checkpoint(path: str | Path) -> TorchvisionDetector:
    """Which torchvision Faster R-CNN the file at ``path`` holds. FileNotFoundError if it is missing;
    ValueError if it is not a readable state dict; :class:`NotATorchvisionDetector` for another kind."""
    return identify_state_dict(load_state_dict_file(path), str(path))


def detector_config(detector: TorchvisionDetector) -> dict[str, Any]:
    """The config a ``detection.train`` run would record for this detector (``build_detector`` rebuilds it).

    COCO detectors (91 outputs) get COCO's names and ``category_ids`` (label l is category id l); others
    get placeholder names ``label_1``, ... and no ``dataset``, as their classes are not recorded."""
    labels = range(1, detector.num_classes)
    coco = coco_category_names() if detector.is_coco else None
    config: dict[str, Any] = {
        "backbone": detector.backbone, "backbone_weights": None, "design": "fpn", "freeze_at": 2,
        "dataset": "coco" if coco else None,
        "model": {**TORCHVISION_SIZES, "anchor_sizes": list(TORCHVISION_ANCHOR_SIZES), **detector.parts},
        "class_names": [coco[label] for label in labels] if coco else [f"label_{label}" for label in labels],
        "channels": 3, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
        "torchvision": {"checkpoint": detector.name, "version": detector.version, "num_classes": detector.num_classes,
                        "file": detector.source},
    }  # fmt: skip
    if coco:
        config["category_ids"] = list(labels)
    return config


def _without_unused_batch_counters(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``num_batches_tracked`` of BatchNorms that are frozen here (torchvision's v2 and random-init
    backbones use BatchNorm2d; FrozenBatchNorm2d has no counter and ignores it when loading)."""
    expected = model.state_dict()
    return {key: value for key, value in state.items()
            if key in expected or not key.endswith(".num_batches_tracked")}  # fmt: skip


def load_torchvision_detector(path: str | Path, *, backbone: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build and load the torchvision Faster R-CNN in ``path``: (model in eval mode, config).

    The config is a ``detection.train`` run's config.json (backbone, design "fpn", model options with
    the v1/v2 parts and 800/1333 sizes, class_names, channels, image_mean/std) plus ``torchvision``
    (checkpoint name, version, num_classes, file) and, for COCO detectors, ``category_ids``.
    ``backbone``: the zoo model the caller expects, checked before anything is built. Errors:
    FileNotFoundError, ValueError naming the file (unreadable, another kind, another backbone, or a
    state dict that does not fit the detector it describes)."""
    from .train import build_detector  # the CLI module's config adapter; imported here to avoid a cycle

    state = load_state_dict_file(path)
    detector = identify_state_dict(state, str(path))
    if backbone is not None and detector.backbone != backbone:
        raise ValueError(f"{path}: a torchvision {detector.name} checkpoint, whose backbone is {detector.backbone}, "
                         f"not {backbone}")  # fmt: skip
    config = detector_config(detector)
    model = build_detector(config, detector.num_classes - 1, load_backbone_weights=False)
    state = _without_unused_batch_counters(model, state)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.eval(), config


def _class_rows(tensor: torch.Tensor, labels: Sequence[int], per_label: int) -> torch.Tensor:
    index = torch.tensor([label * per_label + k for label in labels for k in range(per_label)])
    return tensor.index_select(0, index)


def load_into_new_detector(model: nn.Module, state: Mapping[str, torch.Tensor], detector: TorchvisionDetector,
                           category_ids: Sequence[int] | None = None) -> list[str]:  # fmt: skip
    """Start ``model`` (built with ``detector.parts``) from a torchvision checkpoint's ``state``, for fine-tuning.

    Every tensor loads except the class-specific predictor layers when the class count differs: those
    keep ``model``'s fresh initialisation. With ``category_ids`` (the COCO category id of each of
    ``model``'s labels 1..C) and a COCO checkpoint, the predictor keeps the checkpoint's rows of those
    categories instead. Returns the names of the tensors left re-initialised."""
    source = detector.source
    state = _without_unused_batch_counters(model, state)
    expected = model.state_dict()
    predictor = {key for key in expected if key.startswith(CLASS_LAYERS)}
    if category_ids is not None and detector.is_coco:
        labels = [0, *category_ids]
        state = {
            **state,
            **{key: _class_rows(state[key], labels, 4 if ".bbox_pred." in key else 1) for key in predictor},
        }
    refit = sorted(key for key in predictor if state[key].shape != expected[key].shape)
    fitting = {key: value for key, value in state.items() if key not in refit}
    check_state_dict(
        model, {**fitting, **{key: expected[key] for key in refit}}, source
    )  # all but the class layers fit
    model.load_state_dict(fitting, strict=False)
    return refit
