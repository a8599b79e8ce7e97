"""Faster R-CNN on any zoo backbone, assembled from torchvision's detection parts.

* ``design="c4"`` — the paper's detector (appendix, Tables 7-8): every stage but the last is the
  shared trunk (conv1 … conv4_x, stride 16 on ImageNet nets), RoIAlign pools 14×14 regions from it,
  and the last stage (conv5_x, which halves them to 7×7) followed by global average pooling is the
  per-region head, then the class and box sibling layers.
* ``design="fpn"`` — a feature pyramid over all stages (torchvision's BackboneWithFPN), RoIAlign
  7×7 over the pyramid levels and the two-layer MLP head (torchvision's ``fasterrcnn_resnet50_fpn``).
  ``fpn_batchnorm=True``, ``rpn_conv_depth=2`` and ``box_head="conv_fc"`` give the parts of
  ``fasterrcnn_resnet50_fpn_v2`` (BN in the pyramid, two RPN convs, four conv + BN layers and one
  FC as the box head), so both versions' checkpoints load unchanged.

Channel counts and strides come from the backbone's ``feature_info``, never from constants. BN is
frozen (``FrozenBatchNorm2d``: affine with the pre-trained statistics, as the paper fixes them), and
``freeze_at`` freezes the stem and the first stages (detectron2's convention: 0 nothing, 1 the stem,
k the stem and the first k-1 stages; default 2: conv1 and conv2_x).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, RPNHead, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from backbones import ResNet, create_model
from backbones.weights import read_zoo

DESIGNS = ("c4", "fpn")
# Box heads per design, the default first: "mlp" is torchvision v1's TwoMLPHead, "conv_fc" v2's
# FastRCNNConvFCHead; the C4 head is the backbone's last stage.
BOX_HEADS = {"c4": ("last_stage",), "fpn": ("mlp", "conv_fc")}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STEM_MODULES = ("conv1", "bn1")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d (recursively) by a FrozenBatchNorm2d holding its statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replacement = freeze_batchnorm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def freeze_stages(backbone: ResNet, freeze_at: int) -> None:
    """Stop gradients to the stem (freeze_at >= 1) and to the first freeze_at-1 stages."""
    stages = backbone.stage_names
    if not 0 <= freeze_at <= len(stages):
        raise ValueError(
            f"freeze_at must lie in [0, {len(stages)}] for {backbone.name} (stages {stages}), got {freeze_at}"
        )
    frozen = ([*STEM_MODULES] if freeze_at >= 1 else []) + stages[: max(0, freeze_at - 1)]
    for name in frozen:
        for parameter in getattr(backbone, name).parameters():
            parameter.requires_grad_(False)


class LastStageHead(nn.Module):
    """The C4 box head: the backbone's last stage on pooled regions, then global average pooling."""

    def __init__(self, stage: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.stage = stage
        self.out_channels = out_channels

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.stage(regions), 1), 1)


@dataclass(frozen=True)
class BackboneInfo:
    arch: str
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str | None


