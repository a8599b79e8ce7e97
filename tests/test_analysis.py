"""backbones.analysis: training curves (Fig. 4/6) and layer responses (Fig. 7)."""

import json
import re

import pytest
import torch
from torch import nn

from backbones import create_model
from backbones.analysis import NetSpec, layer_response_stds, main, measure_responses, pretty_arch, response_layers
from backbones.augment import Preprocess
from backbones.datasets import make_synthetic
from backbones.resnet import cifar_resnet
from backbones.weights import save_weights

PNG = b"\x89PNG\r\n\x1a\n"


def _tiny_resnet(shortcut: str = "A") -> nn.Module:
    """§4.2's net with n = 1: the stem's 3×3 conv, then one block of two 3×3 convs per stage (7 layers)."""
    return cifar_resnet(8, shortcut=shortcut, in_chans=1, num_classes=10)


def test_every_3x3_layer_is_counted_in_forward_order():
    for arch, count in (("resnet20", 19), ("plain20", 19), ("resnet56", 55), ("plain56", 55), ("resnet110", 109)):
        layers = response_layers(create_model(arch))
        assert len(layers) == count, arch  # 6n + 1: the stem's 3×3 conv + 2 per block
        assert [name for name, _ in layers[:4]] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    names = [name for name, _ in response_layers(create_model("resnet56"))]
    assert names[-1] == "layer3.8.conv2" and len(set(names)) == 55
    assert len(response_layers(create_model("resnet18"))) == 16  # the 7×7 stem is not a 3×3 layer
    bottleneck = response_layers(create_model("resnet50"))  # only the middle conv of each block is 3×3
    assert len(bottleneck) == 16 and {name.rsplit(".", 1)[1] for name, _ in bottleneck} == {"conv2"}
    model = create_model("resnet20")
    assert all(bn is model.get_submodule(name.replace("conv", "bn")) for name, bn in response_layers(model))


