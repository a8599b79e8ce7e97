"""Detection evaluation: VOC devkit rules (hand-computed cases) and the pycocotools wrapper."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pytest

from detection.coco_eval import COCO_METRICS, evaluate_coco, write_coco_results
from detection.voc_eval import (
    VOC07_THRESHOLDS,
    ClassDetections,
    GroundTruth,
    MatchResult,
    VOCEvaluator,
    evaluate_class,
    evaluate_detections,
    match_detections,
    precision_recall,
    read_devkit_results,
    voc_ap,
    voc_iou,
    write_devkit_results,
)

EXACT = dict(abs=1e-12, rel=0)


def dets(*rows: tuple[str, float, list[float]]) -> ClassDetections:
    """ClassDetections from (image_id, score, [x1, y1, x2, y2]) rows."""
    if not rows:
        return ClassDetections.empty()
    return ClassDetections.create([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def gt(boxes: list[list[float]], difficult: list[bool] | None = None) -> GroundTruth:
    return GroundTruth.create(np.asarray(boxes, dtype=float).reshape(-1, 4), difficult)


# ---------------------------------------------------------------------------------------------
# (a) a tiny case computed by hand
# ---------------------------------------------------------------------------------------------
#
# Ground truth (one class): image A has G1 [10,10,50,50] and G2 [100,100,150,150]; image B has
# G3 [20,20,60,60]. Positives: 3.
# Detections (given out of order on purpose):
#   d3 B 0.7 [22,22,60,60]    IoU with G3 = 39*39 / (41*41) = 1521/1681 = 0.905  -> TP
#   d1 A 0.9 [10,10,50,50]    IoU with G1 = 1                                    -> TP
#   d4 A 0.6 [300,300,320,320] no overlap                                        -> FP
#   d2 B 0.8 [200,200,240,240] no overlap                                        -> FP
# Sorted by score: d1 TP, d2 FP, d3 TP, d4 FP
#   cum TP 1 1 2 2, cum FP 0 1 1 2
#   recall    1/3 1/3 2/3 2/3
#   precision 1   1/2 2/3 1/2
# VOC07 (11-point): t = 0, .1, .2, .3 -> max precision over all points = 1;
#   t = .4, .5, .6 -> points with recall 2/3: max(2/3, 1/2) = 2/3; t = .7 ... 1 -> no point: 0.
#   AP = (4 * 1 + 3 * 2/3) / 11 = 6/11.
# VOC12 (area): recall with sentinels 0, 1/3, 1/3, 2/3, 2/3, 1; precision 0, 1, 1/2, 2/3, 1/2, 0;
#   envelope (max to the right) 1, 1, 2/3, 2/3, 1/2, 0; recall steps at 1/3 (height 1), 2/3
#   (height 2/3) and 1 (height 0): AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9.

TINY_GT = {"A": gt([[10, 10, 50, 50], [100, 100, 150, 150]]), "B": gt([[20, 20, 60, 60]])}
TINY_DETS = dets(
    ("B", 0.7, [22, 22, 60, 60]),
    ("A", 0.9, [10, 10, 50, 50]),
    ("A", 0.6, [300, 300, 320, 320]),
    ("B", 0.8, [200, 200, 240, 240]),
)


def test_tiny_case_by_hand():
    match = match_detections(TINY_DETS, TINY_GT)
    assert match.order.tolist() == [1, 3, 0, 2]
    assert match.tp.tolist() == [True, False, True, False]
    assert match.fp.tolist() == [False, True, False, True]
    assert match.num_positives == 3

    r07 = evaluate_class(TINY_DETS, TINY_GT, "voc07")
    np.testing.assert_allclose(r07.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(r07.precision, [1, 1 / 2, 2 / 3, 1 / 2], rtol=0, atol=1e-15)
    assert (r07.num_tp, r07.num_fp, r07.num_positives) == (2, 2, 3)
    assert r07.ap == pytest.approx(6 / 11, **EXACT)
    assert evaluate_class(TINY_DETS, TINY_GT, "voc12").ap == pytest.approx(5 / 9, **EXACT)


def test_evaluator_matches_pure_functions_and_reports_percent():
    # Same data through VOCEvaluator, two classes, torchvision-style labels (0 = background).
    ev = VOCEvaluator(["cat", "dog"], label_offset=1)
    ev.process(
        "A",
        {"boxes": [[10, 10, 50, 50], [300, 300, 320, 320]], "scores": [0.9, 0.6], "labels": [1, 1]},
        {"boxes": [[10, 10, 50, 50], [100, 100, 150, 150], [5, 5, 40, 40]], "labels": [1, 1, 2]},
    )
    ev.process(
        "B",
        {"boxes": [[22, 22, 60, 60], [200, 200, 240, 240], [5, 5, 40, 40]], "scores": [0.7, 0.8, 0.5],
         "labels": [1, 1, 2]},
        {"boxes": [[20, 20, 60, 60]], "labels": [1]},
    )  # fmt: skip
    # dog: one positive (image A), one detection on image B where there is no dog -> FP -> AP 0.
    out07 = ev.evaluate("voc07")
    assert out07["metric"] == "voc07"
    assert out07["AP"]["cat"] == pytest.approx(100 * 6 / 11, abs=1e-10)
    assert out07["AP"]["dog"] == 0.0
    assert out07["mAP"] == pytest.approx(100 * 6 / 11 / 2, abs=1e-10)
    out12 = ev.evaluate("voc12")
    assert out12["AP"]["cat"] == pytest.approx(100 * 5 / 9, abs=1e-10)
    assert set(out12) == {"metric", "mAP", "AP"}
    json.dumps(out12)  # plain floats

    with pytest.raises(ValueError, match="already processed"):
        ev.process("A", {"boxes": [], "scores": [], "labels": []}, {"boxes": [], "labels": []})
    with pytest.raises(ValueError, match="label 3 outside"):
        ev.process("C", {"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [3]}, {"boxes": [], "labels": []})
    with pytest.raises(ValueError, match="unknown VOC metric"):
        ev.evaluate("voc2007")
    ev.reset()
    assert len(ev) == 0


# ---------------------------------------------------------------------------------------------
# (b) difficult objects
# ---------------------------------------------------------------------------------------------


def test_difficult_objects_are_ignored_and_not_positives():
    # A: normal N [10,10,50,50], difficult D [100,100,150,150]; positives = 1 (D does not count).
    # Sorted: 0.9 on D (IoU 1) -> neither TP nor FP; 0.8 on N -> TP.
    # cum TP 0 1, cum FP 0 0: recall 0 1, precision 0 (nothing counted yet) 1 -> both APs = 1.
    # AP = 1 shows that D neither adds a FP (the 0.9 detection) nor a missed positive.
    truth = {"A": gt([[10, 10, 50, 50], [100, 100, 150, 150]], [False, True])}
    d = dets(("A", 0.9, [100, 100, 150, 150]), ("A", 0.8, [10, 10, 50, 50]))
    match = match_detections(d, truth)
    assert match.num_positives == 1
    assert match.ignored.tolist() == [True, False]
    assert match.tp.tolist() == [False, True]
    for metric in ("voc07", "voc12"):
        result = evaluate_class(d, truth, metric)
        np.testing.assert_array_equal(result.recall, [0.0, 1.0])
        np.testing.assert_array_equal(result.precision, [0.0, 1.0])
        assert result.ap == pytest.approx(1.0, **EXACT)
    # With only the detection of N: recall stops at 1/2 if D is a normal object (VOC12 AP = 1/2 * 1),
    # but reaches 1 when D is difficult (AP 1).
    plain = {"A": gt([[10, 10, 50, 50], [100, 100, 150, 150]])}
    assert evaluate_class(dets(("A", 0.8, [10, 10, 50, 50])), plain, "voc12").ap == pytest.approx(0.5, **EXACT)
    assert evaluate_class(dets(("A", 0.8, [10, 10, 50, 50])), truth, "voc12").ap == pytest.approx(1.0, **EXACT)


# ---------------------------------------------------------------------------------------------
# (c) duplicate detections
# ---------------------------------------------------------------------------------------------


def test_second_detection_of_the_same_object_is_a_false_positive():
    # One object; 0.9 IoU 1 -> TP; 0.8 IoU 39*39/(41*41) -> duplicate -> FP.
    # recall 1 1, precision 1 1/2: both APs = 1 (the envelope is 1 up to recall 1).
    truth = {"A": gt([[10, 10, 50, 50]])}
    d = dets(("A", 0.8, [12, 12, 50, 50]), ("A", 0.9, [10, 10, 50, 50]))
    result = evaluate_class(d, truth, "voc07")
    assert (result.num_tp, result.num_fp) == (1, 1)
    np.testing.assert_allclose(result.precision, [1.0, 0.5])
    assert result.ap == pytest.approx(1.0, **EXACT)


def test_only_the_best_overlapping_object_is_considered():
    # G1 [0,0,99,99], G2 [20,0,119,99] (100x100 each). d1 = G1 -> TP (G1 matched).
    # d2 [8,0,107,99]: IoU with G1 = 92*100 / (20000 - 9200) = 0.852, with G2 = 88*100 / (20000 - 8800)
    # = 0.786. Its best object G1 is taken -> FP, although G2 is unmatched and overlaps by > 0.5
    # (devkit: jmax over all objects, then "multiple detection").
    truth = {"A": gt([[0, 0, 99, 99], [20, 0, 119, 99]])}
    np.testing.assert_allclose(voc_iou([8, 0, 107, 99], truth["A"].boxes), [9200 / 10800, 8800 / 11200])
    d = dets(("A", 0.9, [0, 0, 99, 99]), ("A", 0.8, [8, 0, 107, 99]))
    match = match_detections(d, truth)
    assert match.tp.tolist() == [True, False]
    assert match.fp.tolist() == [False, True]


def test_ties_in_score_keep_input_order():
    # Equal scores: stable order. First listed (the FP) ranks first: recall 0 1/1, precision 0 1/2.
    truth = {"A": gt([[10, 10, 50, 50]])}
    d = dets(("A", 0.5, [300, 300, 320, 320]), ("A", 0.5, [10, 10, 50, 50]))
    match = match_detections(d, truth)
    assert match.order.tolist() == [0, 1]
    np.testing.assert_allclose(evaluate_class(d, truth).precision, [0.0, 0.5])


# ---------------------------------------------------------------------------------------------
# (d) empty images, unknown images
# ---------------------------------------------------------------------------------------------


def test_detections_on_images_without_objects_are_false_positives():
    # A has one object, C has none. Sorted: 0.9 on C -> FP; 0.8 on A -> TP.
    # recall 0 1, precision 0 1/2. VOC07: every t has the point (1, 1/2) -> 1/2.
    # VOC12: envelope 1/2 up to recall 1 -> 1/2.
    truth = {"A": gt([[10, 10, 50, 50]]), "C": GroundTruth.empty()}
    d = dets(("C", 0.9, [10, 10, 50, 50]), ("A", 0.8, [10, 10, 50, 50]))
    for metric in ("voc07", "voc12"):
        result = evaluate_class(d, truth, metric)
        np.testing.assert_allclose(result.precision, [0.0, 0.5])
        np.testing.assert_allclose(result.recall, [0.0, 1.0])
        assert result.ap == pytest.approx(0.5, **EXACT)

    # Through the evaluator: image C processed with no ground truth at all.
    ev = VOCEvaluator(["cat"])
    ev.process("A", {"boxes": [[10, 10, 50, 50]], "scores": [0.8], "labels": ["cat"]},
               {"boxes": [[10, 10, 50, 50]], "labels": ["cat"]})  # fmt: skip
    ev.process("C", {"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": ["cat"]},
               {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=np.int64)})  # fmt: skip
    assert ev.evaluate("voc12")["AP"]["cat"] == pytest.approx(50.0, abs=1e-10)


def test_detection_on_an_image_without_ground_truth_entry_is_an_error():
    with pytest.raises(ValueError, match="'Z'.*no ground-truth entry"):
        match_detections(dets(("Z", 0.9, [0, 0, 5, 5])), {"A": gt([[0, 0, 5, 5]])})


# ---------------------------------------------------------------------------------------------
# (e) a class with no detections; a class with no positives
# ---------------------------------------------------------------------------------------------


def test_class_without_detections_has_ap_zero():
    truth = {"A": gt([[10, 10, 50, 50]])}
    for metric in ("voc07", "voc12"):
        result = evaluate_class(ClassDetections.empty(), truth, metric)
        assert result.ap == 0.0
        assert result.recall.size == 0 and result.precision.size == 0
    out = evaluate_detections({}, {"cat": truth}, ["cat"], "voc07")
    assert out == {"metric": "voc07", "mAP": 0.0, "AP": {"cat": 0.0}}


def test_class_without_positives_is_left_out_of_the_mean():
    # cat: AP 1 (one object, one exact detection). bird: no object anywhere (only a difficult one),
    # one detection elsewhere -> AP reported 0, not averaged in: mAP = 100, with a warning.
    ev = VOCEvaluator(["cat", "bird"])
    ev.process(
        "A",
        {"boxes": [[10, 10, 50, 50], [60, 60, 90, 90]], "scores": [0.9, 0.8], "labels": [0, 1]},
        {"boxes": [[10, 10, 50, 50], [100, 100, 120, 120]], "labels": [0, 1], "difficult": [False, True]},
    )
    with pytest.warns(UserWarning, match="bird"):
        out = ev.evaluate("voc07")
    assert out["AP"] == {"cat": pytest.approx(100.0, abs=1e-10), "bird": 0.0}
    assert out["mAP"] == pytest.approx(100.0, abs=1e-10)
    bird = ev.class_results("voc07")["bird"]
    assert bird.num_positives == 0 and bird.ap == 0.0 and not np.isnan(bird.recall).any()


# ---------------------------------------------------------------------------------------------
# (f) the +1 pixel convention, and the threshold at exactly 0.5
# ---------------------------------------------------------------------------------------------


def test_pixel_inclusive_iou_decides_the_match():
    # GT [0,0,2,2] vs det [0,0,3,3]:
    #   devkit (+1): 3*3 / (4*4) = 9/16 = 0.5625 -> TP
    #   continuous (no +1): 2*2 / (3*3) = 4/9 = 0.444 -> would be a FP
    truth = {"A": gt([[0, 0, 2, 2]])}
    assert voc_iou([0, 0, 3, 3], truth["A"].boxes)[0] == 9 / 16
    result = evaluate_class(dets(("A", 1.0, [0, 0, 3, 3])), truth, "voc07")
    assert (result.num_tp, result.num_fp) == (1, 0)
    # Touching boxes share one pixel column under the inclusive convention.
    assert voc_iou([0, 0, 9, 9], [[9, 0, 18, 9]])[0] == pytest.approx(10 / 190, **EXACT)
    assert voc_iou([0, 0, 9, 9], [[10, 0, 19, 9]])[0] == 0.0


def test_iou_of_exactly_one_half_matches_like_the_devkit():
    # GT [1,1,10,10] is 10x10 = 100 px; det [1,1,10,20] is 10x20 = 200 px; IoU = 100/200 = 0.5 exactly.
    # VOCevaldet tests `ovmax >= minoverlap` -> TP; py-faster-rcnn's voc_eval.py tests `> 0.5` -> FP.
    truth = {"A": gt([[1, 1, 10, 10]])}
    d = dets(("A", 1.0, [1, 1, 10, 20]))
    assert voc_iou([1, 1, 10, 20], truth["A"].boxes)[0] == 0.5
    assert match_detections(d, truth).tp.tolist() == [True]
    assert match_detections(d, truth, strict_threshold=True).fp.tolist() == [True]


# ---------------------------------------------------------------------------------------------
# (g) the two AP definitions
# ---------------------------------------------------------------------------------------------


def test_eleven_point_and_area_metrics_differ():
    # Two objects, one found by the top detection: recall 1/2 at precision 1.
    # VOC07: t = 0, .1, .2, .3, .4, .5 have precision 1 (recall 0.5 >= 0.5), t = .6 ... 1 have 0 -> 6/11.
    # VOC12: area = 1/2 * 1 = 1/2.
    assert voc_ap([0.5], [1.0], "voc07") == pytest.approx(6 / 11, **EXACT)
    assert voc_ap([0.5], [1.0], "voc12") == pytest.approx(0.5, **EXACT)
    # A recall of exactly 3/10 is below the devkit's t = 0.30000000000000004: only t = 0, .1, .2 count -> 3/11.
    assert voc_ap(np.array([3.0]) / 10.0, [1.0], "voc07") == pytest.approx(3 / 11, **EXACT)
    # Envelope: a precision dip is lifted by the better precision at higher recall.
    # recall .25 .5 .75, precision 1 .5 .75 -> envelope 1 .75 .75 -> area .25 + .25*.75 + .25*.75 = .625
    assert voc_ap([0.25, 0.5, 0.75], [1.0, 0.5, 0.75], "voc12") == pytest.approx(0.625, **EXACT)
    assert voc_ap([], [], "voc07") == 0.0 and voc_ap([], [], "voc12") == 0.0
    with pytest.raises(ValueError, match="recall has 2 points but precision has 1"):
        voc_ap([0.1, 0.2], [1.0], "voc07")


def test_voc07_thresholds_are_matlabs_colon_range():
    # VOCevaldet.m: `for t=0:0.1:1`; MATLAB builds a + k*d for the first half and b - (n-k)*d for the second.
    assert VOC07_THRESHOLDS == (0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert VOC07_THRESHOLDS[3] != 3 / 10 and VOC07_THRESHOLDS[6:8] != tuple(np.arange(0, 1.1, 0.1)[6:8])


def _curve(outcomes: str, positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall (TP / positives) and precision per ranked detection, by precision_recall: "T" a TP, "F" a FP."""
    tp = np.array([c == "T" for c in outcomes])
    return precision_recall(MatchResult(order=np.arange(len(tp)), tp=tp, fp=~tp, num_positives=positives))