def backbone_normalisation(weights: str | Path | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone was trained with: its zoo record's, else ImageNet's for 3 channels,
    else neutral statistics (e.g. a grayscale net without a record)."""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    record = read_zoo().get(str(weights)) if weights is not None else None
    if record is not None:
        mean, std = tuple(record.preprocessing["mean"]), tuple(record.preprocessing["std"])
    if len(mean) != channels:
        mean, std = (0.5,) * channels, (0.25,) * channels
    return mean, std


def load_backbone(arch: str, weights: str | Path | None = None, **overrides: Any) -> tuple[ResNet, BackboneInfo]:
    """A zoo classifier (weights: zoo id, .safetensors or torchvision/timm .pth) and its normalisation."""
    model = create_model(arch, weights=weights, **overrides)
    if not isinstance(model, ResNet):
        raise TypeError(f"{arch} is not a ResNet-family model")
    mean, std = backbone_normalisation(weights, model.in_chans)
    return model, BackboneInfo(arch, model.in_chans, mean, std, str(weights) if weights is not None else None)


def build_faster_rcnn(
    arch: str,
    num_classes: int,
    *,
    design: str = "c4",
    backbone_weights: str | Path | None = None,
    freeze_at: int = 2,
    min_size: int = 600,
    max_size: int = 1000,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    fpn_channels: int = 256,
    in_chans: int | None = None,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
    rpn_conv_depth: int = 1,
    fpn_batchnorm: bool = False,
    box_head: str | None = None,
    **faster_rcnn_options: Any,
) -> FasterRCNN:
    """Faster R-CNN for ``num_classes`` object classes (background is added) on zoo model ``arch``.

    ``in_chans`` and ``normalisation`` (mean, std) rebuild a trained detector without its backbone
    weights (they come with the detector's own): the channels and statistics it was trained with.
    ``rpn_conv_depth``: 3×3 convs before the RPN's sibling layers; ``fpn_batchnorm``: BatchNorm after
    each pyramid conv; ``box_head``: one of ``BOX_HEADS[design]`` (default its first)."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    box_head = box_head or BOX_HEADS[design][0]
    if box_head not in BOX_HEADS[design]:
        raise ValueError(f"box_head must be one of {BOX_HEADS[design]} for design {design!r}, got {box_head!r}")
    if fpn_batchnorm and design != "fpn":
        raise ValueError(f"fpn_batchnorm applies to design 'fpn' only, got design {design!r}")
    if rpn_conv_depth < 1:
        raise ValueError(f"rpn_conv_depth must be positive, got {rpn_conv_depth}")
    backbone, info = load_backbone(arch, backbone_weights, **({"in_chans": in_chans} if in_chans else {}))
    if normalisation is not None:
        info = dataclasses.replace(info, mean=tuple(normalisation[0]), std=tuple(normalisation[1]))
    freeze_stages(backbone, freeze_at)
    freeze_batchnorm(backbone)
    specs = backbone.feature_info
    ratios = tuple(float(r) for r in aspect_ratios)
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(info.mean), image_std=list(info.std))
    if design == "c4":
        trunk_stage, head_stage = specs[-2], specs[-1]
        trunk = IntermediateLayerGetter(backbone, return_layers={trunk_stage.name: "0"})
        trunk.out_channels = trunk_stage.channels
        anchors = AnchorGenerator((tuple(anchor_sizes),), (ratios,))
        model = FasterRCNN(
            trunk,
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(trunk_stage.channels, anchors.num_anchors_per_location()[0], conv_depth=rpn_conv_depth),
            box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0),
            box_head=LastStageHead(getattr(backbone, head_stage.name), head_stage.channels),
            box_predictor=FastRCNNPredictor(head_stage.channels, num_classes + 1),
            **common, **faster_rcnn_options,
        )  # fmt: skip
    else:
        return_layers = {spec.name: str(index) for index, spec in enumerate(specs)}
        body = BackboneWithFPN(backbone, return_layers, [s.channels for s in specs], fpn_channels,
                               extra_blocks=LastLevelMaxPool(),
                               norm_layer=nn.BatchNorm2d if fpn_batchnorm else None)  # fmt: skip
        levels = len(specs) + 1  # the stages plus the max-pooled extra level
        sizes = tuple((size,) for size in _spread(anchor_sizes, levels))
        anchors = AnchorGenerator(sizes, (ratios,) * levels)
        model = FasterRCNN(
            body,
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0], conv_depth=rpn_conv_depth),
            box_roi_pool=MultiScaleRoIAlign([str(i) for i in range(len(specs))], output_size=7, sampling_ratio=2),
            box_head=_fpn_box_head(box_head, fpn_channels, 1024),
            box_predictor=FastRCNNPredictor(1024, num_classes + 1),
            **common, **faster_rcnn_options,
        )  # fmt: skip
    model.backbone_info = info  # type: ignore[attr-defined]
    model.design = design  # type: ignore[attr-defined]
    return model


def _fpn_box_head(kind: str, channels: int, representation: int) -> nn.Module:
    """torchvision's FPN box heads on 7×7 pooled regions: v1's two FC layers, or v2's four 3×3 conv + BN
    layers of 256 channels and one FC layer."""
    if kind == "conv_fc":
        return FastRCNNConvFCHead((channels, 7, 7), [256, 256, 256, 256], [representation], norm_layer=nn.BatchNorm2d)
    return TwoMLPHead(channels * 7 * 7, representation)


def _spread(sizes: Sequence[int], levels: int) -> list[int]:
    """One anchor size per pyramid level: the given sizes, extended by doubling if too few."""
    sizes = list(sizes)[:levels]
    while len(sizes) < levels:
        sizes.append(sizes[-1] * 2)
    return sizes
