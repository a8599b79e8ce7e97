"""backbones.evaluate and backbones.zoo on a short real training run."""

import json
import re

import pytest
import torch

from backbones import create_model
from backbones.evaluate import evaluate
from backbones.evaluate import main as evaluate_main
from backbones.train import main as train_main
from backbones.weights import read_zoo
from backbones.zoo import add_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r20"
    train_main(["resnet20", "--dataset", "synthetic", "--max-iters", "60", "--batch-size", "32", "--lr", "0.05",
                "--log-every", "20", "--eval-every", "60", "--no-progress", "--output", str(run)])  # fmt: skip
    return run


def test_evaluate_a_run_matches_the_trainers_final_evaluation(trained_run, capsys):
    trainer_eval = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert trainer_eval["kind"] == "eval"
    result = evaluate("resnet20", [str(trained_run)], "synthetic")
    assert result["images"] == 1000
    assert result["top1_err"] == pytest.approx(trainer_eval["top1_err"], abs=0.01)
    assert result["top5_err"] <= result["top1_err"] < 90
    assert (
        evaluate_main(["resnet20", "--weights", str(trained_run / "final.safetensors"), "--dataset", "synthetic"]) == 0
    )
    assert f"top-1 error {result['top1_err']:.2f}%" in capsys.readouterr().out


def test_ensemble_averages_scores(trained_run, tmp_path):
    single = evaluate("resnet20", [str(trained_run)], "synthetic")
    twice = evaluate("resnet20", [str(trained_run), str(trained_run / "final.safetensors")], "synthetic")
    assert twice["top1_err"] == single["top1_err"]  # the same model twice: the same averaged scores
    out = tmp_path / "result.json"
    evaluate_main(["resnet20", "--weights", str(trained_run), "--weights", str(trained_run), "--dataset", "synthetic",
                   "--json", str(out)])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["top1_err"] == single["top1_err"] and saved["command"].startswith(
        "python -m backbones.evaluate resnet20"
    )


def test_models_for_another_set_of_classes_are_refused(trained_run, tmp_path):
    import shutil

    from PIL import Image

    renamed = tmp_path / "renamed"
    shutil.copytree(trained_run, renamed)
    config = json.loads((renamed / "config.json").read_text())
    config["class_names"] = [f"other-{i}" for i in range(len(config["class_names"]))]
    (renamed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="predict different classes: an ensemble averages scores class by class"):
        evaluate("resnet20", [str(trained_run), str(renamed)], "synthetic")
    with pytest.raises(ValueError, match=r"trained on the classes \['other-0'.*not the same task"):
        evaluate("resnet20", [str(renamed)], "synthetic")
    # ImageNet layout: a val tree that lacks one of the model's classes would shift every later label
    imagenet_run = tmp_path / "r18run"
    imagenet_run.mkdir()
    torch.manual_seed(0)
    from backbones.weights import save_weights

    save_weights(create_model("resnet18", num_classes=3), imagenet_run / "final.safetensors")
    (imagenet_run / "config.json").write_text(json.dumps({"arch": "resnet18", "constructor": {},
                                                          "class_names": ["n01", "n02", "n03"]}))  # fmt: skip
    for name in ("n01", "n03"):
        (tmp_path / "imagenet" / "val" / name).mkdir(parents=True)
        Image.new("RGB", (64, 48)).save(tmp_path / "imagenet" / "val" / name / "0.JPEG")
    with pytest.raises(ValueError, match=r"class folders do not match the expected 3 classes"):
        evaluate("resnet18", [str(imagenet_run)], "imagenet", tmp_path / "imagenet")


def test_a_recipe_key_an_older_run_lacks_is_recorded_with_the_value_it_trained_with(tmp_path):
    from backbones.engine import recipe_and_segments

    older = {"lr": 0.1, "amp": "bf16"}  # config.json of a run from before --random-erasing and --native-size
    keys = ("lr", "random_erasing", "erasing_fill", "native_size", "label_smoothing", "seed")
    recipe = recipe_and_segments(tmp_path, older, keys)
    assert recipe["recipe"] == {"lr": 0.1, "random_erasing": 0.0, "erasing_fill": None, "native_size": False,
                                "label_smoothing": 0.0, "seed": None, "amp": "bf16"}  # fmt: skip


