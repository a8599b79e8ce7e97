"""torchvision's Faster R-CNN checkpoints (fasterrcnn_resnet50_fpn and _v2) through detection.eval and
detection.train --init, unchanged.

The checkpoints are seeded random-init torchvision models (91 outputs) with planted heads, so that
they detect something: a random-init detector scores every region about 1/91 (nothing passes the
0.05 threshold) and its RPN keeps ~1,000 overlapping proposals. :func:`plant` rescales the RPN
objectness and the box classifier / regressor to a set output spread, widens the proposals (few
survive NMS: the box heads stay cheap) and biases the background and COCO's unused "N/A" ids down.

The images are upright strips (200×6 and 160×8 px, height × width): torchvision's transform scales
them to 1333×40 and 1333×67 (the 1333 limit binds), which keeps R50-FPN at "800/1333" to about a
second per image here. Upright, not lying: MultiScaleRoIAlign infers its level scales once, from the
first batch's feature *heights*, and a 40-px-high image padded to 64 px would give it wrong ones.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from backbones.datasets import FASHION_MNIST_CLASSES, ArrayDataset
from detection.datasets import COCODetection, read_image
from detection.eval import main as eval_main
from detection.fashion_det import FASHION_DET_CLASSES, generate
from detection.inference import Prediction, check_category_names, to_dataset_labels
from detection.torchvision_checkpoints import (
    NotATorchvisionDetector,
    coco_category_names,
    identify_checkpoint,
    load_into_new_detector,
    load_torchvision_detector,
)
from detection.train import build_detector
from detection.train import main as train_main

BUILDERS = {"v1": torchvision.models.detection.fasterrcnn_resnet50_fpn,
            "v2": torchvision.models.detection.fasterrcnn_resnet50_fpn_v2}  # fmt: skip
COCO_NAMES = coco_category_names()
NOT_USED = [category_id for category_id, name in enumerate(COCO_NAMES) if name == "N/A"]
IMAGES = {139: (200, 6), 285: (160, 8)}  # COCO image id -> (height, width)


def _capture(seen: dict, name: str):
    def hook(module, inputs, output) -> None:
        seen.setdefault(name, inputs[0])

    return hook


def _calibrate(layer: torch.nn.Module, inputs: torch.Tensor, std: float) -> None:
    layer.bias.zero_()
    layer.weight.mul_(std / layer(inputs).std())


@torch.no_grad()
def plant(model: torch.nn.Module) -> torch.nn.Module:
    """Set output spreads on a strip image (objectness logits std 1, RPN deltas 0.3 with 30x wider
    proposals, class logits 1.5, box deltas 1), background and N/A logits down (module docstring)."""
    model.eval()
    strip = torch.linspace(0, 1, 200 * 4).reshape(1, 200, 4).repeat(3, 1, 1)
    batch, _ = model.transform([strip])
    rpn = model.rpn.head
    rpn_input = rpn.conv(model.backbone(batch.tensors)["0"])
    _calibrate(rpn.cls_logits, rpn_input, 1.0)
    _calibrate(rpn.bbox_pred, rpn_input, 0.3)
    rpn.bbox_pred.bias.view(-1, 4)[:, 2:] = math.log(30.0)  # dw, dh: proposals 30x the anchors
    seen: dict[str, torch.Tensor] = {}
    predictor = model.roi_heads.box_predictor
    hook = predictor.cls_score.register_forward_hook(_capture(seen, "box"))
    model([strip])
    hook.remove()
    _calibrate(predictor.cls_score, seen["box"], 1.5)
    _calibrate(predictor.bbox_pred, seen["box"], 1.0)
    predictor.cls_score.bias[0] = -4.0
    predictor.cls_score.bias[NOT_USED] = -20.0
    return model


def coco_document() -> dict:
    categories = [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in enumerate(COCO_NAMES)
                  if cid > 0 and name != "N/A"]  # fmt: skip
    images = [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h}
              for image_id, (h, w) in IMAGES.items()]  # fmt: skip
    annotations = [{"id": 1, "image_id": 139, "category_id": 1, "bbox": [1.0, 10.0, 4.0, 30.0], "iscrowd": 0},
                   {"id": 2, "image_id": 285, "category_id": 90, "bbox": [2.0, 100.0, 5.0, 40.0],
                    "iscrowd": 0}]  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco_document()))
    (root / "val2017").mkdir()
    pixels = np.random.default_rng(0)
    for image_id, (h, w) in IMAGES.items():
        array = pixels.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / "val2017" / f"{image_id:012d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, coco_root) -> dict[str, tuple[Path, list[dict]]]:
    """{version: (checkpoint path, torchvision's own detections on the test images in image-id order)}."""
    root = tmp_path_factory.mktemp("checkpoints")
    images = [read_image(coco_root / "val2017" / f"{image_id:012d}.jpg").float() / 255 for image_id in sorted(IMAGES)]
    out = {}
    for version, builder in BUILDERS.items():
        torch.manual_seed(0)
        model = plant(builder(weights=None, weights_backbone=None, num_classes=91))
        path = root / f"{version}.pth"
        torch.save(model.state_dict(), path)
        with torch.no_grad():
            out[version] = (path, model(images))  # one batch, as detection.eval runs them
    return out


@pytest.fixture(scope="module")
def fashion_det(tmp_path_factory) -> Path:
    def fake(n: int, seed: int) -> ArrayDataset:
        generator = torch.Generator().manual_seed(seed)
        images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
        images[:, :, 6:22, 8:20] = (torch.rand(n, 1, 16, 12, generator=generator) * 155 + 100).to(torch.uint8)
        return ArrayDataset(images, torch.arange(n) % 10, list(FASHION_MNIST_CLASSES), f"fake{seed}")

    root = tmp_path_factory.mktemp("fashion_det")
    generate(root, seed=0, train_images=2, test_images=1, canvas=64, min_size=20, max_size=30, max_objects=2,
             fashion_mnist=(fake(20, 1), fake(20, 2)), force=True)  # fmt: skip
    return root


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_eval_gives_torchvisions_own_detections_with_coco_category_ids(version, checkpoints, coco_root, tmp_path,
                                                                       capsys):  # fmt: skip
    path, reference = checkpoints[version]
    eval_main(["--backbone", "resnet50", "--weights", str(path), "--dataset", "coco", "--data-root", str(coco_root),
               "--output", str(tmp_path / "out"), "--json", str(tmp_path / "numbers.json")])  # fmt: skip
    name = "fasterrcnn_resnet50_fpn" + ("_v2" if version == "v2" else "")
    assert f"torchvision {name}" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "numbers.json").read_text())) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    results = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    expected = [(image_id, box, int(label), float(score)) for image_id, found in zip(sorted(IMAGES), reference)
                for box, label, score in zip(found["boxes"].tolist(), found["labels"], found["scores"])]  # fmt: skip
    assert len(expected) >= 10 and len(results) == len(expected)  # the planted heads detect, nothing dropped
    assert [r["image_id"] for r in results] == [e[0] for e in expected]
    assert [r["category_id"] for r in results] == [e[2] for e in expected]  # torchvision's labels ARE the ids
    assert max(r["category_id"] for r in results) > 12  # past COCO's first unused id: label != contiguous index
    boxes = np.array([r["bbox"] for r in results])
    x1, y1, x2, y2 = np.array([e[1] for e in expected]).T
    np.testing.assert_allclose(boxes, np.stack([x1, y1, x2 - x1, y2 - y1], 1), rtol=0, atol=1e-4)
    np.testing.assert_allclose([r["score"] for r in results], [e[3] for e in expected], rtol=0, atol=1e-6)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_checkpoint_is_identified_and_built_with_torchvisions_settings(version, checkpoints):
    path, _ = checkpoints[version]
    found = identify_checkpoint(path)
    assert (found.version, found.backbone, found.num_classes, found.is_coco) == (version, "resnet50", 91, True)
    model, config = load_torchvision_detector(path)
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    heads, rpn = model.roi_heads, model.rpn
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.05, 0.5, 100)
    assert (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], rpn.nms_thresh) == (1000, 1000, 0.7)
    assert config["torchvision"]["checkpoint"] == found.name and config["design"] == "fpn"
    assert config["model"]["rpn_conv_depth"] == (2 if version == "v2" else 1)
    assert len(config["class_names"]) == 90 and config["class_names"][89] == "toothbrush"
    assert config["category_ids"] == list(range(1, 91)) and config["class_names"][11] == "N/A"
    assert json.loads(json.dumps(config)) == config  # as a run's config.json (the train test rebuilds from one)


