"""Detection datasets for torchvision's detection models: PASCAL VOC (devkit layout) and COCO 2017.

Every dataset yields ``(image, target)``:

* ``image``: uint8 tensor (3, H, W), RGB (grayscale, CMYK, RGBA, palette images are converted);
* ``target``: ``{"boxes": float32 (N, 4), "labels": int64 (N,), "image_id": str | int,
  "difficult": bool (N,), "orig_size": (H, W)}``. Boxes are torchvision's 0-based *continuous*
  ``x1, y1, x2, y2`` (a box covering pixel columns 0..9 spans x = 0 .. 10); labels are ``1..C``
  (0 is torchvision's background) with ``class_names[label - 1]`` the name. ``image_id`` is the file
  stem for VOC (prefixed with the year in combined sets) and the COCO image id for COCO.

Coordinates. VOC XML boxes are 1-based *inclusive* pixel indices: XML ``[x1, y1, x2, y2]`` covers
the continuous box ``[x1 - 1, y1 - 1, x2, y2]`` (:func:`voc_to_continuous`, back with
:func:`continuous_to_voc`). The devkit's ``+ 1`` IoU rule (``detection.voc_eval``) wants both ground
truth and detections in the XML convention, so write detections through :func:`continuous_to_voc`.
COCO ``bbox`` is continuous ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]`` (:func:`xywh_to_xyxy`).

Evaluation ground truth. ``evaluation_ground_truth()`` gives what the evaluators score against:
for VOC ``{class: {image_id: GroundTruth}}`` with the boxes *as written in the XML* (1-based
inclusive, not clipped, difficult objects included whatever ``keep_difficult`` says) for
``detection.voc_eval.evaluate_detections``; for COCO the pycocotools ``COCO`` object (crowd
annotations included, category ids as in the file; use ``label_to_category_id`` or
:meth:`COCODetection.to_coco_results` for the results).

Validation. Annotations are read and checked when the dataset is built, so problems surface before
training starts. Boxes partly outside the image are clipped to it (training targets only). These
raise ValueError (FileNotFoundError for missing files) naming the file, the object (VOC: index of
the ``<object>`` element, from 0; COCO: annotation id) and the problem: a zero-area box after
clipping, an unknown class name / category id, a missing image file, malformed XML or JSON
(missing fields, non-numeric or non-finite coordinates). With ``on_error="skip"`` the object or image
is left out of the dataset instead (out of the targets and the evaluation ground truth alike),
counted in ``num_skipped_objects`` / ``num_skipped_images``, listed in ``skipped``, and one warning
names every skipped item. Problems with the file as a whole (an image set list or annotation file
that is missing or not JSON, a bad category list) always raise. Images without objects are valid:
their target has boxes of shape (0, 4).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from backbones.imagenet import decode_image
from detection.voc_eval import VOC_CLASSES, GroundTruth

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = [
    "VOC_DATASETS",
    "AnnotationError",
    "COCODetection",
    "COCORecord",
    "VOCConcat",
    "VOCDetection",
    "VOCRecord",
    "clip_boxes",
    "continuous_to_voc",
    "read_image",
    "voc_dataset",
    "voc_to_continuous",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

OnError = Literal["raise", "skip"]
Target = dict[str, Any]
Transforms = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]
BoxArray = Any  # numpy array, torch tensor or nested sequence of shape (N, 4) or (4,)

# The paper's training / test sets (appendix, Table 7): name -> ((year, image set), ...).
VOC_DATASETS: dict[str, tuple[tuple[str, str], ...]] = {
    "voc07-trainval": (("2007", "trainval"),),
    "voc07-test": (("2007", "test"),),
    "voc12-trainval": (("2012", "trainval"),),
    "voc12-test": (("2012", "test"),),
    "voc07+12": (("2007", "trainval"), ("2012", "trainval")),
    "voc07++12": (("2007", "trainval"), ("2007", "test"), ("2012", "trainval")),
}


class AnnotationError(ValueError):
    """A problem in an annotation file; the message names the file, the object and the problem."""


# ---------------------------------------------------------------------------------------------
# Box conventions
# ---------------------------------------------------------------------------------------------


@overload
def _box_array(boxes: torch.Tensor) -> torch.Tensor: ...
@overload
def _box_array(boxes: np.ndarray | Sequence[Any]) -> np.ndarray: ...
def _box_array(boxes: BoxArray) -> np.ndarray | torch.Tensor:
    """A float copy of ``boxes`` shaped (N, 4): tensors stay tensors (float32 unless already floating)."""
    if isinstance(boxes, torch.Tensor):
        out = boxes.detach().clone()
        if not out.is_floating_point():
            out = out.float()
        return out.reshape(-1, 4)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


@overload
def voc_to_continuous(boxes: torch.Tensor) -> torch.Tensor: ...
@overload
def voc_to_continuous(boxes: np.ndarray | Sequence[Any]) -> np.ndarray: ...
def voc_to_continuous(boxes: BoxArray) -> np.ndarray | torch.Tensor:
    """VOC XML boxes (1-based inclusive ``x1 y1 x2 y2``) -> continuous 0-based: ``[x1-1, y1-1, x2, y2]``."""
    out = _box_array(boxes)
    out[:, :2] -= 1
    return out


@overload
def continuous_to_voc(boxes: torch.Tensor) -> torch.Tensor: ...
@overload
def continuous_to_voc(boxes: np.ndarray | Sequence[Any]) -> np.ndarray: ...
def continuous_to_voc(boxes: BoxArray) -> np.ndarray | torch.Tensor:
    """Continuous 0-based boxes -> the VOC XML / devkit convention: ``[x1+1, y1+1, x2, y2]``."""
    out = _box_array(boxes)
    out[:, :2] += 1
    return out


@overload
def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor: ...
@overload
def xywh_to_xyxy(boxes: np.ndarray | Sequence[Any]) -> np.ndarray: ...
def xywh_to_xyxy(boxes: BoxArray) -> np.ndarray | torch.Tensor:
    """COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]`` (both continuous)."""
    out = _box_array(boxes)
    out[:, 2:] += out[:, :2]
    return out


@overload
def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor: ...
@overload
def xyxy_to_xywh(boxes: np.ndarray | Sequence[Any]) -> np.ndarray: ...
def xyxy_to_xywh(boxes: BoxArray) -> np.ndarray | torch.Tensor:
    """``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]`` (both continuous)."""
    out = _box_array(boxes)
    out[:, 2:] -= out[:, :2]
    return out


@overload
def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor: ...
@overload
def clip_boxes(boxes: np.ndarray | Sequence[Any], width: float, height: float) -> np.ndarray: ...
def clip_boxes(boxes: BoxArray, width: float, height: float) -> np.ndarray | torch.Tensor:
    """Continuous boxes clipped to the image ``[0, width] x [0, height]``."""
    out = _box_array(boxes)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def _format_box(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def _checked_target_box(box: np.ndarray, width: int, height: int, where: str, given: str) -> np.ndarray:
    """Clip one continuous box to the image; a box with no area left is an error (``given``: the box as written)."""
    corners = _box_array(box)[0]
    if corners[2] < corners[0] or corners[3] < corners[1]:
        raise AnnotationError(f"{where}: inverted box {given} (its max corner lies left of or above its min corner)")
    clipped = clip_boxes(box, width, height)[0]
    box_w, box_h = clipped[2] - clipped[0], clipped[3] - clipped[1]
    if not (box_w > 0 and box_h > 0):
        raise AnnotationError(
            f"{where}: zero-area box {given} (width {box_w:g}, height {box_h:g} after clipping to the "
            f"{width}x{height} image)"
        )
    return clipped


# ---------------------------------------------------------------------------------------------
# Images and problem bookkeeping
# ---------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        image = decode_image(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from None
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _check_image_size(image: torch.Tensor, width: int, height: int, image_path: Path, source: Path) -> None:
    actual_h, actual_w = image.shape[1:]
    if (actual_h, actual_w) != (height, width):
        raise ValueError(
            f"{image_path}: image is {actual_w}x{actual_h} (width x height) but {source} says {width}x{height}"
        )


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError) as error:
        raise AnnotationError(f"{path}: cannot read the image header ({error})") from None


class _Problems:
    """Raises each data problem (``on_error="raise"``) or records it as skipped (``"skip"``)."""

    def __init__(self, on_error: str, source: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.source = source
        self.messages: list[str] = []
        self.images = 0
        self.objects = 0

    def skip(self, error: Exception, level: Literal["image", "object"]) -> None:
        if self.on_error == "raise":
            raise error
        self.messages.append(f"skipped {level}: {error}")
        if level == "image":
            self.images += 1
        else:
            self.objects += 1

    def warn(self) -> None:
        if self.messages:
            listing = "\n  ".join(self.messages)
            warnings.warn(
                f"{self.source}: on_error='skip' left out {self.images} image(s) and {self.objects} object(s):\n"
                f"  {listing}",
                stacklevel=3,
            )


def _make_target(boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, image_id: str | int,
                 height: int, width: int) -> Target:  # fmt: skip
    """Fresh tensors (copies), so transforms may edit a target in place without touching the records."""
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": image_id,
        "difficult": torch.tensor(difficult, dtype=torch.bool),
        "orig_size": (height, width),
    }


# ---------------------------------------------------------------------------------------------
# PASCAL VOC
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VOCRecord:
    """One image of a VOC image set, parsed and checked.

    ``xml_boxes`` are the boxes as written in the XML (1-based inclusive, for the devkit evaluation);
    ``boxes`` the same objects as continuous 0-based boxes clipped to the image (training targets).
    """

    image_id: str
    stem: str
    image_path: Path
    xml_path: Path
    width: int
    height: int
    names: tuple[str, ...]
    labels: np.ndarray  # int64 (M,), 1..C
    xml_boxes: np.ndarray  # float64 (M, 4)
    boxes: np.ndarray  # float32 (M, 4)
    difficult: np.ndarray  # bool (M,)


def _xml_text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise AnnotationError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _xml_number(element: ET.Element, tag: str, where: str) -> float:
    text = _xml_text(element, tag, where)
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(f"{where}: <{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: <{tag}> is not finite: {text!r}")
    return value


def _xml_flag(element: ET.Element, tag: str, where: str) -> bool:
    """An optional 0/1 flag such as <difficult> (absent in some VOC2012 objects: 0)."""
    if element.find(tag) is None:
        return False
    value = _xml_number(element, tag, where)
    if value not in (0, 1):
        raise AnnotationError(f"{where}: <{tag}> must be 0 or 1, got {value:g}")
    return bool(value)


def _voc_image_size(root: ET.Element, xml_path: Path, image_path: Path) -> tuple[int, int]:
    """(width, height) from <size>; from the image header when <size> is absent or zero."""
    size = root.find("size")
    if size is None:
        return _header_size(image_path)
    where = f"{xml_path}: <size>"
    width, height = _xml_number(size, "width", where), _xml_number(size, "height", where)
    if width == 0 or height == 0:
        return _header_size(image_path)
    if width < 0 or height < 0 or width != int(width) or height != int(height):
        raise AnnotationError(f"{where}: width and height must be positive integers, got {width:g}x{height:g}")
    return int(width), int(height)


def _parse_voc_object(obj: ET.Element, where: str, class_index: Mapping[str, int], width: int, height: int
                      ) -> tuple[str, int, np.ndarray, np.ndarray, bool]:  # fmt: skip
    """(name, label, XML box, clipped continuous box, difficult) of one <object>."""
    name = _xml_text(obj, "name", where)
    where = f"{where} ({name!r})"
    if name not in class_index:
        raise AnnotationError(f"{where}: unknown class name {name!r}; known classes: {', '.join(class_index)}")
    difficult = _xml_flag(obj, "difficult", where)
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise AnnotationError(f"{where}: missing <bndbox>")
    xml_box = np.array([_xml_number(bndbox, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax")])
    given = "xmin={:g} ymin={:g} xmax={:g} ymax={:g}".format(*xml_box)
    box = _checked_target_box(voc_to_continuous(xml_box), width, height, where, given)
    return name, class_index[name], xml_box, box, difficult


def _parse_xml(xml_path: Path) -> ET.Element:
    if not xml_path.is_file():
        raise FileNotFoundError(f"{xml_path}: annotation file not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise AnnotationError(f"{xml_path}: malformed XML ({error})") from None
    if root.tag != "annotation":
        raise AnnotationError(f"{xml_path}: malformed XML (root element is <{root.tag}>, expected <annotation>)")
    return root


def _read_image_set(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image set list not found")
    stems = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    seen: set[str] = set()
    for stem in stems:
        if stem in seen:
            raise ValueError(f"{path}: image {stem!r} is listed twice")
        seen.add(stem)
    return stems


def _find_voc_year_dir(devkit_root: Path, year: str) -> Path:
    candidates = [devkit_root / f"VOC{year}", devkit_root / "VOCdevkit" / f"VOC{year}"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"VOC{year} not found: tried {' and '.join(str(c) for c in candidates)}")


def _records_ground_truth(records: Sequence[VOCRecord], class_names: Sequence[str]
                          ) -> dict[str, dict[str, GroundTruth]]:  # fmt: skip
    """``{class: {image_id: GroundTruth}}`` with XML boxes; every image appears under every class."""
    out: dict[str, dict[str, GroundTruth]] = {name: {} for name in class_names}
    for record in records:
        for label, name in enumerate(class_names, start=1):
            mask = record.labels == label
            out[name][record.image_id] = GroundTruth(record.xml_boxes[mask], record.difficult[mask])
    return out


class _AnnotatedImages(Dataset):
    """What VOC and COCO share: ``records`` with ``image_path``/``width``/``height``, a ``target(index)``,
    and ``transforms`` applied last in ``__getitem__``."""

    records: Sequence[VOCRecord] | Sequence[COCORecord]
    transforms: Transforms | None

    def __len__(self) -> int:
        return len(self.records)

    def target(self, index: int) -> Target:
        raise NotImplementedError

    def _annotation_file(self, index: int) -> Path:
        """The file that states the image's size, named when the decoded image disagrees with it."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        image = read_image(record.image_path)
        _check_image_size(image, record.width, record.height, record.image_path, self._annotation_file(index))
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class VOCDetection(_AnnotatedImages):
    """One image set of one VOC year: ``<devkit_root>/VOC<year>/{Annotations, ImageSets/Main, JPEGImages}``.

    ``devkit_root`` is the ``VOCdevkit`` folder (or its parent). ``keep_difficult=False`` drops
    difficult objects from the training targets (never from :meth:`evaluation_ground_truth`).
    ``id_prefix`` is put before every image id (``voc_dataset`` uses ``"<year>_"`` in combined sets).
    ``transforms(image, target) -> (image, target)`` is applied last in ``__getitem__``.
    """

    def __init__(
        self,
        devkit_root: str | os.PathLike,
        year: str | int,
        image_set: str,
        class_names: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = True,
        on_error: OnError = "raise",
        *,
        id_prefix: str = "",
        transforms: Transforms | None = None,
    ) -> None:
        self.year = str(year)
        self.image_set = image_set
        self.root = _find_voc_year_dir(Path(devkit_root), self.year)
        self.class_names: list[str] = [str(c) for c in class_names]
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be non-empty and unique, got {self.class_names}")
        self.keep_difficult = keep_difficult
        self.transforms = transforms
        self.name = f"VOC{self.year} {image_set}"
        problems = _Problems(on_error, f"{self.root} ({image_set})")
        stems = _read_image_set(self.root / "ImageSets" / "Main" / f"{image_set}.txt")
        class_index = {name: label for label, name in enumerate(self.class_names, start=1)}
        self.records: list[VOCRecord] = []
        for stem in stems:
            try:
                self.records.append(self._parse_record(stem, id_prefix + stem, class_index, problems))
            except (AnnotationError, FileNotFoundError) as error:
                problems.skip(error, "image")
        self.image_ids: list[str] = [r.image_id for r in self.records]
        self.skipped: list[str] = problems.messages
        self.num_skipped_images = problems.images
        self.num_skipped_objects = problems.objects
        problems.warn()

    def _parse_record(self, stem: str, image_id: str, class_index: Mapping[str, int], problems: _Problems) -> VOCRecord:
        xml_path = self.root / "Annotations" / f"{stem}.xml"
        image_path = self.root / "JPEGImages" / f"{stem}.jpg"
        root = _parse_xml(xml_path)
        if not image_path.is_file():
            raise FileNotFoundError(f"{image_path}: image file not found (listed in {self.image_set}.txt)")
        width, height = _voc_image_size(root, xml_path, image_path)
        names, labels, xml_boxes, boxes, difficult = [], [], [], [], []
        for index, obj in enumerate(root.findall("object")):
            try:
                name, label, xml_box, box, flag = _parse_voc_object(
                    obj, f"{xml_path}: object {index}", class_index, width, height
                )
            except AnnotationError as error:
                problems.skip(error, "object")
                continue
            names.append(name)
            labels.append(label)
            xml_boxes.append(xml_box)
            boxes.append(box)
            difficult.append(flag)
        return VOCRecord(
            image_id=image_id,
            stem=stem,
            image_path=image_path,
            xml_path=xml_path,
            width=width,
            height=height,
            names=tuple(names),
            labels=np.array(labels, dtype=np.int64),
            xml_boxes=np.array(xml_boxes, dtype=np.float64).reshape(-1, 4),
            boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            difficult=np.array(difficult, dtype=bool),
        )

    def target(self, index: int) -> Target:
        """The training target of one image, without decoding the image."""
        record = self.records[index]
        keep = np.ones(len(record.labels), dtype=bool) if self.keep_difficult else ~record.difficult
        return _make_target(record.boxes[keep], record.labels[keep], record.difficult[keep], record.image_id,
                            record.height, record.width)  # fmt: skip

    def _annotation_file(self, index: int) -> Path:
        return self.records[index].xml_path

    def ground_truth(self, index: int) -> dict[str, np.ndarray]:
        """One image's evaluation ground truth: XML ``boxes`` (1-based inclusive), ``labels`` (1..C),
        ``difficult``: the input of ``VOCEvaluator(class_names, label_offset=1).process``."""
        record = self.records[index]
        return {"boxes": record.xml_boxes.copy(), "labels": record.labels.copy(), "difficult": record.difficult.copy()}

    def evaluation_ground_truth(self) -> dict[str, dict[str, GroundTruth]]:
        """``{class: {image_id: GroundTruth}}`` (XML boxes, difficult flags) for ``voc_eval.evaluate_detections``."""
        return _records_ground_truth(self.records, self.class_names)