def test_zoo_add_records_the_evaluated_metric_and_loads_back(trained_run, tmp_path, monkeypatch):
    zoo = tmp_path / "weights" / "zoo.json"
    zoo.parent.mkdir()
    monkeypatch.setenv("BACKBONES_ZOO", str(zoo))
    record = add_run(trained_run, "resnet20_synthetic")
    assert (
        record["metrics"]["command"]
        == "python -m backbones.evaluate resnet20 --weights resnet20_synthetic --dataset synthetic"
    )
    assert record["preprocessing"]["input_size"] == 32 and record["recipe"]["batch_size"] == 32
    assert record["recipe"]["amp"] == "none" and [s["from_iteration"] for s in record["segments"]] == [0]
    assert record["recipe"]["native_size"] is False and record["recipe"]["label_smoothing"] == 0.0
    # the run's log is kept beside the weights, so its curves outlive the run directory
    log = zoo.parent / record["log"]["file"]
    assert log.name == "resnet20_synthetic.metrics.jsonl"
    assert (
        log.read_bytes() == (trained_run / "metrics.jsonl").read_bytes() and record["log"]["size"] == log.stat().st_size
    )
    from backbones.analysis import main as analysis_main
    from backbones.analysis import read_metrics

    assert read_metrics("resnet20_synthetic") == read_metrics(trained_run)
    png = tmp_path / "curves.png"
    assert analysis_main(["ResNet-20=resnet20_synthetic", "--output", str(png)]) == 0 and png.stat().st_size > 0
    with pytest.raises(SystemExit, match="no_such_run: neither a run directory with a metrics.jsonl"):
        analysis_main(["no_such_run", "--output", str(png)])
    log.write_text(log.read_text() + "\n")
    with pytest.raises(SystemExit, match=r"zoo training log 'resnet20_synthetic': .* has \d+ bytes, the record says"):
        analysis_main(["resnet20_synthetic", "--output", str(png)])
    assert (zoo.parent / "resnet20_synthetic.safetensors").stat().st_size == record["size"]
    assert list(read_zoo(zoo)) == ["resnet20_synthetic"]
    by_id = evaluate("resnet20", ["resnet20_synthetic"], "synthetic")
    assert by_id["top1_err"] == record["metrics"]["top1_err"]
    model = create_model("resnet20", weights="resnet20_synthetic")
    assert model.num_classes == 10
    with pytest.raises(ValueError, match="already exists"):
        add_run(trained_run, "resnet20_synthetic")


@pytest.mark.parametrize("zoo_id", ["../outside", "two words", "", "-flag", "a/b"])
def test_zoo_ids_that_are_not_plain_names_are_refused(trained_run, tmp_path, zoo_id):
    zoo = tmp_path / "weights" / "zoo.json"
    with pytest.raises(ValueError, match=f"zoo id {re.escape(repr(zoo_id))}: use letters, digits"):
        add_run(trained_run, zoo_id, zoo=zoo)
    assert not zoo.parent.exists() and not (tmp_path / "outside.safetensors").exists()


def test_a_record_that_does_not_load_back_is_rolled_back(trained_run, tmp_path, monkeypatch):
    import backbones.zoo

    zoo = tmp_path / "weights" / "zoo.json"
    add_run(trained_run, "kept", zoo=zoo)
    before = zoo.read_bytes()

    def refuse(*args, **kwargs):
        raise ValueError("simulated: the record does not load")

    monkeypatch.setattr(backbones.zoo, "create_model", refuse)
    with pytest.raises(ValueError, match="simulated"):
        add_run(trained_run, "broken", zoo=zoo)
    assert zoo.read_bytes() == before  # the manifest as it was, and no orphaned files
    assert sorted(p.name for p in zoo.parent.iterdir()) == ["kept.metrics.jsonl", "kept.safetensors", "zoo.json"]


def test_a_zoo_record_is_measured_on_its_own_seeds_synthetic_test_set(trained_run, tmp_path, monkeypatch):
    zoo = tmp_path / "weights" / "zoo.json"
    monkeypatch.setenv("BACKBONES_ZOO", str(zoo))
    seed1 = _copy_run(trained_run, tmp_path / "seed1", seed=1)
    record = add_run(seed1, "r20_seed1", zoo=zoo)
    assert record["recipe"]["seed"] == 1
    by_id = evaluate("resnet20", ["r20_seed1"], "synthetic")  # as the record's command measures it
    from_run = evaluate("resnet20", [str(seed1)], "synthetic")
    assert by_id["top1_err"] == record["metrics"]["top1_err"] == from_run["top1_err"]