def test_a_coco_checkpoint_is_refused_on_other_classes(checkpoints, fashion_det, tmp_path):
    path, _ = checkpoints["v1"]
    with pytest.raises(SystemExit, match=r"COCO detector .* is scored on --dataset coco, not fashion-det; .* --init"):
        eval_main(["--backbone", "resnet50", "--weights", str(path), "--dataset", "fashion-det", "--data-root",
                   str(fashion_det), "--output", str(tmp_path / "out")])  # fmt: skip
    # a COCO-layout directory whose categories are not COCO's (fashion_det's coco/) is named
    with pytest.raises(ValueError, match=f"instances_val2017.json: category id 1 is '{FASHION_DET_CLASSES[0]}', but to "
                                         "the detector it is 'person'"):  # fmt: skip
        check_category_names(list(zip(range(1, 91), COCO_NAMES[1:])), COCODetection(fashion_det / "coco", "val2017"))
    with pytest.raises(SystemExit, match=r"v1.pth: a torchvision fasterrcnn_resnet50_fpn checkpoint, whose backbone is "
                                         r"resnet50, not resnet101"):  # fmt: skip
        eval_main(
            ["--backbone", "resnet101", "--weights", str(path), "--dataset", "coco", "--data-root", str(tmp_path)]
        )
    assert not (tmp_path / "out").exists()


