"""detection.train and detection.eval end to end on a tiny Fashion-MNIST detection benchmark."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbones.datasets import FASHION_MNIST_CLASSES, ArrayDataset
from detection.catalog import evaluation_sets
from detection.datasets import continuous_to_voc
from detection.eval import main as eval_main
from detection.fashion_det import generate
from detection.train import main as train_main
from detection.voc_eval import ClassDetections, write_devkit_results


def _fake_fashion_mnist(n, seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 6:22, 8:20] = (torch.rand(n, 1, 16, 12, generator=generator) * 155 + 100).to(torch.uint8)
    return ArrayDataset(images, torch.arange(n) % 10, list(FASHION_MNIST_CLASSES), f"fake{seed}")


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion_det")
    generate(root, seed=0, train_images=8, test_images=6, canvas=96, min_size=20, max_size=40, max_objects=3,
             fashion_mnist=(_fake_fashion_mnist(40, 1), _fake_fashion_mnist(40, 2)), force=True)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def detector_run(benchmark, tmp_path_factory):
    run = tmp_path_factory.mktemp("det") / "run"
    train_main(["--backbone", "resnet20", "--dataset", "fashion-det", "--data-root", str(benchmark), "--max-iters", "3",
                "--images-per-batch", "4", "--workers", "0", "--log-every", "1", "--no-progress", "--output", str(run),
                "--min-size", "96", "--max-size", "96"])  # fmt: skip
    return run


def test_training_writes_config_losses_and_weights(detector_run):
    config = json.loads((detector_run / "config.json").read_text())
    assert config["design"] == "c4" and config["images_per_batch"] == 4 and config["channels"] == 3
    assert config["lr"] == pytest.approx(0.01)  # the recipe's 0.02 at 8 images, scaled to 4
    assert config["model"]["min_size"] == 96 and len(config["class_names"]) == 10
    records = [json.loads(line) for line in (detector_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and {"loss_classifier", "loss_objectness"} <= set(r) for r in train)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and {"voc_mAP", "coco_AP", "coco_AP50"} <= set(evals[-1])
    assert (detector_run / "final.safetensors").stat().st_size > 0


def test_eval_writes_results_json_and_pictures_and_rescoring_them_agrees(detector_run, benchmark, tmp_path, capsys):
    out = tmp_path / "eval.json"
    eval_main(["--backbone", "resnet20", "--weights", str(detector_run), "--dataset", "fashion-det",
               "--data-root", str(benchmark), "--json", str(out), "--visualize", "2",
               "--output", str(tmp_path / "e")])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Table 7 layout" in printed and "Table 8 layout" in printed and "ResNet-101 (paper" in printed
    numbers = json.loads(out.read_text())
    assert numbers["voc"]["metric"] == "voc07" and len(numbers["voc"]["AP"]) == 10
    assert set(numbers["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    pictures = sorted((tmp_path / "e" / "pictures").iterdir())
    assert len(pictures) == 2 and Image.open(pictures[0]).size == (96, 96)
    assert len(list((tmp_path / "e").glob("comp4_det_test_*.txt"))) == 10

    rescored = tmp_path / "rescored.json"
    eval_main(["--backbone", "resnet20", "--detections", str(tmp_path / "e"), "--dataset", "fashion-det",
               "--data-root", str(benchmark), "--json", str(rescored)])  # fmt: skip
    assert json.loads(rescored.read_text())["mAP"] == pytest.approx(numbers["voc"]["mAP"])
    eval_main(["--backbone", "resnet20", "--detections", str(tmp_path / "e" / "coco_results.json"),
               "--dataset", "fashion-det", "--data-root", str(benchmark), "--json", str(rescored)])  # fmt: skip
    assert json.loads(rescored.read_text())["AP"] == pytest.approx(numbers["coco"]["AP"])


def test_precomputed_perfect_detections_score_100(benchmark, tmp_path):
    voc = evaluation_sets("fashion-det", benchmark)["voc"]
    by_class = {name: ([], [], []) for name in voc.class_names}
    coco_results = []
    for index in range(len(voc)):
        target = voc.target(index)
        for box, label in zip(target["boxes"], target["labels"]):
            ids, scores, boxes = by_class[voc.class_names[int(label) - 1]]
            ids.append(str(target["image_id"]))
            scores.append(1.0)
            boxes.append(np.asarray(continuous_to_voc(box.numpy())))
            x1, y1, x2, y2 = box.tolist()
            coco_results.append({"image_id": int(target["image_id"]), "category_id": int(label),
                                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0})  # fmt: skip
    write_devkit_results(tmp_path / "dets", "test", {name: ClassDetections.create(i, s, np.array(b).reshape(-1, 4))
                                                    for name, (i, s, b) in by_class.items()})  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco_results))
    for detections, key in ((tmp_path / "dets", "mAP"), (tmp_path / "coco.json", "AP")):
        out = tmp_path / f"{key}.json"
        eval_main(["--backbone", "resnet20", "--detections", str(detections), "--dataset", "fashion-det",
                   "--data-root", str(benchmark), "--json", str(out)])  # fmt: skip
        assert json.loads(out.read_text())[key] == pytest.approx(100.0)
    # a line on an image the test set does not have names its file; a missing --detections says what it wants
    dog = next((tmp_path / "dets").glob("comp4_det_test_*.txt"))
    dog.write_text(dog.read_text() + "999999 0.9 1 1 5 5\n")
    with pytest.raises(SystemExit, match=rf"{dog.name}: image '999999' is not in fashion-det's test set"):
        eval_main(["--detections", str(tmp_path / "dets"), "--dataset", "fashion-det", "--data-root", str(benchmark)])
    with pytest.raises(SystemExit, match=r"--detections .*nowhere: not found \(a directory of comp4_det_test"):
        eval_main(["--detections", str(tmp_path / "nowhere"), "--dataset", "fashion-det", "--data-root",
                   str(benchmark)])  # fmt: skip


def test_scoring_precomputed_detections_needs_no_backbone(benchmark, tmp_path, capsys):
    voc = evaluation_sets("fashion-det", benchmark)["voc"]
    target = voc.target(0)
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    found = [{"image_id": int(target["image_id"]), "category_id": int(target["labels"][0]),
              "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0}]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(found))
    eval_main(["--detections", str(tmp_path / "results.json"), "--dataset", "fashion-det",
               "--data-root", str(benchmark), "--json", str(tmp_path / "out.json")])  # fmt: skip
    assert "results.json" in capsys.readouterr().out  # the table's row is named after the results
    assert 0 < json.loads((tmp_path / "out.json").read_text())["AP50"] < 100  # one object of several found
    with pytest.raises(SystemExit, match="--weights runs a model: give its --backbone too"):
        eval_main(["--weights", str(tmp_path), "--dataset", "fashion-det", "--data-root", str(benchmark)])
    with pytest.raises(SystemExit, match=r"--visualize, --batch-size: only when running a model \(--weights\)"):
        eval_main(["--detections", str(tmp_path / "results.json"), "--dataset", "fashion-det", "--data-root",
                   str(benchmark), "--visualize", "3", "--batch-size", "8"])  # fmt: skip


def test_a_detector_is_not_scored_on_a_test_set_of_other_classes(detector_run, benchmark, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(detector_run, other)
    config = json.loads((other / "config.json").read_text())
    config["class_names"] = [f"class-{i}" for i in range(len(config["class_names"]))]  # same count, other task
    (other / "config.json").write_text(json.dumps(config))
    refused = (
        r"the detector predicts 10 classes \(class-0, class-1, class-2, ...\); "
        r"fashion-det in .* has 10 classes \(tshirt_top, trouser, pullover, ...\)"
    )
    with pytest.raises(SystemExit, match=refused):
        eval_main(["--backbone", "resnet20", "--weights", str(other), "--dataset", "fashion-det",
                   "--data-root", str(benchmark), "--output", str(tmp_path / "eval")])  # fmt: skip
    assert not (tmp_path / "eval").exists()


def test_eval_errors_are_clear(benchmark, tmp_path):
    with pytest.raises(SystemExit, match="exactly one of --weights"):
        eval_main(["--backbone", "resnet20", "--dataset", "fashion-det", "--data-root", str(benchmark)])
    with pytest.raises(SystemExit, match="config.json is missing"):
        eval_main(["--backbone", "resnet20", "--weights", str(tmp_path), "--dataset", "fashion-det",
                   "--data-root", str(benchmark)])  # fmt: skip
    with pytest.raises(SystemExit, match="unknown model|error"):
        train_main(["--backbone", "resnet21", "--dataset", "fashion-det", "--data-root", str(benchmark)])
    with pytest.raises(SystemExit, match="VOC2007"):
        train_main(["--backbone", "resnet20", "--dataset", "voc07+12", "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--steps 5 9: at or past the run's end \(iteration 4\)"):
        train_main(["--backbone", "resnet20", "--dataset", "fashion-det", "--data-root", str(benchmark),
                    "--max-iters", "4", "--steps", "2", "5", "9", "--output", str(tmp_path / "late")])  # fmt: skip
    with pytest.raises(SystemExit, match="--eval-every: voc07\\+\\+12 has no public test set"):
        train_main(["--backbone", "resnet20", "--dataset", "voc07++12", "--data-root", str(tmp_path),
                    "--eval-every", "100"])  # fmt: skip
    with pytest.raises(SystemExit, match=r"^error: fashion-det in .*: 8 training images are fewer than one batch of 16 "
                                         r"\(--images-per-batch\)$"):  # fmt: skip
        train_main(["--backbone", "resnet20", "--dataset", "fashion-det", "--data-root", str(benchmark),
                    "--images-per-batch", "16", "--output", str(tmp_path / "big-batch")])  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "0"], "argument --lr: must be > 0, got 0"),
    (["--images-per-batch", "0"], "argument --images-per-batch: must be > 0, got 0"),
    (["--momentum", "1"], "argument --momentum: must lie in [0, 1), got 1"),
    (["--max-iters", "-3"], "argument --max-iters: must be > 0, got -3"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
])  # fmt: skip
def test_training_flags_out_of_range_are_refused_by_name(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--backbone", "resnet20", "--dataset", "fashion-det", "--data-root", str(tmp_path), *flags,
                    "--output", str(tmp_path / "run")])  # fmt: skip
    assert message in f"{exit_info.value.code} {capsys.readouterr().err}"
    assert not (tmp_path / "run").exists()


def test_compare_draws_a_row_per_run_and_a_column_per_image(detector_run, benchmark, tmp_path, capsys):
    from PIL import Image

    from detection.compare import main as compare_main
    from detection.compare import run_title

    out = tmp_path / "compare.png"
    assert compare_main([str(detector_run), str(detector_run), "--dataset", "fashion-det",
                         "--data-root", str(benchmark), "--output", str(out), "--images", "3",
                         "--threshold", "0.0", "--scale", "2"]) == 0  # fmt: skip
    assert f"wrote {out}" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert width > height > 0  # two rows of three canvases
    records = [json.loads(line) for line in (detector_run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "eval"][-1]
    title = run_title(detector_run, json.loads((detector_run / "config.json").read_text()))
    assert title == (f"resnet20 C4: VOC07 mAP {final['voc_mAP']:.1f}, COCO AP50 {final['coco_AP50']:.1f}, "
                     f"AP {final['coco_AP']:.1f}")  # fmt: skip
    from detection.zoo import zoo_detector

    config, _ = zoo_detector("det_resnet20_c4_fashion_det")
    assert run_title(Path("det_resnet20_c4_fashion_det"), config).endswith(
        "zoo det_resnet20_c4_fashion_det: VOC07 mAP 69.85, COCO AP50 70.97, AP 49.29"
    )  # as recorded, not 69.8
    capsys.readouterr()
    with pytest.raises(SystemExit):
        compare_main([str(detector_run), "--dataset", "fashion-det", "--data-root", str(benchmark), "--output",
                      str(tmp_path / "x.png"), "--images", "0"])  # fmt: skip
    assert "argument --images: must be > 0, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"config.json is missing"):
        compare_main([str(tmp_path), "--dataset", "fashion-det", "--data-root", str(benchmark), "--output",
                      str(tmp_path / "x.png")])  # fmt: skip
    assert not (tmp_path / "x.png").exists()


def test_compare_takes_one_title_per_run(detector_run, benchmark, tmp_path):
    from detection.compare import compare

    with pytest.raises(ValueError, match="give one title per run: 1 titles for 2 runs"):
        compare([detector_run, detector_run], "fashion-det", benchmark, tmp_path / "x.png", titles=["measured"])
    assert not (tmp_path / "x.png").exists()
    out = compare([detector_run], "fashion-det", benchmark, tmp_path / "y.png", images=2, titles=["measured here"])
    assert out == tmp_path / "y.png" and out.stat().st_size > 0


def test_bf16_training_evaluates_in_fp32_and_finishes(benchmark, tmp_path):
    """Found by a real run: under bf16 autocast the box head returned bfloat16 boxes, which the final
    evaluation could not turn into numpy, and the run ended without its weights."""
    run = tmp_path / "bf16"
    train_main(["--backbone", "resnet20", "--dataset", "fashion-det", "--data-root", str(benchmark), "--max-iters", "2",
                "--images-per-batch", "2", "--workers", "0", "--log-every", "1", "--no-progress", "--output", str(run),
                "--min-size", "96", "--max-size", "96", "--amp", "bf16"])  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [2] and {"voc_mAP", "coco_AP"} <= set(evals[0])
    assert (run / "final.safetensors").is_file()


def test_a_grayscale_zoo_backbone_run_reloads_with_its_channels_and_statistics(benchmark, tmp_path, capsys):
    """Found by a real run: detection.eval rebuilt a detector trained on a 1-channel zoo backbone with
    3 channels (state dict mismatch) and would have normalised with other statistics."""
    from detection.eval import load_detector

    run = tmp_path / "gray"
    train_main(["--backbone", "resnet20", "--backbone-weights", "resnet20_fashion_mnist_6ep",
                "--dataset", "fashion-det",
                "--data-root", str(benchmark), "--max-iters", "1", "--images-per-batch", "2", "--workers", "0",
                "--no-progress", "--output", str(run), "--min-size", "96", "--max-size", "96"])  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["channels"] == 1 and config["image_mean"] == [0.2863] and config["image_std"] == [0.354]
    model, _ = load_detector("resnet20", run)
    assert model.backbone_info.in_chans == 1 and model.transform.image_mean == [0.2863]
    # a run written before the statistics were recorded: they come from the backbone's zoo record
    del config["image_mean"], config["image_std"]
    (run / "config.json").write_text(json.dumps(config))
    model, _ = load_detector("resnet20", run)
    assert model.transform.image_mean == [0.2863] and model.transform.image_std == [0.354]
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line][-1]
    capsys.readouterr()
    eval_main(["--backbone", "resnet20", "--weights", str(run), "--dataset", "fashion-det",
               "--data-root", str(benchmark), "--json", str(tmp_path / "e.json")])  # fmt: skip
    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["voc"]["mAP"] == pytest.approx(final["voc_mAP"], abs=1e-6)  # the same model, the same numbers


def test_zoo_add_records_what_eval_measures_and_loads_back(detector_run, benchmark, tmp_path, monkeypatch, capsys):
    from detection.zoo import main as zoo_main
    from detection.zoo import read_detectors, zoo_detector

    zoo = tmp_path / "weights" / "zoo.json"
    zoo.parent.mkdir()
    monkeypatch.setenv("BACKBONES_ZOO", str(zoo))
    assert (
        zoo_main(["add", str(detector_run), "--id", "det_tiny", "--data-root", str(benchmark), "--device", "cpu"]) == 0
    )
    assert capsys.readouterr().out.startswith("added det_tiny: resnet20 c4 on fashion-det")
    record = read_detectors(zoo)["det_tiny"]
    assert record.path.read_bytes() == (detector_run / "final.safetensors").read_bytes()
    assert (zoo.parent / "det_tiny.metrics.jsonl").read_bytes() == (detector_run / "metrics.jsonl").read_bytes()
    assert record.metrics["command"].startswith("python -m detection.eval --backbone resnet20 --weights det_tiny")
    measured = tmp_path / "eval.json"
    eval_main(["--backbone", "resnet20", "--weights", str(detector_run), "--dataset", "fashion-det",
               "--data-root", str(benchmark), "--json", str(measured)])  # fmt: skip
    numbers = json.loads(measured.read_text())
    assert record.metrics["voc_mAP"] == round(numbers["voc"]["mAP"], 2)
    assert record.metrics["coco_AP"] == round(numbers["coco"]["AP"], 2)
    config, weights = zoo_detector("det_tiny")
    assert config["design"] == "c4" and weights == record.path
    with pytest.raises(SystemExit, match="detector id 'det_tiny' already exists"):
        zoo_main(["add", str(detector_run), "--id", "det_tiny", "--data-root", str(benchmark)])
    with pytest.raises(SystemExit, match=r"config\.json is missing: is .* a finished detection\.train run"):
        zoo_main(["add", str(tmp_path), "--id", "det_other", "--data-root", str(benchmark)])
    assert list(read_detectors(zoo)) == ["det_tiny"]
    # another manifest than the default one: the new record loads back from the manifest it was written to
    from detection.zoo import add_run

    other = tmp_path / "other" / "zoo.json"
    add_run(detector_run, "det_elsewhere", benchmark, zoo=other, device="cpu")
    assert list(read_detectors(other)) == ["det_elsewhere"] and list(read_detectors(zoo)) == ["det_tiny"]