def _copy_run(run, directory, **changes):
    import shutil

    shutil.copytree(run, directory)
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_an_ensemble_of_differently_preprocessed_members_is_refused(trained_run, tmp_path):
    native = _copy_run(trained_run, tmp_path / "native", preprocessing__input_size=28)
    with pytest.raises(ValueError, match=r"native/final.safetensors and .* preprocess differently \(input_size 28 vs "
                                         r"32\): an ensemble feeds one input to every member"):  # fmt: skip
        evaluate("resnet20", [str(trained_run), str(native)], "synthetic")
    other_seed = _copy_run(trained_run, tmp_path / "seed1", seed=1)  # its synthetic test set is another one
    with pytest.raises(ValueError, match=r"preprocess differently \(seed 1 vs 0\)"):
        evaluate("resnet20", [str(trained_run), str(other_seed)], "synthetic")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"arch": "resnet20", "constructor": {}}', "field 'class_names' must be a JSON array"),
    ],
)
def test_a_bad_run_config_is_named(trained_run, tmp_path, text, message):
    broken = _copy_run(trained_run, tmp_path / "broken")
    (broken / "config.json").write_text(text)
    with pytest.raises(SystemExit, match=f"{broken / 'config.json'}: {message}"):
        evaluate_main(["resnet20", "--weights", str(broken), "--dataset", "synthetic"])


def test_evaluate_errors(trained_run, tmp_path):
    with pytest.raises(SystemExit, match="the run trained resnet20, not resnet56"):
        evaluate_main(["resnet56", "--weights", str(trained_run), "--dataset", "synthetic"])
    with pytest.raises(SystemExit, match="use --protocol center"):
        evaluate_main(["resnet20", "--weights", str(trained_run), "--dataset", "synthetic", "--protocol", "10crop"])
    plain = tmp_path / "plain.pth"
    torch.save(create_model("resnet20").state_dict(), plain)
    with pytest.raises(SystemExit, match="carries no preprocessing record"):
        evaluate_main(["resnet20", "--weights", str(plain), "--dataset", "synthetic"])


def test_imagenet_protocols_on_a_tiny_val_folder(tmp_path):
    from PIL import Image

    from backbones.imagenet import ImageFolderDataset, center_crop_views

    rng = torch.Generator().manual_seed(0)
    for name in ("n01", "n02"):
        (tmp_path / "val" / name).mkdir(parents=True)
        for index in range(2):
            pixels = (torch.rand(260, 300, 3, generator=rng) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "val" / name / f"{index}.JPEG")
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2).eval()
    weights = tmp_path / "r18.pth"
    torch.save(model.state_dict(), weights)
    dataset = ImageFolderDataset(tmp_path, "val")
    with torch.no_grad():
        expected_wrong = sum(int(model(center_crop_views(img)).argmax(1).item() != label) for img, label in
                             (dataset[i] for i in range(len(dataset))))  # fmt: skip
    center = evaluate("resnet18", [str(weights)], "imagenet", tmp_path, "center")
    assert center["images"] == 4 and center["top1_err"] == 100 * expected_wrong / 4
    assert center["top5_err"] == 0  # two classes: the label is always in the top 5
    for protocol in ("10crop", "multiscale"):
        result = evaluate("resnet18", [str(weights)], "imagenet", tmp_path, protocol)
        assert result["images"] == 4 and result["top1_err"] in (0, 25, 50, 75, 100)
    three_way = tmp_path / "r18_3.pth"
    torch.save(create_model("resnet18", num_classes=3).state_dict(), three_way)
    with pytest.raises(ValueError, match=r"val: 2 class folders, but the model predicts 3 classes"):
        evaluate("resnet18", [str(three_way)], "imagenet", tmp_path, "center")


def test_fig6_style_panels_from_runs(trained_run, tmp_path):
    from backbones.analysis import error_series, read_metrics
    from backbones.analysis import main as analysis_main

    out = tmp_path / "fig6.png"
    assert analysis_main(["--panel", "plain", f"a={trained_run}", "--panel", "ResNet", f"b={trained_run}",
                          "--output", str(out), "--ymax", "50"]) == 0  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    iters, errors = error_series(read_metrics(trained_run), "train", "error")
    assert iters == [20, 40, 60] and all(0 <= e <= 100 for e in errors)  # training error in percent
    with pytest.raises(SystemExit):
        analysis_main(["--output", str(out)])


def test_zoo_list_with_a_bad_manifest_is_one_line(tmp_path, monkeypatch):
    from backbones.zoo import main as zoo_main

    bad = tmp_path / "zoo.json"
    bad.write_text('{"format_version": 1, "weights": [{"id": "x"}]}')
    monkeypatch.setenv("BACKBONES_ZOO", str(bad))
    with pytest.raises(SystemExit, match=rf"^error: {re.escape(str(bad))}"):
        zoo_main(["list"])