def test_detections_of_categories_the_annotation_file_lacks_are_dropped(coco_root):
    dataset = COCODetection(coco_root, "val2017")
    categories = list(zip(range(1, 91), COCO_NAMES[1:]))
    found = Prediction(139, np.zeros((3, 4), dtype=np.float32), np.array([0.9, 0.8, 0.7]), np.array([90, 12, 1]))
    [mapped], dropped = to_dataset_labels([found], categories, dataset)
    assert dropped == 1 and mapped.labels.tolist() == [80, 1]  # 12 is "N/A"; toothbrush is the 80th category
    assert [dataset.label_to_category_id[int(label)] for label in mapped.labels] == [90, 1]
    assert mapped.scores.tolist() == [0.9, 0.7]


def test_train_init_fine_tunes_a_v2_checkpoint_on_other_classes(checkpoints, fashion_det, tmp_path, caplog):
    path, _ = checkpoints["v2"]
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="detection.train"):
        train_main(["--backbone", "resnet50", "--init", str(path), "--dataset", "fashion-det", "--data-root",
                    str(fashion_det), "--max-iters", "2", "--images-per-batch", "1", "--workers", "0", "--no-progress",
                    "--min-size", "64", "--max-size", "64", "--output", str(run)])  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["design"] == "fpn" and config["backbone_weights"] is None
    assert {k: config["model"][k] for k in ("rpn_conv_depth", "fpn_batchnorm", "box_head", "min_size")} == {
        "rpn_conv_depth": 2,
        "fpn_batchnorm": True,
        "box_head": "conv_fc",
        "min_size": 64,
    }
    predictor = ["roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
                 "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight"]  # fmt: skip
    assert config["init"] == {
        "file": str(path),
        "checkpoint": "fasterrcnn_resnet50_fpn_v2",
        "version": "v2",
        "num_classes": 91,
        "class_rows_by_category_id": False,
        "reinitialised": predictor,
    }
    assert "re-initialised for 11 outputs instead of 91" in caplog.text
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals and "voc_mAP" in evals[-1]

    from detection.eval import load_detector

    model, _ = load_detector("resnet50", run)  # rebuilt from config.json, loaded strictly
    trained = model.state_dict()
    start = torch.load(path, weights_only=True)
    assert trained["roi_heads.box_predictor.cls_score.weight"].shape == (11, 1024)
    for frozen in (
        "backbone.body.conv1.weight",
        "backbone.body.layer1.0.conv1.weight",
        "backbone.body.bn1.running_var",
    ):
        assert torch.equal(trained[frozen], start[frozen]), frozen  # conv1 and layer1 are frozen (--freeze-at 2)
    assert not torch.equal(trained["rpn.head.conv.1.0.weight"], start["rpn.head.conv.1.0.weight"])  # trained on


