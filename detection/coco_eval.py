"""COCO box AP through pycocotools' ``COCOeval(iouType="bbox")`` (the metric is not reimplemented).

:func:`evaluate_coco` returns the project's eval JSON contract, in percent:
``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` = ``COCOeval.stats[0:6] * 100``. pycocotools reports
-1 for a number it cannot define (e.g. no ground-truth box in an area range); that value is passed
through unchanged as -1.0 rather than scaled.

What the wrapper adds around pycocotools:

* results are validated before ``loadRes`` (which otherwise fails with a bare assertion or a
  KeyError): every entry needs ``image_id``, ``category_id``, ``bbox`` (4 finite numbers, w, h >= 0)
  and a finite ``score``; image and category ids must exist in the ground truth. Errors name the
  file (or ``<detections>``), the entry index and the field;
* an empty result list (``loadRes`` crashes on it) gives zeros and a warning;
* the caller's detections are not modified (``loadRes`` adds ``area``/``id``/``segmentation`` keys);
* pycocotools' progress printing is silenced with ``quiet=True``.

Category ids are the annotation file's own (COCO's are 1..90 with gaps), boxes are [x, y, w, h].
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backbones.fileio import atomic_write_json

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = ["COCO_METRICS", "evaluate_coco", "load_coco_gt", "load_coco_results", "validate_coco_results",
           "write_coco_results"]  # fmt: skip

COCO_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_REQUIRED = ("image_id", "category_id", "bbox", "score")
_INLINE_SOURCE = "<detections>"


@contextlib.contextmanager
def _maybe_quiet(quiet: bool) -> Iterator[None]:
    if quiet:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    else:
        yield


def load_coco_gt(gt: COCO | str | os.PathLike, *, quiet: bool = True) -> COCO:
    """A pycocotools COCO object, or an instances JSON path loaded into one."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise FileNotFoundError(f"COCO ground-truth file not found: {path}")
    with _maybe_quiet(quiet):
        return COCO(str(path))


def _python_scalar(value: Any) -> Any:
    """numpy / torch scalars to plain Python (so ids hash and JSON-serialise like ints)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _entry_error(source: str, index: int, field: str | None, problem: str) -> ValueError:
    where = f"{source}: entry {index}" + (f", field {field!r}" if field else "")
    return ValueError(f"{where}: {problem}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_entry(entry: Any, index: int, source: str) -> dict[str, Any]:
    """One result entry checked and copied with plain Python values; ids are checked by the caller."""
    if not isinstance(entry, dict):
        expected = ", ".join(_REQUIRED)
        raise _entry_error(source, index, None, f"expected an object with {expected}, got {type(entry).__name__}")
    for key in _REQUIRED:
        if key not in entry:
            raise _entry_error(source, index, key, "missing")
    out = {k: v for k, v in entry.items()}
    out["image_id"] = _python_scalar(entry["image_id"])
    out["category_id"] = _python_scalar(entry["category_id"])
    bbox = entry["bbox"]
    if hasattr(bbox, "tolist"):
        bbox = bbox.tolist()
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise _entry_error(source, index, "bbox", f"expected [x, y, w, h], got {bbox!r}")
    bbox = [_python_scalar(v) for v in bbox]
    if not all(_is_number(v) and math.isfinite(v) for v in bbox):
        raise _entry_error(source, index, "bbox", f"expected 4 finite numbers, got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise _entry_error(source, index, "bbox", f"negative width or height in [x, y, w, h] = {bbox!r}")
    out["bbox"] = [float(v) for v in bbox]
    score = _python_scalar(entry["score"])
    if not (_is_number(score) and math.isfinite(score)):
        raise _entry_error(source, index, "score", f"expected a finite number, got {score!r}")
    out["score"] = float(score)
    return out


def validate_coco_results(
    detections: Sequence[dict[str, Any]], coco_gt: COCO | None = None, *, source: str = _INLINE_SOURCE
) -> list[dict[str, Any]]:
    """Checked copies of result entries; with ``coco_gt``, image and category ids must exist in it."""
    if not isinstance(detections, (list, tuple)):
        raise ValueError(f"{source}: COCO results must be a list of objects, got {type(detections).__name__}")
    image_ids = set(coco_gt.getImgIds()) if coco_gt is not None else None
    category_ids = set(coco_gt.getCatIds()) if coco_gt is not None else None
    checked = []
    for index, entry in enumerate(detections):
        item = _check_entry(entry, index, source)
        if image_ids is not None and item["image_id"] not in image_ids:
            raise _entry_error(source, index, "image_id", f"{item['image_id']!r} is not an image of the ground truth")
        if category_ids is not None and item["category_id"] not in category_ids:
            raise _entry_error(
                source,
                index,
                "category_id",
                f"{item['category_id']!r} is not a category of the ground truth (ids: {sorted(category_ids)})",
            )
        checked.append(item)
    return checked


def load_coco_results(path: str | os.PathLike, coco_gt: COCO | None = None) -> list[dict[str, Any]]:
    """Read and validate a COCO results JSON file."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO results file not found: {p}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    return validate_coco_results(data, coco_gt, source=str(p))


def evaluate_coco(
    gt: COCO | str | os.PathLike,
    detections: Sequence[dict[str, Any]] | str | os.PathLike,
    *,
    quiet: bool = True,
) -> dict[str, float]:
    """COCO box AP in percent: ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``.

    ``gt``: a pycocotools COCO object or an instances JSON path. ``detections``: a list of
    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` or a results JSON path.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_coco_gt(gt, quiet=quiet)
    if isinstance(detections, (str, os.PathLike)):
        results = load_coco_results(detections, coco_gt)
        source = str(detections)
    else:
        results = validate_coco_results(detections, coco_gt)
        source = _INLINE_SOURCE
    if not results:
        warnings.warn(
            f"COCO evaluation: {source} holds no detections; every metric is reported as 0 "
            "(pycocotools cannot load an empty result list)",
            stacklevel=2,
        )
        return {name: 0.0 for name in COCO_METRICS}
    with _maybe_quiet(quiet):
        coco_dt = coco_gt.loadRes(results)  # results are our copies; loadRes may add keys to them
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[: len(COCO_METRICS)]
    return {name: (float(v) * 100.0 if v >= 0 else float(v)) for name, v in zip(COCO_METRICS, stats)}


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def write_coco_results(path: str | os.PathLike, detections: Sequence[dict[str, Any]]) -> Path:
    """Write a COCO results JSON atomically (temporary file in the same directory, then os.replace).

    Entries are checked for the required fields and values first (ids are not checked: no ground truth).
    """
    p = Path(path)
    checked = validate_coco_results(detections, None, source=str(p))
    atomic_write_json(p, checked, default=_json_default, indent=None)
    return p
