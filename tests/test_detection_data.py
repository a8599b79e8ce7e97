"""Detection data: VOC devkit / COCO 2017 datasets written here in their official formats, and the
fashion_det benchmark generator (from a fake Fashion-MNIST, and once from the real files if present)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx
from PIL import Image

from backbones.datasets import FASHION_MNIST_DIR, ArrayDataset
from detection import fashion_det
from detection.coco_eval import evaluate_coco
from detection.datasets import (
    VOC_DATASETS,
    COCODetection,
    VOCConcat,
    VOCDetection,
    clip_boxes,
    continuous_to_voc,
    voc_dataset,
    voc_to_continuous,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from detection.fashion_det import FASHION_DET_CLASSES, FashionDetConfig, compose_canvas, generate
from detection.voc_eval import ClassDetections, evaluate_detections

CLASSES = ("cat", "dog", "person")

# ---------------------------------------------------------------------------------------------
# Writers for the official formats
# ---------------------------------------------------------------------------------------------


def write_jpeg(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    value = {"RGB": (90, 120, 150), "L": 100, "CMYK": (10, 20, 30, 40)}[mode]
    Image.new(mode, (width, height), value).save(path, format="JPEG", quality=90)


def voc_object(name: str, box: tuple, difficult: int | None = 0, part: tuple | None = None) -> str:
    """One <object> as the devkit writes it; ``difficult=None`` leaves the tag out (as some VOC2012 files)."""
    xmin, ymin, xmax, ymax = box
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    extra = ""
    if part is not None:  # person layout parts carry their own bndbox, which must not be taken for the object's
        extra = "<part><name>head</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>" \
                "</bndbox></part>".format(*part)  # fmt: skip
    return (f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Left</pose>\n\t\t<truncated>0</truncated>\n\t\t{flag}\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n\t\t\t<xmax>{xmax}</xmax>\n"
            f"\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>{extra}\n\t</object>\n")  # fmt: skip


def voc_xml(stem: str, width: int, height: int, objects: list[str], year: str = "2007") -> str:
    return (f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{stem}.jpg</filename>\n"
            f"\t<source>\n\t\t<database>The VOC{year} Database</database>\n\t\t<annotation>PASCAL VOC{year}"
            f"</annotation>\n\t\t<image>flickr</image>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            f"\t<segmented>0</segmented>\n{''.join(objects)}</annotation>\n")  # fmt: skip


def write_voc(devkit: Path, year: str, image_sets: dict[str, list[str]], xml: dict[str, str],
              sizes: dict[str, tuple[int, int]], modes: dict[str, str] | None = None) -> Path:  # fmt: skip
    root = devkit / f"VOC{year}"
    for name, stems in image_sets.items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    for stem, text in xml.items():
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(text)
        write_jpeg(root / "JPEGImages" / f"{stem}.jpg", *sizes[stem], mode=(modes or {}).get(stem, "RGB"))
    return root


@pytest.fixture
def voc2007(tmp_path: Path) -> Path:
    """VOC2007 trainval = 000001 (dog + difficult person), 000002 (no objects); test = 000003 (a box
    reaching past the right and bottom edges)."""
    devkit = tmp_path / "VOCdevkit"
    xml = {
        "000001": voc_xml(
            "000001", 64, 48, [voc_object("dog", (5, 7, 30, 40)), voc_object("person", (1, 1, 64, 48), 1)]
        ),  # fmt: skip
        "000002": voc_xml("000002", 40, 32, []),
        "000003": voc_xml("000003", 50, 40, [voc_object("cat", (41, 31, 60, 55))]),
    }
    sizes = {"000001": (64, 48), "000002": (40, 32), "000003": (50, 40)}
    write_voc(devkit, "2007", {"trainval": ["000001", "000002"], "test": ["000003"]}, xml, sizes, {"000002": "L"})
    return devkit


@pytest.fixture
def voc_both_years(voc2007: Path) -> Path:
    """Adds VOC2012 trainval: 2008_000008 (a person without <difficult>, with a part) and 000001 (a stem
    that VOC2007 also has, so combined sets need the year prefix)."""
    xml = {
        "2008_000008": voc_xml(
            "2008_000008", 60, 45, [voc_object("person", (10, 5, 20, 40), None, (12, 6, 18, 12))], "2012"
        ),  # fmt: skip
        "000001": voc_xml("000001", 30, 30, [voc_object("cat", (1, 1, 30, 30))], "2012"),
    }
    sizes = {"2008_000008": (60, 45), "000001": (30, 30)}
    write_voc(voc2007, "2012", {"trainval": ["2008_000008", "000001"]}, xml, sizes, {"2008_000008": "CMYK"})
    return voc2007


# ---------------------------------------------------------------------------------------------
# Box conventions
# ---------------------------------------------------------------------------------------------


def test_box_conventions_round_trip_exactly():
    xml = np.array([[1, 1, 10, 20], [48, 240, 195, 371]], dtype=float)
    continuous = voc_to_continuous(xml)
    np.testing.assert_array_equal(continuous, [[0, 0, 10, 20], [47, 239, 195, 371]])
    np.testing.assert_array_equal(continuous_to_voc(continuous), xml)
    tensor = continuous_to_voc(torch.tensor([[0.0, 0.0, 10.0, 20.0]]))
    assert isinstance(tensor, torch.Tensor) and tensor.tolist() == [[1.0, 1.0, 10.0, 20.0]]
    np.testing.assert_array_equal(xywh_to_xyxy([2, 3, 4, 5]), [[2, 3, 6, 8]])
    np.testing.assert_array_equal(xyxy_to_xywh(xywh_to_xyxy([[2.5, 3, 4, 5]])), [[2.5, 3, 4, 5]])
    np.testing.assert_array_equal(clip_boxes([[-3, 2, 70, 50]], 64, 48), [[0, 2, 64, 48]])
    assert voc_to_continuous(xml).shape == (2, 4) and xml[0, 0] == 1  # inputs are not modified


# ---------------------------------------------------------------------------------------------
# VOC
# ---------------------------------------------------------------------------------------------


def test_voc_sample_format_boxes_labels_difficult_and_ids(voc2007: Path):
    ds = VOCDetection(voc2007, 2007, "trainval", CLASSES)
    assert len(ds) == 2 and ds.image_ids == ["000001", "000002"] and ds.class_names == list(CLASSES)
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert target["image_id"] == "000001" and target["orig_size"] == (48, 64)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[4.0, 6.0, 30.0, 40.0], [0.0, 0.0, 64.0, 48.0]]
    assert target["labels"].tolist() == [2, 3]  # dog, person: index in CLASSES + 1
    assert target["difficult"].tolist() == [False, True]
    gt = ds.ground_truth(0)  # the XML's own 1-based inclusive boxes, for the devkit rules
    np.testing.assert_array_equal(gt["boxes"], [[5, 7, 30, 40], [1, 1, 64, 48]])
    np.testing.assert_array_equal(continuous_to_voc(target["boxes"]).numpy(), gt["boxes"])
    target["boxes"][:, 0] = 63.0  # a transform editing its target in place leaves the dataset alone
    assert ds.target(0)["boxes"][0, 0] == 4.0

    empty_image, empty = ds[1]  # grayscale JPEG, no objects
    assert empty_image.shape == (3, 32, 40) and bool((empty_image[0] == empty_image[2]).all())
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["difficult"].shape == (0,)


def test_voc_keep_difficult_false_drops_them_from_targets_only(voc2007: Path):
    ds = VOCDetection(voc2007, "2007", "trainval", CLASSES, keep_difficult=False)
    assert ds.target(0)["labels"].tolist() == [2]
    person = ds.evaluation_ground_truth()["person"]["000001"]
    assert person.difficult.tolist() == [True] and person.boxes.tolist() == [[1, 1, 64, 48]]


def test_voc_box_outside_the_image_is_clipped_for_training_kept_for_evaluation(voc2007: Path):
    ds = VOCDetection(voc2007, "2007", "test", CLASSES)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[40.0, 30.0, 50.0, 40.0]]
    assert ds.evaluation_ground_truth()["cat"]["000003"].boxes.tolist() == [[41, 31, 60, 55]]


def test_voc_ground_truth_scores_perfect_detections_with_the_devkit_rules(voc2007: Path):
    ds = VOCDetection(voc2007, "2007", "trainval", CLASSES)
    detections = {name: ClassDetections.empty() for name in CLASSES}
    for index, image_id in enumerate(ds.image_ids):
        target = ds.target(index)
        for box, label in zip(continuous_to_voc(target["boxes"]).tolist(), target["labels"].tolist()):
            name = CLASSES[label - 1]
            found = ClassDetections.create([image_id], [1.0], [box])
            detections[name] = ClassDetections.concatenate([detections[name], found])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'cat' has no positives here
        result = evaluate_detections(detections, ds.evaluation_ground_truth(), CLASSES, "voc07")
    assert result["AP"]["dog"] == pytest.approx(100.0)
    assert result["AP"]["person"] == 0.0  # only a difficult person: no positives, detection is "don't care"


def test_voc_named_combinations_have_the_right_images_and_unique_ids(voc_both_years: Path):
    plus = voc_dataset("voc07+12", voc_both_years, class_names=CLASSES)
    assert isinstance(plus, VOCConcat) and plus.class_names == list(CLASSES)
    assert plus.image_ids == ["2007_000001", "2007_000002", "2012_2008_000008", "2012_000001"]
    assert [plus[i][1]["image_id"] for i in range(len(plus))] == plus.image_ids
    double = voc_dataset("voc07++12", voc_both_years.parent, class_names=CLASSES)  # the devkit's parent works too
    assert double.image_ids == ["2007_000001", "2007_000002", "2007_000003", "2012_2008_000008", "2012_000001"]
    assert len(set(double.image_ids)) == len(double) == 5
    assert set(double.evaluation_ground_truth()["cat"]) == set(double.image_ids)
    person = double.target(3)  # VOC2012: no <difficult> tag means 0; the <part> box is not the object's
    assert person["boxes"].tolist() == [[9.0, 4.0, 20.0, 40.0]] and person["difficult"].tolist() == [False]
    image, _ = double[3]  # CMYK JPEG -> RGB
    assert image.shape == (3, 45, 60)
    assert voc_dataset("voc07-test", voc_both_years, class_names=CLASSES).image_ids == ["000003"]
    assert voc_dataset("voc12-trainval", voc_both_years, class_names=CLASSES).image_ids == ["2008_000008", "000001"]
    assert set(VOC_DATASETS) == {"voc07+12", "voc07++12", "voc07-test", "voc12-test", "voc07-trainval",
                                 "voc12-trainval"}  # fmt: skip
    with pytest.raises(ValueError, match="unknown VOC dataset 'voc09'.*voc07\\+12"):
        voc_dataset("voc09", voc_both_years)


def _edit_xml(devkit: Path, stem: str, old: str, new: str) -> Path:
    path = devkit / "VOC2007" / "Annotations" / f"{stem}.xml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


# (edit of 000001.xml or its image, expected exception, message parts, skipped level)
VOC_PROBLEMS = {
    "zero-area box": (
        ("<xmax>30</xmax>", "<xmax>4</xmax>"),  # xmin 5: pixels 5..4, continuous [4, 4]
        ValueError,
        ["000001.xml", "object 0", "zero-area"],
        "object",
    ),  # fmt: skip
    "inverted box": (
        ("<xmax>30</xmax>", "<xmax>2</xmax>"),
        ValueError,
        ["000001.xml", "object 0", "inverted box xmin=5 ymin=7 xmax=2 ymax=40"],
        "object",
    ),  # fmt: skip
    "unknown class": (
        ("<name>person</name>", "<name>unicorn</name>"),
        ValueError,
        ["000001.xml", "object 1", "unknown class name 'unicorn'"],
        "object",
    ),  # fmt: skip
    "non-numeric": (
        ("<ymin>7</ymin>", "<ymin>seven</ymin>"),
        ValueError,
        ["000001.xml", "object 0", "<ymin> is not a number: 'seven'"],
        "object",
    ),  # fmt: skip
    "missing field": (("<xmin>5</xmin>", ""), ValueError, ["000001.xml", "object 0", "missing <xmin>"], "object"),
    "malformed XML": (("</annotation>", ""), ValueError, ["000001.xml", "malformed XML"], "image"),
    "missing image": (None, FileNotFoundError, ["000001.jpg", "image file not found"], "image"),
}


@pytest.mark.parametrize("problem", list(VOC_PROBLEMS))
def test_voc_errors_name_the_file_and_problem_and_skip_counts_them(voc2007: Path, problem: str):
    edit, error, parts, level = VOC_PROBLEMS[problem]
    if edit is None:
        (voc2007 / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    else:
        _edit_xml(voc2007, "000001", *edit)
    with pytest.raises(error) as raised:
        VOCDetection(voc2007, 2007, "trainval", CLASSES)
    for part in parts:
        assert part in str(raised.value)

    with pytest.warns(UserWarning, match="left out") as caught:
        ds = VOCDetection(voc2007, 2007, "trainval", CLASSES, on_error="skip")
    assert len(caught) == 1 and all(part in str(caught[0].message) for part in parts)
    assert (ds.num_skipped_objects, ds.num_skipped_images) == ((1, 0) if level == "object" else (0, 1))
    assert len(ds.skipped) == 1
    if level == "object":
        assert ds.image_ids == ["000001", "000002"] and len(ds.target(0)["labels"]) == 1
        ground_truth = ds.evaluation_ground_truth()
        assert sum(len(gt.boxes) for per_image in ground_truth.values() for gt in per_image.values()) == 1
    else:
        assert ds.image_ids == ["000002"]


def test_voc_size_falls_back_to_the_image_header(voc2007: Path):
    _edit_xml(voc2007, "000002", "<width>40</width>", "")
    with pytest.raises(ValueError, match="000002.xml: <size>: missing <width>"):
        VOCDetection(voc2007, 2007, "trainval", CLASSES)
    path = voc2007 / "VOC2007" / "Annotations" / "000002.xml"
    text = path.read_text()
    path.write_text(text[: text.index("\t<size>")] + text[text.index("\t<segmented>") :])  # no <size> at all
    assert VOCDetection(voc2007, 2007, "trainval", CLASSES).target(1)["orig_size"] == (32, 40)


def test_voc_layout_errors(voc2007: Path):
    with pytest.raises(FileNotFoundError, match="VOC2010"):
        VOCDetection(voc2007, 2010, "trainval", CLASSES)
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCDetection(voc2007, 2007, "val", CLASSES)
    with pytest.raises(ValueError, match="on_error"):
        VOCDetection(voc2007, 2007, "trainval", CLASSES, on_error="ignore")


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------


def coco_document() -> dict:
    """Categories out of order with gaps (ids 7, 1, 3); image 42 has a crowd annotation and a box
    past its right edge; image 7 has no annotations."""
    return {
        "info": {"description": "tiny"},
        "licenses": [],
        "images": [
            {"id": 42, "file_name": "000000000042.jpg", "width": 64, "height": 48},
            {"id": 5, "file_name": "000000000005.jpg", "width": 40, "height": 30},
            {"id": 7, "file_name": "000000000007.jpg", "width": 32, "height": 32},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "bbox": [10.5, 4.0, 20.0, 30.0], "area": 600.0, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 1, "bbox": [50.0, 10.0, 16.0, 5.0], "area": 80.0, "iscrowd": 0},
            {"id": 3, "image_id": 42, "category_id": 3, "bbox": [0.0, 0.0, 64.0, 48.0], "area": 3072.0, "iscrowd": 1,
             "segmentation": {"counts": [0, 3072], "size": [48, 64]}},
            {"id": 4, "image_id": 5, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "zebra", "supercategory": "animal"},
                       {"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 3, "name": "car", "supercategory": "vehicle"}],
    }  # fmt: skip


def write_coco(root: Path, split: str, document: dict) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(document))
    for image in document["images"]:
        write_jpeg(root / split / image["file_name"], image["width"], image["height"])
    return path


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    write_coco(tmp_path / "coco", "val2017", coco_document())
    return tmp_path / "coco"


def test_coco_sample_format_labels_crowd_and_clipping(coco_root: Path):
    ds = COCODetection(coco_root, "val2017")
    assert ds.class_names == ["person", "car", "zebra"]  # sorted by category id
    assert ds.label_to_category_id == {1: 1, 2: 3, 3: 7} and ds.category_id_to_label == {1: 1, 3: 2, 7: 3}
    assert ds.image_ids == [5, 7, 42]
    image, target = ds[2]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    assert target["image_id"] == 42 and target["orig_size"] == (48, 64)
    assert target["boxes"].tolist() == [[10.5, 4.0, 30.5, 34.0], [50.0, 10.0, 64.0, 15.0]]  # 2nd clipped at x=64
    assert target["labels"].tolist() == [3, 1]  # the crowd annotation is not a target
    assert target["difficult"].tolist() == [False, False]
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    coco = ds.evaluation_ground_truth()
    assert sorted(coco.getAnnIds()) == [1, 2, 3, 4] and coco.loadAnns(3)[0]["iscrowd"] == 1  # crowd kept for eval


def test_coco_ground_truth_scores_perfect_detections(coco_root: Path):
    ds = COCODetection(coco_root, "val2017")
    results = []
    for index, image_id in enumerate(ds.image_ids):
        target = ds.target(index)
        results += ds.to_coco_results(image_id, target["boxes"], torch.ones(len(target["labels"])), target["labels"])
    assert results[0] == {"image_id": 5, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 1.0}
    metrics = evaluate_coco(ds.evaluation_ground_truth(), results)
    assert metrics["AP50"] == pytest.approx(100.0)  # the clipped box (x 50..64 of 50..66) still matches at IoU .5
    assert metrics["AP"] < 100.0  # ... but not at the strictest thresholds: evaluation keeps the file's boxes


def _coco_edit(document: dict, problem: str) -> None:
    annotations = {a["id"]: a for a in document["annotations"]}
    if problem == "missing field":
        del annotations[4]["bbox"]
    elif problem == "non-numeric":
        annotations[4]["bbox"] = [1.0, "two", 3.0, 4.0]
    elif problem == "zero-area":
        annotations[4]["bbox"] = [45.0, 2.0, 3.0, 4.0]  # entirely right of the 40-pixel-wide image
    elif problem == "negative area":
        annotations[4]["area"] = -5
    elif problem == "crowd with a negative width":
        annotations[4].update(iscrowd=1, bbox=[1.0, 2.0, -3.0, 4.0])
    elif problem == "unknown category":
        annotations[4]["category_id"] = 99
    elif problem == "image missing a field":
        del document["images"][1]["height"]


# (edit, message parts, skipped level)
COCO_PROBLEMS = {
    "missing field": (["instances_val2017.json", "annotation id 4", "missing field 'bbox'"], "object"),
    "non-numeric": (["instances_val2017.json", "annotation id 4", "'bbox' must be 4 finite numbers"], "object"),
    "zero-area": (["instances_val2017.json", "annotation id 4", "zero-area box"], "object"),
    "negative area": (
        ["instances_val2017.json", "annotation id 4", "'area' must be a finite number >= 0, got -5"],
        "object",
    ),
    "crowd with a negative width": (["annotation id 4", "'bbox' has a negative width or height"], "object"),
    "unknown category": (["instances_val2017.json", "annotation id 4", "unknown category id 99"], "object"),
    "image missing a field": (["instances_val2017.json", "image id 5", "missing field 'height'"], "image"),
}


@pytest.mark.parametrize("problem", list(COCO_PROBLEMS))
def test_coco_errors_name_the_file_and_problem_and_skip_counts_them(tmp_path: Path, problem: str):
    document = coco_document()
    write_coco(tmp_path, "val2017", document)  # images written from the intact document
    _coco_edit(document, problem)
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(document))
    parts, level = COCO_PROBLEMS[problem]
    with pytest.raises(ValueError) as raised:
        COCODetection(tmp_path, "val2017")
    assert all(part in str(raised.value) for part in parts), str(raised.value)

    with pytest.warns(UserWarning, match="left out") as caught:
        ds = COCODetection(tmp_path, "val2017", on_error="skip")
    assert len(caught) == 1 and all(part in str(caught[0].message) for part in parts)
    assert (ds.num_skipped_objects, ds.num_skipped_images) == ((1, 0) if level == "object" else (0, 1))
    assert ds.image_ids == ([5, 7, 42] if level == "object" else [7, 42])
    assert 4 not in ds.evaluation_ground_truth().anns  # skipped for training and evaluation alike
    assert ds.target(ds.image_ids.index(42))["labels"].tolist() == [3, 1]


def test_coco_missing_image_file_and_malformed_json(coco_root: Path):
    (coco_root / "val2017" / "000000000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000000005\.jpg: image file not found"):
        COCODetection(coco_root, "val2017")
    with pytest.warns(UserWarning, match="000000000005.jpg"):
        ds = COCODetection(coco_root, "val2017", on_error="skip")
    assert ds.image_ids == [7, 42] and ds.num_skipped_images == 1
    assert sorted(ds.evaluation_ground_truth().getImgIds()) == [7, 42]

    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [], "annotations": [')
    with pytest.raises(ValueError, match="instances_val2017.json: malformed JSON"):
        COCODetection(coco_root, "val2017", on_error="skip")  # the file as a whole: never skipped
    path.write_text('{"images": [], "categories": []}')
    with pytest.raises(ValueError, match="missing field 'annotations'"):
        COCODetection(coco_root, "val2017")
    path.write_bytes(b'{"images": [], "annotations": [], "categories": [{"id": 1, "name": "caf\xe9"}]}')  # Latin-1
    with pytest.raises(ValueError, match="instances_val2017.json: malformed JSON .*utf-8"):
        COCODetection(coco_root, "val2017")


@pytest.mark.parametrize(
    "categories, message",
    [
        ([{"id": 1, "name": "x"}, {"id": 2, "name": "x"}], "category entry 1: duplicate category name 'x'"),
        ([{"id": 1, "name": ""}], "category entry 0: field 'name' must be a non-empty string, got ''"),
        ([{"id": 1, "name": None}], "category entry 0: field 'name' must be a non-empty string, got None"),
    ],
)
def test_coco_category_names_are_unique_non_empty_strings(coco_root: Path, categories, message):
    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        COCODetection(coco_root, "val2017")


# ---------------------------------------------------------------------------------------------
# fashion_det
# ---------------------------------------------------------------------------------------------


def fake_fashion_mnist(seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """Bright rectangles of random extent on black 28x28 items, every class present."""
    rng = np.random.default_rng(seed)

    def split(count: int, name: str) -> ArrayDataset:
        images = np.zeros((count, 1, 28, 28), dtype=np.uint8)
        for item in images:
            x0, y0 = rng.integers(1, 10, 2)
            x1, y1 = rng.integers(18, 27, 2)
            item[0, y0:y1, x0:x1] = rng.integers(120, 255)
        labels = torch.arange(count) % 10
        return ArrayDataset(torch.from_numpy(images), labels, [f"c{i}" for i in range(10)], name)

    return split(20, "fake/train"), split(10, "fake/test")


def load_both_layouts(output: Path) -> dict[str, tuple]:
    return {
        "train": (VOCDetection(output / "VOCdevkit", 2007, "trainval", FASHION_DET_CLASSES),
                  COCODetection(output / "coco", "train2017")),
        "test": (VOCDetection(output / "VOCdevkit", 2007, "test", FASHION_DET_CLASSES),
                 COCODetection(output / "coco", "val2017")),
    }  # fmt: skip


def assert_layouts_agree(output: Path, train: int, test: int) -> None:
    layouts = load_both_layouts(output)
    assert [len(layouts["train"][0]), len(layouts["test"][0])] == [train, test]
    for voc, coco in layouts.values():
        assert coco.class_names == list(FASHION_DET_CLASSES) and coco.label_to_category_id[1] == 1
        assert [int(i) for i in voc.image_ids] == coco.image_ids
        for index in range(len(voc)):
            voc_image, voc_target = voc[index]
            coco_image, coco_target = coco[index]
            assert torch.equal(voc_image, coco_image) and voc_image.shape == (3, 128, 128)
            assert torch.equal(voc_target["boxes"], coco_target["boxes"])
            assert torch.equal(voc_target["labels"], coco_target["labels"])
            np.testing.assert_array_equal(voc.ground_truth(index)["boxes"], continuous_to_voc(coco_target["boxes"]))
    ids = layouts["train"][0].image_ids + layouts["test"][0].image_ids
    assert ids == [f"{i:06d}" for i in range(1, train + test + 1)]


def annotation_bytes(output: Path) -> dict[str, bytes]:
    files = [p for p in sorted(output.rglob("*")) if p.is_file() and p.suffix in (".xml", ".txt", ".json", ".jpg")]
    return {str(p.relative_to(output)): p.read_bytes() for p in files}


def test_fashion_det_from_fake_items_both_layouts_agree_and_are_deterministic(tmp_path: Path):
    items = fake_fashion_mnist()
    summary = generate(tmp_path / "a", seed=3, train_images=6, test_images=4, fashion_mnist=items)
    assert summary["splits"]["train"]["images"] == 6 and summary["splits"]["test"]["images"] == 4
    assert summary["fashion_mnist"] == "in-memory: fake/train, fake/test"
    on_disk = json.loads((tmp_path / "a" / "fashion_det.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    voc_sets = [voc for voc, _ in load_both_layouts(tmp_path / "a").values()]
    objects = sum(len(voc.target(i)["labels"]) for voc in voc_sets for i in range(len(voc)))
    assert objects == summary["splits"]["train"]["objects"] + summary["splits"]["test"]["objects"] > 0
    assert_layouts_agree(tmp_path / "a", 6, 4)

    generate(tmp_path / "b", seed=3, train_images=6, test_images=4, fashion_mnist=items)
    first, second = annotation_bytes(tmp_path / "a"), annotation_bytes(tmp_path / "b")
    assert len(first) == 2 * 10 + 10 + 2 + 2 + 1 and first == second  # jpgs in both layouts, xmls, lists, jsons
    generate(tmp_path / "c", seed=4, train_images=6, test_images=4, fashion_mnist=items)
    assert annotation_bytes(tmp_path / "c") != first

    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path / "a", seed=3, train_images=6, test_images=4, fashion_mnist=items)
    generate(tmp_path / "a", seed=3, train_images=2, test_images=1, fashion_mnist=items, force=True)
    assert_layouts_agree(tmp_path / "a", 2, 1)  # earlier, larger output replaced, not mixed in


def test_fashion_det_boxes_are_tight_around_visible_item_pixels():
    train, _ = fake_fashion_mnist()
    items, labels = train.images[:, 0].numpy(), train.labels.numpy()
    config = FashionDetConfig(canvas=96, min_size=20, max_size=40, max_objects=4)
    placed_total = 0
    for index in range(12):
        canvas, placed = compose_canvas(items, labels, np.random.default_rng([7, index]), config)
        covered = np.zeros_like(canvas, dtype=bool)
        for item in placed:
            x0, y0, x1, y1 = item.continuous()
            covered[y0:y1, x0:x1] = True
            region = canvas[y0:y1, x0:x1] > fashion_det.ITEM_THRESHOLD
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
        assert not (canvas[~covered] > 60).any()  # nothing bright outside the boxes
        boxes = [item.continuous() for item in placed]
        for i, a in enumerate(boxes):
            for b in boxes[:i]:
                assert fashion_det._overlap(a, b)[0] <= fashion_det.MAX_IOU
        placed_total += len(placed)
    assert placed_total > 10


def test_fashion_det_cli_reads_idx_files_and_refuses_a_non_empty_output(tmp_path: Path, capsys):
    train, test = fake_fashion_mnist(1)
    for prefix, dataset in (("train", train), ("t10k", test)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", dataset.images[:, 0].numpy())
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", dataset.labels.numpy())
    args = ["--output", str(tmp_path / "out"), "--train-images", "3", "--test-images", "2", "--canvas", "64",
            "--min-size", "16", "--max-size", "32", "--fashion-mnist", str(tmp_path)]  # fmt: skip
    assert fashion_det.main(args) == 0
    summary = json.loads((tmp_path / "out" / "fashion_det.json").read_text())
    assert summary["canvas"] == 64 and summary["fashion_mnist"] == str(tmp_path)
    assert len(VOCDetection(tmp_path / "out" / "VOCdevkit", 2007, "test", FASHION_DET_CLASSES)) == 2
    assert fashion_det.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert fashion_det.main(args[:-2] + ["--fashion-mnist", str(tmp_path), "--min-size", "40"]) == 2
    assert "min_size" in capsys.readouterr().err


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason=f"no Fashion-MNIST files in {FASHION_MNIST_DIR}")
def test_fashion_det_from_the_real_fashion_mnist_files(tmp_path: Path):
    summary = generate(tmp_path, seed=0, train_images=3, test_images=2, fashion_mnist=FASHION_MNIST_DIR)
    assert summary["fashion_mnist"] == str(FASHION_MNIST_DIR)
    assert summary["splits"]["train"]["fashion_mnist_split"] == "train"
    assert summary["splits"]["test"]["fashion_mnist_split"] == "test"
    assert_layouts_agree(tmp_path, 3, 2)