@pytest.mark.parametrize(("outcomes", "expected"), [
    # recall .1 .2 .3 at precision 1: 3/10 misses t = 0.30000000000000004 -> t = 0, .1, .2 -> 3/11 (k/10: 4/11)
    ("TTT", 3 / 11),
    # recall up to 6/10 = 0.6, precision 1: t = 0 ... 0.6 (7 thresholds) -> 7/11
    # (numpy.arange's 0.6000000000000001: 6/11)
    ("TTTTTT", 7 / 11),
    # T T T F T T T T: recall .1 .2 .3 .3 .4 .5 .6 .7, precision 1 1 1 3/4 4/5 5/6 6/7 7/8.
    # t = 0, .1, .2 -> 1; t = 0.30000000000000004 ... 0.7 (recall 7/10 reaches 1 - 3*0.1 = 0.7) -> 7/8 (5 thresholds);
    # t = .8, .9, 1 -> 0. AP = (3 + 5 * 7/8) / 11 (k/10 would give (4 + 4 * 7/8) / 11, numpy.arange (3 + 4 * 7/8) / 11).
    ("TTTFTTTTF", (3 + 5 * 7 / 8) / 11),
])  # fmt: skip
def test_voc07_recalls_of_exactly_three_six_and_seven_tenths(outcomes, expected):
    recall, precision = _curve(outcomes, positives=10)
    assert recall.max() in (3 / 10, 6 / 10, 7 / 10)
    assert voc_ap(recall, precision, "voc07") == pytest.approx(expected, **EXACT)