def test_init_keeps_the_class_rows_of_coco_categories(checkpoints):
    path, _ = checkpoints["v1"]
    state = torch.load(path, weights_only=True)
    detector = identify_checkpoint(path)
    config = {"backbone": "resnet50", "backbone_weights": None, "design": "fpn", "freeze_at": 2,
              "model": {"min_size": 64, "max_size": 64, **detector.parts}}  # fmt: skip
    model = build_detector(config, 3)
    assert len(load_into_new_detector(model, state, detector)) == 4  # no category ids: the class layers start anew
    assert load_into_new_detector(model, state, detector, category_ids=[1, 44, 90]) == []
    weights = model.state_dict()
    rows = torch.tensor([0, 1, 44, 90])
    assert torch.equal(weights["roi_heads.box_predictor.cls_score.weight"],
                       state["roi_heads.box_predictor.cls_score.weight"][rows])  # fmt: skip
    box_rows = (rows[:, None] * 4 + torch.arange(4)).reshape(-1)
    assert torch.equal(
        weights["roi_heads.box_predictor.bbox_pred.bias"], state["roi_heads.box_predictor.bbox_pred.bias"][box_rows]
    )
    assert torch.equal(weights["backbone.fpn.layer_blocks.0.0.weight"], state["backbone.fpn.layer_blocks.0.0.weight"])


def _classifier(path: Path) -> str:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return r"not a torchvision Faster R-CNN checkpoint: found a classifier state dict \(an? 18-layer basic-block net"


def _mask_rcnn(path: Path) -> str:
    """maskrcnn_resnet50_fpn's key families, with tiny tensors (only the keys are read before the error)."""
    keys = ["backbone.body.conv1.weight", "backbone.fpn.inner_blocks.0.0.weight", "rpn.head.conv.0.0.weight",
            "roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.cls_score.weight",
            "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.mask_head.mask_fcn1.0.weight",
            "roi_heads.mask_predictor.mask_fcn_logits.weight"]  # fmt: skip
    torch.save({key: torch.zeros(1) for key in keys}, path)
    return r"not a torchvision Faster R-CNN checkpoint: found a Mask R-CNN checkpoint \(roi_heads.mask_\* keys\)"


def _truncated(path: Path) -> str:
    whole = path.with_suffix(".whole")
    torch.save({"roi_heads.box_predictor.cls_score.weight": torch.zeros(91, 1024)}, whole)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return r"not a readable torch state dict, truncated or corrupt\?"


def _not_a_checkpoint(path: Path) -> str:
    path.write_text("image_id,score\n1,0.5\n")
    return r"not a readable torch state dict"


