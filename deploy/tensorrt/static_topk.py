"""A detector graph TensorRT's ONNX parser can take: the RPN's top-k with a constant K.

torchvision's RPN keeps the ``pre_nms_top_n`` best anchors of each feature level, and traces
``K = min(pre_nms_top_n, anchors on the level)`` as a tensor, because the anchor count depends on
the image size. TensorRT's ONNX parser takes TopK's K only as an initializer (DESIGN.md, "Export
facts"). Where every image the engine accepts gives each level at least ``pre_nms_top_n`` anchors,
``min`` always picks ``pre_nms_top_n`` and the constant is exact: :func:`static_rpn_topk` traces it
so. :func:`smallest_safe_side` finds the smallest image side for the engine's optimisation profile
at which that holds, so the engine refuses (by its profile) the thin images that would break it.

Which images give the fewest anchors: with the resize rule (shorter side to min_size, longer at
most max_size) the resized area is smallest at the extreme aspect ratio (short x longest side) or
for a square; :func:`fewest_anchors` measures both orientations and the square, after the
transform's resize and padding, through the real backbone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torchvision.models.detection import _utils as detection_utils

CANDIDATE_SIDES = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1024)


@contextmanager
def static_rpn_topk() -> Iterator[None]:
    """While tracing inside: the RPN's per-level K is the constant ``pre_nms_top_n``.

    Exact only where every level has at least that many anchors (see :func:`smallest_safe_side`)."""
    original = detection_utils._topk_min

    def constant_k(input: torch.Tensor, orig_kval: int, axis: int) -> int:
        if not torch.jit.is_tracing():
            return original(input, orig_kval, axis)
        return orig_kval

    detection_utils._topk_min = constant_k
    try:
        yield
    finally:
        detection_utils._topk_min = original


@torch.no_grad()
def fewest_anchors(detector: Any, channels: int, shapes: list[tuple[int, int]]) -> tuple[int, tuple[int, int]]:
    """(fewest anchors on any feature level, the (H, W) input that gives it) over ``shapes``."""
    per_location = detector.rpn.anchor_generator.num_anchors_per_location()
    worst: tuple[int, tuple[int, int]] | None = None
    for shape in shapes:
        images, _ = detector.transform([torch.zeros(channels, *shape)])
        features = detector.backbone(images.tensors)
        levels = [features] if isinstance(features, torch.Tensor) else list(features.values())
        count = min(f.shape[-2] * f.shape[-1] * a for f, a in zip(levels, per_location))
        if worst is None or count < worst[0]:
            worst = (count, shape)
    assert worst is not None, "no shapes given"
    return worst


def smallest_safe_side(detector: Any, channels: int, max_side: int) -> int:
    """The smallest side (from CANDIDATE_SIDES) such that every image with sides in [side, max_side]
    gives each RPN level at least ``pre_nms_top_n`` anchors; ValueError if none up to max_side does."""
    k = int(detector.rpn.pre_nms_top_n())
    tried: tuple[int, tuple[int, int]] | None = None
    for side in (s for s in CANDIDATE_SIDES if s <= max_side):
        tried = fewest_anchors(detector.eval(), channels, [(side, max_side), (max_side, side), (side, side)])
        if tried[0] >= k:
            return side
    detail = f"; a {tried[1][0]}x{tried[1][1]} image gives a level only {tried[0]} anchors" if tried else ""
    raise ValueError(f"no optimisation profile with sides from {CANDIDATE_SIDES[0]} to --max-image-side {max_side} px "
                     f"gives every RPN level at least pre_nms_top_n = {k} anchors{detail}. TensorRT needs a constant "
                     "top-k: raise --max-image-side or lower the run's rpn_pre_nms_top_n_test")  # fmt: skip