class VOCConcat(ConcatDataset):
    """Several VOC image sets as one dataset (e.g. "07+12"); class names must agree, image ids must be unique."""

    def __init__(self, parts: Sequence[VOCDetection], name: str = "") -> None:
        if not parts:
            raise ValueError("VOCConcat needs at least one VOCDetection")
        super().__init__(parts)
        self.parts: list[VOCDetection] = list(parts)
        self.name = name or " + ".join(p.name for p in parts)
        self.class_names: list[str] = list(parts[0].class_names)
        for part in parts[1:]:
            if part.class_names != self.class_names:
                raise ValueError(f"{self.name}: {part.name} has class names {part.class_names}, "
                                 f"{parts[0].name} has {self.class_names}")  # fmt: skip
        self.records: list[VOCRecord] = [r for p in parts for r in p.records]
        self.image_ids: list[str] = [r.image_id for r in self.records]
        if len(set(self.image_ids)) != len(self.image_ids):
            duplicates = sorted(i for i, count in Counter(self.image_ids).items() if count > 1)
            raise ValueError(f"{self.name}: image ids are not unique across the parts "
                             f"(e.g. {duplicates[:5]}); give each part an id_prefix")  # fmt: skip
        self.skipped: list[str] = [m for p in parts for m in p.skipped]
        self.num_skipped_images = sum(p.num_skipped_images for p in parts)
        self.num_skipped_objects = sum(p.num_skipped_objects for p in parts)

    def _locate(self, index: int) -> tuple[VOCDetection, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        part = bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[part - 1] if part else 0
        return self.parts[part], index - start

    def target(self, index: int) -> Target:
        part, local = self._locate(index)
        return part.target(local)

    def ground_truth(self, index: int) -> dict[str, np.ndarray]:
        part, local = self._locate(index)
        return part.ground_truth(local)

    def evaluation_ground_truth(self) -> dict[str, dict[str, GroundTruth]]:
        return _records_ground_truth(self.records, self.class_names)


def voc_dataset(
    name: str,
    devkit_root: str | os.PathLike,
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    keep_difficult: bool = True,
    on_error: OnError = "raise",
    transforms: Transforms | None = None,
) -> VOCDetection | VOCConcat:
    """A named set of :data:`VOC_DATASETS`: ``voc07+12`` (07 trainval + 12 trainval, the paper's
    training set for VOC07 test), ``voc07++12`` (07 trainval+test + 12 trainval, for VOC12 test),
    ``voc07-test``, ``voc12-test``, ``voc07-trainval``, ``voc12-trainval``.

    Single image sets keep the plain file stems as ids (as the devkit expects); combined sets prefix
    every id with its year (``2007_000005``, ``2012_2008_000008``) so ids stay unique.
    """
    if name not in VOC_DATASETS:
        raise ValueError(f"unknown VOC dataset {name!r}; expected one of {', '.join(VOC_DATASETS)}")
    spec = VOC_DATASETS[name]
    combined = len(spec) > 1
    parts = [
        VOCDetection(
            devkit_root,
            year,
            image_set,
            class_names,
            keep_difficult,
            on_error,
            id_prefix=f"{year}_" if combined else "",
            transforms=transforms,
        )  # fmt: skip
        for year, image_set in spec
    ]
    return VOCConcat(parts, name) if combined else parts[0]


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class COCORecord:
    """One image of a COCO split: training targets (non-crowd annotations, clipped xyxy boxes)."""

    image_id: int
    image_path: Path
    width: int
    height: int
    annotation_ids: tuple[int, ...]
    labels: np.ndarray  # int64 (N,), 1..C
    boxes: np.ndarray  # float32 (N, 4)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_field(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise AnnotationError(f"{where}: missing field {key!r}")
    return entry[key]


def _json_int(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = _json_field(entry, key, where)
    if not (_is_number(value) and value == int(value)):
        raise AnnotationError(f"{where}: field {key!r} must be an integer, got {value!r}")
    return int(value)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: malformed JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: malformed COCO JSON (expected an object, got {type(data).__name__})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: malformed COCO JSON (missing field {key!r} or not a list)")
    return data


def _parse_categories(categories: list[Any], path: Path) -> list[tuple[int, str]]:
    """(category id, name) sorted by id; any problem here raises (labels would shift otherwise)."""
    out: dict[int, str] = {}
    for index, entry in enumerate(categories):
        where = f"{path}: category entry {index}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
        category_id = _json_int(entry, "id", where)
        name = _json_field(entry, "name", where)
        if not isinstance(name, str) or not name.strip():
            raise AnnotationError(f"{where}: field 'name' must be a non-empty string, got {name!r}")
        if category_id in out:
            raise AnnotationError(f"{where}: duplicate category id {category_id}")
        if name in out.values():  # tables, result files and sidecars name classes by it
            raise AnnotationError(f"{where}: duplicate category name {name!r}")
        out[category_id] = name
    if not out:
        raise AnnotationError(f"{path}: no categories")
    return sorted(out.items())


def _parse_coco_image(entry: Any, index: int, path: Path, image_dir: Path) -> tuple[int, Path, int, int]:
    where = f"{path}: image entry {index}"
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    image_id = _json_int(entry, "id", where)
    where = f"{path}: image id {image_id}"
    file_name = _json_field(entry, "file_name", where)
    width, height = _json_int(entry, "width", where), _json_int(entry, "height", where)
    if width <= 0 or height <= 0:
        raise AnnotationError(f"{where}: width and height must be positive, got {width}x{height}")
    image_path = image_dir / str(file_name)
    if not image_path.is_file():
        raise FileNotFoundError(f"{image_path}: image file not found (image id {image_id} in {path})")
    return image_id, image_path, width, height


def _check_coco_annotation(entry: Any, index: int, path: Path, category_ids: Mapping[int, int],
                           image_ids: set[int]) -> dict[str, Any]:  # fmt: skip
    """A checked copy of one annotation (``area`` defaults to w*h, ``iscrowd`` to 0)."""
    where = f"{path}: annotation entry {index}"
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    annotation_id = _json_int(entry, "id", where)
    where = f"{path}: annotation id {annotation_id}"
    image_id = _json_int(entry, "image_id", where)
    where = f"{where} (image {image_id})"
    if image_id not in image_ids:
        raise AnnotationError(f"{where}: image id {image_id} is not among the file's images")
    category_id = _json_int(entry, "category_id", where)
    if category_id not in category_ids:
        raise AnnotationError(f"{where}: unknown category id {category_id}; known: {sorted(category_ids)}")
    bbox = _json_field(entry, "bbox", where)
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise AnnotationError(f"{where}: field 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:  # crowd boxes too: pycocotools would match against them as given
        raise AnnotationError(f"{where}: field 'bbox' has a negative width or height: {bbox!r} ([x, y, w, h])")
    iscrowd = entry.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise AnnotationError(f"{where}: field 'iscrowd' must be 0 or 1, got {iscrowd!r}")
    out = dict(entry)
    out.setdefault("iscrowd", 0)
    out.setdefault("area", float(bbox[2] * bbox[3]))
    if not _is_number(out["area"]) or out["area"] < 0:  # pycocotools drops a negative-area object unannounced
        raise AnnotationError(f"{where}: field 'area' must be a finite number >= 0, got {out['area']!r}")
    return out


def _make_coco(dataset: dict[str, Any]) -> COCO:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class COCODetection(_AnnotatedImages):
    """A COCO 2017-layout split: ``root/annotations/instances_<split>.json`` and ``root/<split>/*.jpg``.

    Labels are ``1..C`` in increasing category-id order (``label_to_category_id`` /
    ``category_id_to_label`` map them); crowd annotations (``iscrowd=1``) are not training targets
    but stay in :attr:`coco` for pycocotools' evaluation. Image ids are the file's, in increasing order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        on_error: OnError = "raise",
        *,
        transforms: Transforms | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.annotation_file = self.root / "annotations" / f"instances_{split}.json"
        self.image_dir = self.root / split
        self.transforms = transforms
        self.name = f"COCO {split}"
        problems = _Problems(on_error, str(self.annotation_file))
        data = _load_json(self.annotation_file)
        categories = _parse_categories(data["categories"], self.annotation_file)
        self.class_names: list[str] = [name for _, name in categories]
        self.label_to_category_id: dict[int, int] = {label: cid for label, (cid, _) in enumerate(categories, 1)}
        self.category_id_to_label: dict[int, int] = {cid: label for label, cid in self.label_to_category_id.items()}

        images = self._parse_images(data["images"], problems)
        listed = {entry.get("id") for entry in data["images"] if isinstance(entry, dict)}
        annotations = self._parse_annotations(data["annotations"], images, listed, problems)
        self.records: list[COCORecord] = []
        evaluated: list[dict[str, Any]] = []
        for image_id in sorted(images):
            record, kept = self._make_record(images[image_id], annotations.get(image_id, []), problems)
            self.records.append(record)
            evaluated.extend(kept)
        self.image_ids: list[int] = [r.image_id for r in self.records]
        image_entries = [entry for entry in data["images"] if isinstance(entry, dict) and entry.get("id") in images]
        self.coco: COCO = _make_coco({**data, "images": image_entries, "annotations": evaluated})
        self.skipped: list[str] = problems.messages
        self.num_skipped_images = problems.images
        self.num_skipped_objects = problems.objects
        problems.warn()

    def _parse_images(self, entries: list[Any], problems: _Problems) -> dict[int, tuple[int, Path, int, int]]:
        """(image id, path, width, height) per usable image id."""
        images: dict[int, tuple[int, Path, int, int]] = {}
        for index, entry in enumerate(entries):
            try:
                image = _parse_coco_image(entry, index, self.annotation_file, self.image_dir)
            except (AnnotationError, FileNotFoundError) as error:
                problems.skip(error, "image")
                continue
            if image[0] in images:
                raise AnnotationError(f"{self.annotation_file}: image entry {index}: duplicate image id {image[0]}")
            images[image[0]] = image
        return images

    def _parse_annotations(self, entries: list[Any], images: Mapping[int, Any], listed: set[Any],
                           problems: _Problems) -> dict[int, list[dict[str, Any]]]:  # fmt: skip
        """Checked annotations per image id; those of skipped images leave with their image, uncounted."""
        by_image: dict[int, list[dict[str, Any]]] = {}
        usable, seen = set(images), set()
        for index, entry in enumerate(entries):
            image_id = entry.get("image_id") if isinstance(entry, dict) else None
            if image_id not in usable and image_id in listed:
                continue  # its image was skipped
            try:
                annotation = _check_coco_annotation(entry, index, self.annotation_file, self.category_id_to_label,
                                                    usable)  # fmt: skip
                if annotation["id"] in seen:
                    raise AnnotationError(f"{self.annotation_file}: annotation entry {index}: duplicate annotation "
                                          f"id {annotation['id']}")  # fmt: skip
            except AnnotationError as error:
                problems.skip(error, "object")
                continue
            seen.add(annotation["id"])
            by_image.setdefault(annotation["image_id"], []).append(annotation)
        return by_image

    def _make_record(self, image: tuple[int, Path, int, int], annotations: list[dict[str, Any]],
                     problems: _Problems) -> tuple[COCORecord, list[dict[str, Any]]]:  # fmt: skip
        """The image's record and the annotations kept for evaluation (crowd ones and valid targets)."""
        image_id, image_path, width, height = image
        kept, ids, labels, boxes = [], [], [], []
        for annotation in annotations:
            if annotation["iscrowd"]:
                kept.append(annotation)
                continue
            where = f"{self.annotation_file}: annotation id {annotation['id']} (image {image_id})"
            try:
                given = f"bbox {_format_box(annotation['bbox'])} ([x, y, w, h])"
                box = _checked_target_box(xywh_to_xyxy(annotation["bbox"]), width, height, where, given)
            except AnnotationError as error:
                problems.skip(error, "object")
                continue
            kept.append(annotation)
            ids.append(annotation["id"])
            labels.append(self.category_id_to_label[annotation["category_id"]])
            boxes.append(box)
        record = COCORecord(
            image_id=image_id,
            image_path=image_path,
            width=width,
            height=height,
            annotation_ids=tuple(ids),
            labels=np.array(labels, dtype=np.int64),
            boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        )
        return record, kept

    def target(self, index: int) -> Target:
        """The training target of one image, without decoding the image."""
        record = self.records[index]
        return _make_target(record.boxes, record.labels, np.zeros(len(record.labels), dtype=bool),
                            record.image_id, record.height, record.width)  # fmt: skip

    def _annotation_file(self, index: int) -> Path:
        return self.annotation_file

    def evaluation_ground_truth(self) -> COCO:
        """The pycocotools ground truth (crowd annotations included) for ``detection.coco_eval``."""
        return self.coco

    def to_coco_results(self, image_id: int, boxes: BoxArray, scores: Any, labels: Any) -> list[dict[str, Any]]:
        """One image's detections (continuous xyxy boxes, labels 1..C) as COCO result entries."""
        xywh = np.asarray(_as_numpy(xyxy_to_xywh(boxes)), dtype=np.float64)
        score_list = np.asarray(_as_numpy(scores), dtype=np.float64).reshape(-1)
        label_list = np.asarray(_as_numpy(labels)).reshape(-1)
        if not len(xywh) == len(score_list) == len(label_list):
            raise ValueError(f"{len(xywh)} boxes, {len(score_list)} scores and {len(label_list)} labels; "
                             "need equal counts")  # fmt: skip
        results = []
        for box, score, label in zip(xywh, score_list, label_list):
            if int(label) not in self.label_to_category_id:
                raise ValueError(f"label {int(label)} outside 1..{len(self.class_names)}")
            results.append({"image_id": int(image_id), "category_id": self.label_to_category_id[int(label)],
                            "bbox": [float(v) for v in box], "score": float(score)})  # fmt: skip
        return results


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