@pytest.mark.parametrize("shortcut", ["A", "none"])
def test_responses_are_bn_outputs_before_the_in_place_relu_and_the_addition(shortcut):
    """All convs zero, so in eval mode layer k's BN output is -running_mean: +k on even channels, -k on
    odd ones, at every position. Its std is exactly k; read after the in-place ReLU it would be k/2,
    after the addition something else, and in training mode (batch statistics) 0."""
    model = _tiny_resnet(shortcut)
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        nn.init.zeros_(conv.weight)
    for k, (_, bn) in enumerate(response_layers(model), 1):
        bn.running_mean.copy_(-k * torch.tensor([1.0, -1.0]).repeat(bn.num_features // 2))
        bn.running_var.fill_(1 - bn.eps)  # (0 - running_mean) / sqrt(var + eps) = -running_mean
    model.train()
    stds = layer_response_stds(model, [torch.randn(3, 1, 32, 32), torch.randn(2, 1, 32, 32)])
    assert list(stds) == [name for name, _ in response_layers(model)]
    assert list(stds.values()) == pytest.approx([1, 2, 3, 4, 5, 6, 7], rel=1e-6)
    assert model.training  # measured in eval mode, then put back as it was


def _manual_stds(model: nn.Module, batches: list[torch.Tensor]) -> list[float]:
    """The tiny net's forward pass written out, collecting each conv -> BN output without hooks."""
    outputs: list[list[torch.Tensor]] = [[] for _ in range(7)]
    relu = torch.relu
    for x in batches:
        response = model.bn1(model.conv1(x))
        outputs[0].append(response.clone())
        h = relu(response)
        index = 1
        for stage in (model.layer1, model.layer2, model.layer3):
            block = stage[0]
            first = block.bn1(block.conv1(h))
            second = block.bn2(block.conv2(relu(first)))
            outputs[index].append(first.clone())
            outputs[index + 1].append(second.clone())
            shortcut = h if block.downsample is None else block.downsample(h)
            h = relu(second + shortcut) if block.residual else relu(second)
            index += 2
    return [torch.cat([o.flatten() for o in layer]).double().std(unbiased=False).item() for layer in outputs]


@torch.no_grad()
def test_responses_match_a_manual_forward_of_conv_then_bn():
    torch.manual_seed(0)
    model = _tiny_resnet()
    for _, bn in response_layers(model):  # trained-looking BN: running statistics and affine parameters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.2, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    model.eval()
    batches = [torch.randn(4, 1, 32, 32), torch.randn(3, 1, 32, 32)]
    expected = _manual_stds(model, batches)
    measured = layer_response_stds(model, batches)
    assert list(measured.values()) == pytest.approx(expected, rel=1e-6)
    assert len({round(v, 4) for v in expected}) == 7  # seven different layers, not one measured seven times


def test_a_net_without_3x3_layers_or_images_is_refused():
    with pytest.raises(ValueError, match="has no 3x3 conv followed by BatchNorm"):
        layer_response_stds(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), [torch.zeros(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="no images to measure"):
        layer_response_stds(_tiny_resnet(), [])


def test_paper_names_of_architectures():
    assert [pretty_arch(a) for a in ("resnet56", "plain20", "resnet50_paper", "other")] == [
        "ResNet-56", "plain-20", "ResNet-50_paper", "other"]  # fmt: skip
    assert NetSpec.parse("plain20=runs/p20") == NetSpec("plain20", "runs/p20")
    assert NetSpec.parse("ResNet-20, 64k=resnet20=resnet20_fashion_mnist") == NetSpec("resnet20",
                                                                                     "resnet20_fashion_mnist",
                                                                                     "ResNet-20, 64k")  # fmt: skip
    for bad in ("plain20", "=x", "a=b=c=d"):
        with pytest.raises(ValueError, match="expected NET=WEIGHTS or LABEL=NET=WEIGHTS"):
            NetSpec.parse(bad)


def _run_dir(root, arch: str, seed: int):
    """A backbones.train run directory as the trainer leaves it (config.json + final.safetensors)."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=10)
    run = root / f"{arch}-{seed}"
    run.mkdir()
    save_weights(model, run / "final.safetensors")
    config = {"arch": arch, "seed": 0, "constructor": {"in_chans": 3},
              "class_names": [f"pattern{i}" for i in range(10)],
              "preprocessing": Preprocess(32, 3, (0.5,) * 3, (0.25,) * 3).to_dict()}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"plain20": _run_dir(root, "plain20", 1), "resnet20": _run_dir(root, "resnet20", 2),
            "resnet56": _run_dir(root, "resnet56", 3)}  # fmt: skip


def test_responses_cli_writes_the_figure_and_the_numbers(runs, tmp_path, capsys):
    png, numbers = tmp_path / "responses.png", tmp_path / "responses.json"
    argv = ["responses", f"plain20={runs['plain20']}", f"resnet20={runs['resnet20']}",
            f"ResNet-56 (fresh)=resnet56={runs['resnet56']}", "--dataset", "synthetic", "--images", "24",
            "--batch-size", "10", "--output", str(png), "--json", str(numbers)]  # fmt: skip
    assert main(argv) == 0
    assert png.read_bytes()[:8] == PNG
    report = json.loads(numbers.read_text())
    assert report["dataset"] == "synthetic" and report["images"] == 24
    assert report["command"].startswith("python -m backbones.analysis responses plain20=")
    nets = report["nets"]
    assert [(n["label"], n["arch"], n["residual"], len(n["std"])) for n in nets] == [
        ("plain-20", "plain20", False, 19), ("ResNet-20", "resnet20", True, 19),
        ("ResNet-56 (fresh)", "resnet56", True, 55)]  # fmt: skip
    assert nets[0]["layers"][:2] == ["conv1", "layer1.0.conv1"] and len(nets[2]["layers"]) == 55
    # the numbers are those of the test images through the run's own preprocessing, in eval mode
    images = make_synthetic("test", seed=0).images[:24]
    model = create_model("resnet20", weights=runs["resnet20"] / "final.safetensors")
    direct = layer_response_stds(model, [Preprocess(32, 3, (0.5,) * 3, (0.25,) * 3)(images)])
    assert nets[1]["std"] == pytest.approx(list(direct.values()), abs=1e-5)
    assert nets[1]["mean_std"] == pytest.approx(sum(direct.values()) / 19, abs=1e-5)
    out = capsys.readouterr().out
    assert f"plain-20 ({runs['plain20']}): 19 3x3 layers, response std mean " in out and f"wrote {png}" in out


def test_responses_in_panels_measure_each_net_once(runs, tmp_path, monkeypatch, capsys):
    from backbones import analysis

    calls = []

    def counted(spec, *args, **kwargs):
        calls.append(spec)
        return measure_responses(spec, *args, **kwargs)

    monkeypatch.setattr(analysis, "measure_responses", counted)
    png, numbers = tmp_path / "panels.png", tmp_path / "panels.json"
    assert main(["responses", "--panel", "plain vs ResNet", f"plain20={runs['plain20']}",
                 f"resnet20={runs['resnet20']}", "--panel", "ResNets", f"resnet20={runs['resnet20']}",
                 f"resnet56={runs['resnet56']}", "--dataset", "synthetic", "--images", "8", "--output", str(png),
                 "--json", str(numbers)]) == 0  # fmt: skip
    assert [spec.arch for spec in calls] == ["plain20", "resnet20", "resnet56"]
    assert [n["arch"] for n in json.loads(numbers.read_text())["nets"]] == ["plain20", "resnet20", "resnet56"]
    assert png.read_bytes()[:8] == PNG


def test_two_weights_of_one_architecture_are_told_apart(runs, tmp_path):
    other = _run_dir(tmp_path, "resnet20", 4)
    numbers = tmp_path / "two.json"
    main(["responses", f"resnet20={runs['resnet20']}", f"resnet20={other}", "--dataset", "synthetic", "--images", "4",
          "--output", str(tmp_path / "two.png"), "--json", str(numbers)])  # fmt: skip
    labels = [n["label"] for n in json.loads(numbers.read_text())["nets"]]
    assert labels == [f"ResNet-20 ({runs['resnet20'].name})", f"ResNet-20 ({other.name})"]


def _fails(argv, capsys) -> str:
    """The one line that a refused command prints."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    if code == 2:  # argparse: the usage, then one error line
        *usage, message = capsys.readouterr().err.strip().splitlines()
        assert usage and usage[0].startswith("usage: python -m backbones.analysis")
        return message
    assert isinstance(code, str) and "\n" not in code
    return code


def test_bad_responses_input_is_one_clear_line(runs, tmp_path, capsys):
    out = ["--dataset", "synthetic", "--images", "4", "--output", str(tmp_path / "x.png")]
    assert _fails(["responses", f"resnet20={runs['resnet20']}", "--train-window", "10", *out], capsys).endswith(
        "error: --train-window: only for training curves, not for 'responses'"
    )
    message = _fails(["responses", "resnet20=no_such_zoo_id", *out], capsys)
    assert message.startswith("error: weights 'no_such_zoo_id' is neither a file nor a zoo id in ")
    message = _fails(["responses", "resnet20=plain20_fashion_mnist_6ep", *out], capsys)
    assert message == ("error: zoo weights 'plain20_fashion_mnist_6ep' are for plain20, not resnet20; use "
                       "create_model('plain20', weights='plain20_fashion_mnist_6ep')")  # fmt: skip
    message = _fails(["responses", f"plain20={runs['resnet20']}", *out], capsys)
    assert message == f"error: {runs['resnet20'] / 'config.json'}: the run trained resnet20, not plain20"
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "w.safetensors").write_bytes((runs["resnet56"] / "final.safetensors").read_bytes())
    message = _fails(["responses", f"resnet20={loose / 'w.safetensors'}", *out], capsys)
    assert message.startswith(f"error: {loose / 'w.safetensors'}: the state dict does not fit resnet20; unexpected ")
    message = _fails(["responses", f"resnet56={loose / 'w.safetensors'}", *out], capsys)
    assert message == (f"error: {loose / 'w.safetensors'} carries no preprocessing record "
                       "(use a zoo id or a run directory)")  # fmt: skip
    assert _fails(["responses", "resnet21=x", *out], capsys).startswith("error: unknown model 'resnet21'; closest: ")
    assert _fails(["responses", "resnet20", *out], capsys) == (
        "error: 'resnet20': expected NET=WEIGHTS or LABEL=NET=WEIGHTS (e.g. plain20=plain20_fashion_mnist_6ep)"
    )
    message = _fails(["responses", f"resnet20={runs['resnet20']}", *out[:2], "--images", "5000", *out[4:]], capsys)
    assert message == "error: --images 5000: synthetic's test split has 1000 images"
    message = _fails(["responses", f"resnet20={runs['resnet20']}", "--output", "x.png"], capsys)
    assert message.endswith("error: responses needs --dataset (fashion-mnist, cifar10, synthetic)")
    assert _fails(["responses", *out], capsys).endswith(
        "error: responses: give nets as NET=WEIGHTS (e.g. plain20=plain20_fashion_mnist_6ep), or --panel TITLE "
        "NET=WEIGHTS ..."
    )
    assert _fails(["responses", f"resnet20={runs['resnet20']}", *out[:2], "--images", "0", *out[4:]], capsys).endswith(
        "error: argument --images: must be > 0, got 0"
    )
    assert not (tmp_path / "x.png").exists()


def _curve_run(directory, offset: float):
    directory.mkdir(parents=True)
    records = [{"kind": "train", "iteration": i, "error": 0.5 - i / 400 + offset} for i in (20, 40, 60)]
    records += [{"kind": "eval", "iteration": 60, "top1_err": 40.0 + offset}]
    (directory / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    return directory


def test_final_errors_average_the_training_window_and_keep_the_last_test_error():
    from backbones.analysis import final_errors

    records = [{"kind": "train", "iteration": i, "error": e} for i, e in ((100, 0.30), (200, 0.20), (300, 0.10))]
    records += [{"kind": "eval", "iteration": 150, "top1_err": 12.0}, {"kind": "segment", "iteration": 0},
                {"kind": "eval", "iteration": 300, "top1_err": 14.0}]  # fmt: skip
    assert final_errors(records, train_window=200) == pytest.approx(
        {"iterations": 300, "train_err": 15.0, "test_err": 14.0, "best_eval_err": 12.0, "best_eval_iteration": 150}
    )
    assert final_errors(records, train_window=1)["train_err"] == pytest.approx(10.0)
    assert final_errors(records, train_window=150)["train_err"] == pytest.approx((50 * 20 + 100 * 10) / 150)
    # a run logged every 100 iterations, then every 500 (another machine): each record weighs what it covers
    mixed = [{"kind": "train", "iteration": i, "error": 0.1} for i in (100, 200, 300, 400, 500)]
    mixed.append({"kind": "train", "iteration": 1000, "error": 0.4})
    assert final_errors(mixed, train_window=1000)["train_err"] == pytest.approx(25.0)  # not (5 * 10 + 40) / 6
    # a run that evaluated on a validation split: its test record is the test error
    validated = [*records, {"kind": "test", "iteration": 300, "top1_err": 13.5}]
    assert final_errors(validated, 200)["test_err"] == 13.5 and final_errors(validated, 200)["best_eval_err"] == 12.0
    assert final_errors([{"kind": "train", "iteration": 5, "error": 0.5}], 10) == {
        "iterations": 5,
        "train_err": 50.0,
        "test_err": None,
        "best_eval_err": None,
        "best_eval_iteration": None,
    }


def test_training_curves_keep_their_command_line(tmp_path, capsys):
    first, second = _curve_run(tmp_path / "p20", 0.1), _curve_run(tmp_path / "r20", 0.0)
    assert main([str(first), f"ResNet-20={second}", "--output", str(tmp_path / "one.png"), "--title", "t"]) == 0
    assert main(["--panel", "plain", f"plain-20={first}", "--panel", "ResNets", f"ResNet-20={second}",
                 "--output", str(tmp_path / "two.png"), "--ymax", "30"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("wrote")] == [f"wrote {tmp_path / 'one.png'}",
                                                                  f"wrote {tmp_path / 'two.png'}"]  # fmt: skip
    # each run's end in numbers: training error over the last 2500 iterations (all three records here: 45, 40
    # and 35 %, plus 10 points for p20), the final test error, the best one and where
    header = "| run | iterations | training error (last 2500 it) | final test error | lowest evaluation error (at) |"
    assert out[:4] == [header, "|---|---|---|---|---|", "| p20 | 60 | 50.00 | 40.10 | 40.10 (60) |",
                       "| ResNet-20 | 60 | 40.00 | 40.00 | 40.00 (60) |"]  # fmt: skip
    # two panels: each row names its panel, so equal labels in two panels stay two rows
    assert out[5:9] == [header, "|---|---|---|---|---|", "| plain: plain-20 | 60 | 50.00 | 40.10 | 40.10 (60) |",
                        "| ResNets: ResNet-20 | 60 | 40.00 | 40.00 | 40.00 (60) |"]  # fmt: skip
    assert (tmp_path / "one.png").read_bytes()[:8] == (tmp_path / "two.png").read_bytes()[:8] == PNG
    message = _fails([str(first), "--output", str(tmp_path / "x.png"), "--dataset", "synthetic", "--json", "x.json"],
                     capsys)  # fmt: skip
    assert message.endswith("error: --dataset, --json: only for 'responses' "
                            "(python -m backbones.analysis responses NET=WEIGHTS ...)")  # fmt: skip
    assert _fails(["--output", str(tmp_path / "x.png")], capsys).endswith("give run directories, or --panel TITLE "
                                                                          "LABEL=DIR ...")  # fmt: skip
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "record, message",
    [
        ({"kind": "eval"}, "field 'iteration' \\(eval record\\) must be a non-negative integer, got None"),
        ({"kind": "train", "iteration": "abc", "error": 0.1}, "field 'iteration' \\(train record\\) .* got 'abc'"),
        ({"kind": "train", "iteration": 80, "error": None}, "field 'error' must be a finite number, got None"),
        ({"kind": "eval", "iteration": 80, "top1_err": float("nan")}, "field 'top1_err' must be a finite .*, got nan"),
    ],
)  # fmt: skip
def test_a_log_record_with_a_wrong_field_is_named_and_nothing_is_drawn(tmp_path, capsys, record, message):
    run = _curve_run(tmp_path / "r20", 0.0)
    with open(run / "metrics.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    assert re.search(f"^error: {re.escape(str(run / 'metrics.jsonl'))}, line 5: {message}$",
                     _fails([str(run), "--output", str(tmp_path / "x.png")], capsys))  # fmt: skip
    assert not (tmp_path / "x.png").exists()


def test_two_runs_with_one_label_are_refused(tmp_path, capsys):
    first, second = _curve_run(tmp_path / "a" / "run", 0.1), _curve_run(tmp_path / "b" / "run", 0.0)
    message = _fails([str(first), str(second), "--output", str(tmp_path / "x.png")], capsys)
    assert message.endswith(f"error: two runs labelled 'run' ({first} and {second}): name them LABEL=DIR")
    assert main([f"a={first}", f"b={second}", "--output", str(tmp_path / "x.png")]) == 0


def test_long_titles_are_wrapped_inside_the_figure(tmp_path):
    from backbones import analysis

    title = "ResNet-20 on Fashion-MNIST, §4.2 + weight decay 5e-4 + Random Erasing: step vs cosine lr, 64k it"
    lines = analysis.panel_title(title).split("\n")
    assert len(lines) == 2 and all(len(line) <= analysis.PANEL_TITLE_CHARS for line in lines)
    assert " ".join(lines) == title and analysis.panel_title("ResNets") == "ResNets"

    figure = analysis.panels_figure({title: {"r20": _curve_run(tmp_path / "r20", 0.0)}})
    figure.canvas.draw()
    shown, extent = figure.axes[0].title, figure.axes[0].title.get_window_extent()
    assert shown.get_text() == analysis.panel_title(title)
    assert 0 <= extent.x0 and extent.x1 <= figure.bbox.width
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_a_torn_log_line_is_warned_about_once_and_the_rest_is_drawn(tmp_path, capsys, caplog):
    run = _curve_run(tmp_path / "r20", 0.0)
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"kind": "train", "iteration": 8')  # the line a running run is writing
    assert main([str(run), "--output", str(tmp_path / "x.png")]) == 0
    torn = [r.getMessage() for r in caplog.records if "torn by a crash" in r.getMessage()]
    assert torn == [f"{run / 'metrics.jsonl'}, line 5: not a JSON record (torn by a crash?); dropped"]
    assert "| r20 | 60 | 40.00 | 40.00 | 40.00 (60) |" in capsys.readouterr().out
    assert (tmp_path / "x.png").read_bytes()[:8] == PNG