@pytest.mark.parametrize("kind", ["classifier", "mask_rcnn", "truncated", "not_a_checkpoint"])
def test_other_files_get_one_clear_error_naming_the_file(kind, coco_root, tmp_path):
    path = tmp_path / f"{kind}.pth"
    message = {
        "classifier": _classifier,
        "mask_rcnn": _mask_rcnn,
        "truncated": _truncated,
        "not_a_checkpoint": _not_a_checkpoint,
    }[kind](path)
    with pytest.raises(ValueError, match=message) as error:
        identify_checkpoint(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    assert isinstance(error.value, NotATorchvisionDetector) == (kind in ("classifier", "mask_rcnn"))
    with pytest.raises(SystemExit, match=f"^error: {path}.*{message}") as exit_info:
        eval_main(
            ["--backbone", "resnet50", "--weights", str(path), "--dataset", "coco", "--data-root", str(coco_root)]
        )
    assert "\n" not in str(exit_info.value)
    with pytest.raises(SystemExit, match=f"^error: {path}.*{message}"):
        train_main(["--backbone", "resnet50", "--init", str(path), "--dataset", "coco", "--data-root", str(coco_root)])


def test_a_missing_checkpoint_is_named(coco_root, tmp_path):
    missing = tmp_path / "fasterrcnn.pth"
    with pytest.raises(
        SystemExit,
        match=f"^error: {re.escape(str(missing))}: no such run directory, checkpoint file or zoo detector id",
    ):
        eval_main(
            ["--backbone", "resnet50", "--weights", str(missing), "--dataset", "coco", "--data-root", str(coco_root)]
        )
    with pytest.raises(SystemExit, match=f"^error: weights file not found: {missing}$"):
        train_main(
            ["--backbone", "resnet50", "--init", str(missing), "--dataset", "coco", "--data-root", str(coco_root)]
        )


def test_init_flags_that_contradict_the_checkpoint_are_refused(checkpoints, fashion_det, tmp_path):
    path, _ = checkpoints["v1"]
    common = ["--init", str(path), "--dataset", "fashion-det", "--data-root", str(fashion_det), "--output",
              str(tmp_path / "run")]  # fmt: skip
    for flags, message in (
        (["--backbone", "resnet101"], "whose backbone is resnet50, not --backbone resnet101"),
        (["--backbone", "resnet50", "--design", "c4"], "is an FPN detector, not --design c4"),
        (["--backbone", "resnet50", "--backbone-weights", "x.pth"], "leave out --backbone-weights"),
    ):
        with pytest.raises(SystemExit, match=message):
            train_main(flags + common)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_deploy_export_takes_the_checkpoint_unchanged(version, checkpoints, coco_root, tmp_path):
    """``deploy.export --detector fpn --weights CKPT``: one ONNX graph whose detections are torchvision's own
    (labels = COCO category ids, 1-based into the sidecar's class_names)."""
    import deploy
    from deploy.export import main as export_main

    path, _ = checkpoints[version]
    out = tmp_path / f"{version}.onnx"
    export_main(["--model", "resnet50", "--detector", "fpn", "--weights", str(path), "--output", str(out)])
    predictor = deploy.load(out)
    sidecar = predictor.sidecar
    assert sidecar["preprocessing"]["min_size"] == 800 and sidecar["preprocessing"]["max_size"] == 1333
    assert len(predictor.class_names) == 90 and predictor.class_names[0] == "person"
    image = read_image(coco_root / "val2017" / f"{min(IMAGES):012d}.jpg").float() / 255
    boxes, labels, scores = predictor.raw(image)
    model = BUILDERS[version](weights=None, weights_backbone=None, num_classes=91)
    model.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        expected = model.eval()([image])[0]  # torchvision's own call on this one image
    assert len(labels) == len(expected["labels"]) >= 5
    assert labels.tolist() == expected["labels"].tolist()
    torch.testing.assert_close(boxes, expected["boxes"], rtol=0, atol=0.05)  # onnxruntime vs PyTorch arithmetic
    torch.testing.assert_close(scores, expected["scores"], rtol=0, atol=1e-4)