# ---------------------------------------------------------------------------------------------
# (h) devkit result files
# ---------------------------------------------------------------------------------------------


def test_devkit_files_round_trip(tmp_path):
    by_class = {"cat": TINY_DETS, "dog": ClassDetections.empty()}
    paths = write_devkit_results(tmp_path, "test", by_class)
    assert sorted(p.name for p in paths) == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    first = (tmp_path / "comp4_det_test_cat.txt").read_text().splitlines()[0].split()
    assert first[0] == "B" and [float(v) for v in first[1:]] == [0.7, 22, 22, 60, 60]
    assert (tmp_path / "comp4_det_test_dog.txt").read_text() == ""

    back = read_devkit_results(tmp_path, "test", ["cat", "dog"])
    assert back["cat"].image_ids == TINY_DETS.image_ids
    np.testing.assert_array_equal(back["cat"].scores, TINY_DETS.scores)
    np.testing.assert_array_equal(back["cat"].boxes, TINY_DETS.boxes)
    assert len(back["dog"]) == 0
    assert evaluate_class(back["cat"], TINY_GT, "voc07").ap == pytest.approx(6 / 11, **EXACT)

    with pytest.raises(FileNotFoundError, match="comp4_det_test_bird.txt"):
        read_devkit_results(tmp_path, "test", ["bird"])
    assert len(read_devkit_results(tmp_path, "test", ["bird"], missing_ok=True)["bird"]) == 0
    with pytest.raises(ValueError, match="whitespace"):
        write_devkit_results(tmp_path, "test", {"cat": dets(("a b", 0.5, [0, 0, 1, 1]))})


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("000002 0.5 1 2 3", r"line 2: expected 6 fields .* got 5"),
        ("000002 high 1 2 3 4", r"line 2: score is not a number: 'high'"),
        ("000002 0.5 1 2 nan 4", r"line 2: xmax is not finite"),
    ],
)
def test_malformed_devkit_line_names_file_line_and_problem(tmp_path, bad_line, problem):
    path = tmp_path / "comp4_det_val_cat.txt"
    path.write_text("000001 0.9 1 2 3 4\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=r"comp4_det_val_cat\.txt, " + problem):
        read_devkit_results(tmp_path, "val", ["cat"])


# ---------------------------------------------------------------------------------------------
# (i) COCO through pycocotools
# ---------------------------------------------------------------------------------------------

CATEGORY_IDS = [1, 5, 9]  # non-contiguous on purpose, like COCO's


def synthetic_coco(rng: np.random.Generator, num_images: int = 4) -> tuple[dict, list[dict]]:
    """A tiny instances dict (iscrowd 0, areas set) and noisy detections for it."""
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(0, 5))):
            w, h = (float(v) for v in rng.uniform(8, 250, size=2))  # small, medium and large objects
            x, y = float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h))
            cat = int(rng.choice(CATEGORY_IDS))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            if rng.random() < 0.8:  # a jittered detection, sometimes with the wrong class
                jx, jy, jw, jh = rng.normal(0, 0.1, size=4) * [w, h, w, h]
                det_cat = cat if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
                detections.append({"image_id": image_id, "category_id": det_cat,
                                   "bbox": [x + jx, y + jy, max(1.0, w + jw), max(1.0, h + jh)],
                                   "score": float(rng.random())})  # fmt: skip
        for _ in range(int(rng.integers(0, 3))):  # background false positives
            w, h = (float(v) for v in rng.uniform(8, 200, size=2))
            detections.append({"image_id": image_id, "category_id": int(rng.choice(CATEGORY_IDS)),
                               "bbox": [float(rng.uniform(0, 600 - w)), float(rng.uniform(0, 440 - h)), w, h],
                               "score": float(rng.random())})  # fmt: skip
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def pycocotools_directly(gt_path, detections) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return {k: (100 * float(v) if v >= 0 else float(v)) for k, v in zip(COCO_METRICS, e.stats[:6])}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_wrapper_equals_pycocotools(tmp_path, seed, capsys):
    instances, detections = synthetic_coco(np.random.default_rng(seed))
    assert detections
    gt_path = tmp_path / "instances.json"
    gt_path.write_text(json.dumps(instances))
    expected = pycocotools_directly(gt_path, detections)
    capsys.readouterr()

    untouched = copy.deepcopy(detections)
    got = evaluate_coco(gt_path, detections)
    assert capsys.readouterr().out == ""  # quiet by default
    assert detections == untouched  # loadRes's added keys did not leak into the caller's list
    assert set(got) == set(COCO_METRICS)
    for key in COCO_METRICS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key

    # Same through a results file written atomically, and with numpy scalars in the entries.
    results_path = write_coco_results(tmp_path / "out" / "results.json", detections)
    assert not [p for p in results_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert evaluate_coco(gt_path, results_path) == got
    numpy_entries = [{**d, "image_id": np.int64(d["image_id"]), "score": np.float32(d["score"]),
                      "bbox": np.asarray(d["bbox"])} for d in detections]  # fmt: skip
    assert evaluate_coco(gt_path, numpy_entries)["AP50"] == pytest.approx(got["AP50"], abs=1e-4)


def test_coco_perfect_detections_give_100(tmp_path):
    instances, _ = synthetic_coco(np.random.default_rng(3))
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in instances["annotations"]]  # fmt: skip
    gt_path = tmp_path / "instances.json"
    gt_path.write_text(json.dumps(instances))
    got = evaluate_coco(gt_path, perfect)
    assert got["AP"] == pytest.approx(100.0) and got["AP50"] == pytest.approx(100.0)


def test_coco_empty_detections_give_zeros_with_a_warning(tmp_path):
    instances, _ = synthetic_coco(np.random.default_rng(4))
    gt_path = tmp_path / "instances.json"
    gt_path.write_text(json.dumps(instances))
    with pytest.warns(UserWarning, match="no detections"):
        assert evaluate_coco(gt_path, []) == {k: 0.0 for k in COCO_METRICS}
    empty_file = tmp_path / "empty.json"
    empty_file.write_text("[]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate_coco(gt_path, empty_file)["AP"] == 0.0
    assert any("empty.json" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "mutate, field, problem",
    [
        (lambda d: d[1].pop("score"), "score", "missing"),
        (lambda d: d[1].update(image_id=999), "image_id", "999 is not an image"),
        (lambda d: d[1].update(category_id=2), "category_id", "2 is not a category"),
        (lambda d: d[1].update(bbox=[1, 2, 3]), "bbox", "expected"),
        (lambda d: d[1].update(bbox=[1, 2, -3, 4]), "bbox", "negative width"),
    ],
)
def test_coco_malformed_results_file_names_file_entry_and_field(tmp_path, mutate, field, problem):
    instances, _ = synthetic_coco(np.random.default_rng(5))
    gt_path = tmp_path / "instances.json"
    gt_path.write_text(json.dumps(instances))
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5} for _ in range(3)]
    mutate(results)
    bad = tmp_path / "bad_results.json"
    bad.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=rf"bad_results\.json: entry 1, field '{field}': {problem}"):
        evaluate_coco(gt_path, bad)


def test_coco_results_file_that_is_not_json(tmp_path):
    instances, _ = synthetic_coco(np.random.default_rng(6))
    gt_path = tmp_path / "instances.json"
    gt_path.write_text(json.dumps(instances))
    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        evaluate_coco(gt_path, bad)
