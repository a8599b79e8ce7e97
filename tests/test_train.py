"""The trainer end to end: CLI runs, exact resume after SIGKILL, torchrun DDP, checkpoint errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backbones.cpu_memory import cpu_allocator
from backbones.engine import cpu_description, read_checkpoint
from backbones.train import build_parser, resolve_config
from backbones.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["resnet20", "--dataset", "synthetic", "--batch-size", "16", "--no-progress", "--device", "cpu"]


def _env(threads: int = 1) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_cli_run_learns_and_writes_everything(tmp_path, capsys):
    run = tmp_path / "run"
    train_main(["resnet20", "--dataset", "synthetic", "--max-iters", "120", "--batch-size", "32", "--lr", "0.05",
                "--log-every", "20", "--eval-every", "60", "--no-progress", "--output", str(run)])  # fmt: skip
    out = capsys.readouterr().out
    error = float(out.split("test top-1 error ")[1].split("%")[0])
    assert error < 60, out  # chance is 90 % error
    config = json.loads((run / "config.json").read_text())
    assert config["batch_size"] == 32 and config["milestones"] == [60, 90]  # the recipe's ÷10 at 50 % and 75 %
    assert config["constructor"] == {"in_chans": 3} and config["preprocessing"]["input_size"] == 32
    train, evals = _records(run, "train"), _records(run, "eval")
    assert [r["iteration"] for r in train] == [20, 40, 60, 80, 100, 120]
    assert [r["lr"] for r in train] == pytest.approx([0.05, 0.05, 0.05, 0.005, 0.0005, 0.0005])  # lr of the last step
    assert [r["iteration"] for r in evals] == [60, 120] and evals[-1]["top1_err"] == pytest.approx(error, abs=0.01)
    assert all(0 <= r["error"] <= 1 and r["images_per_s"] > 0 for r in train)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tensorboard").iterdir())
    weights = load_file(run / "final.safetensors")
    assert weights["fc.weight"].shape == (10, 64)
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["iteration"] == 120
    torch.testing.assert_close(state["model"]["fc.weight"], weights["fc.weight"])


def test_sigkill_then_resume_ends_with_exactly_the_same_weights(tmp_path):
    """With Random Erasing on (after crop + flip): its boxes and fill come from the batch's (seed, epoch,
    batch) generator, so the resumed run erases the same pixels as the uninterrupted one."""
    args = [sys.executable, "-m", "backbones.train", *TINY, "--max-iters", "40", "--checkpoint-every", "5",
            "--log-every", "5", "--eval-every", "20", "--lr", "0.05", "--deterministic",
            "--random-erasing", "0.5"]  # fmt: skip
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run([*args, "--output", str(reference)], check=True, env=_env(), capture_output=True, timeout=300)

    process = subprocess.Popen([*args, "--output", str(resumed)], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # kill soon after the 3rd checkpoint
        if (resumed / "metrics.jsonl").exists() and len(_records(resumed, "train")) >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (resumed / "final.safetensors").exists()
    killed_at = read_checkpoint(resumed / "checkpoint.pt")["iteration"]
    assert 0 < killed_at < 40

    result = subprocess.run([*args, "--output", str(resumed), "--resume"], env=_env(), capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    expected, actual = load_file(reference / "final.safetensors"), load_file(resumed / "final.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    assert [r["iteration"] for r in _records(resumed, "train")] == list(range(5, 45, 5))  # no duplicated records
    config = json.loads((resumed / "config.json").read_text())
    assert (config["random_erasing"], config["erasing_fill"]) == (0.5, "random")


def test_sigterm_stops_with_a_checkpoint_that_resumes_exactly(tmp_path):
    """No periodic checkpoint in reach (--checkpoint-every 1000): all a resume has is the one written at the signal."""
    args = [sys.executable, "-m", "backbones.train", *TINY, "--max-iters", "30", "--checkpoint-every", "1000",
            "--log-every", "1", "--eval-every", "30", "--lr", "0.05", "--deterministic"]  # fmt: skip
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    subprocess.run([*args, "--output", str(reference)], check=True, env=_env(), capture_output=True, timeout=300)

    process = subprocess.Popen([*args, "--output", str(stopped)], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (stopped / "metrics.jsonl").exists() and len(_records(stopped, "train")) >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    at = read_checkpoint(stopped / "checkpoint.pt")["iteration"]
    assert 3 <= at < 30 and not (stopped / "final.safetensors").exists()
    assert f"stopped by SIGTERM at iteration {at}: {stopped / 'checkpoint.pt'} written" in stderr
    assert [r["iteration"] for r in _records(stopped, "stop")] == [at]

    result = subprocess.run([*args, "--output", str(stopped), "--resume"], env=_env(), capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    expected, actual = load_file(reference / "final.safetensors"), load_file(stopped / "final.safetensors")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


def test_a_second_signal_acts_at_once_and_handlers_are_restored():
    from backbones.stopping import StopRequests, TrainingStopped

    # a handler of our own before the run (whatever an earlier test or library left installed does not matter)
    reached = []

    def before(number, frame):
        reached.append(number)

    outer = signal.signal(signal.SIGINT, before)
    try:
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received == signal.SIGINT and reached == []  # recorded, not passed on
            os.kill(os.getpid(), signal.SIGINT)  # the second one: the handler that was there before
            assert reached == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, outer)
    assert TrainingStopped("SIGINT", 7, Path("c.pt")).exit_code == 130


def test_random_erasing_flags_reach_the_config_and_the_augmentation():
    from backbones.augment import Chain, CropFlip, Preprocess, RandomErasing
    from backbones.train import train_augmentation

    def config(*flags):
        return resolve_config(build_parser().parse_args(["resnet20", "--dataset", "fashion-mnist", *flags]))

    off = config()
    assert (off["random_erasing"], off["erasing_fill"]) == (0.0, None)  # off, as the paper
    on = config("--random-erasing", "0.5", "--erasing-fill", "mean")
    assert (on["random_erasing"], on["erasing_fill"]) == (0.5, "mean")
    assert config("--random-erasing", "1")["erasing_fill"] == "random"  # the Random Erasing paper's fill
    preprocess = Preprocess(32, 1, (0.286,), (0.353,), pad_to=32)
    assert train_augmentation(off, preprocess) == CropFlip(4)
    assert train_augmentation(on, preprocess) == Chain((CropFlip(4), RandomErasing(0.5, fill="mean", mean=(0.286,),
                                                                                  std=(0.353,))))  # fmt: skip
    with pytest.raises(SystemExit, match="--random-erasing is a batch augmentation of the in-memory datasets"):
        resolve_config(build_parser().parse_args(["resnet18", "--random-erasing", "0.5"]))  # ImageNet
    assert resolve_config(build_parser().parse_args(["resnet18", "--random-erasing", "0"]))["random_erasing"] == 0


def test_label_smoothing_reaches_the_config_and_the_loss_it_trains_on(tmp_path):
    from backbones.classification import classification_step

    def config(*flags):
        return resolve_config(build_parser().parse_args(["resnet20", "--dataset", "fashion-mnist", *flags]))

    assert config()["label_smoothing"] == 0.0  # off, as the paper
    assert config("--label-smoothing", "0.1")["label_smoothing"] == 0.1
    with pytest.raises(SystemExit):
        config("--label-smoothing", "1")  # nothing left on the true class

    class Fixed(torch.nn.Module):  # returns the batch as logits
        def forward(self, x):
            return x

    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 3.0, 1.0, -2.0]])
    labels = torch.tensor([0, 2])
    log_p = logits.log_softmax(dim=1)
    smoothing, classes = 0.1, 4
    # 1 - E on the true class plus E / K on every class (the true one included)
    expected = -((1 - smoothing) * log_p[[0, 1], labels] + smoothing / classes * log_p.sum(dim=1)).mean()
    step = classification_step(Fixed(), (logits, labels), label_smoothing=smoothing)
    assert torch.allclose(step["loss"], expected)
    assert step["error"].item() == 0.5  # the error is the top-1 error whatever the smoothing
    plain = classification_step(Fixed(), (logits, labels))
    assert torch.allclose(plain["loss"], -log_p[[0, 1], labels].mean())

    run = tmp_path / "run"
    train_main([*TINY, "--max-iters", "2", "--checkpoint-every", "1", "--label-smoothing", "0.1", "--output", str(run)])
    assert json.loads((run / "config.json").read_text())["label_smoothing"] == 0.1
    with pytest.raises(SystemExit, match=re.escape("label_smoothing: 0.1 in the checkpoint, 0.0 now")):
        train_main([*TINY, "--max-iters", "3", "--output", str(run), "--resume"])


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    common = [
        *TINY,
        "--max-iters",
        "12",
        "--batch-size",
        "32",
        "--lr",
        "0.02",
        "--log-every",
        "2",
        "--eval-every",
        "12",
    ]
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run([sys.executable, "-m", "backbones.train", *common, "--output", str(single)], check=True,
                   env=_env(2), capture_output=True, timeout=300)  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             "29517", "-m", "backbones.train", *common, "--output", str(double)],
                            env=_env(1), capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((double / "config.json").read_text())
    assert config["world_size"] == 2
    one = [r["loss"] for r in _records(single, "train")]
    two = [r["loss"] for r in _records(double, "train")]
    assert len(one) == len(two) == 6
    # Same images and augmentation; only BatchNorm statistics (per process of 16 vs 32) differ.
    assert two == pytest.approx(one, rel=0.05)
    assert one[0] == pytest.approx(two[0], rel=0.01)


def test_existing_run_without_resume_is_refused_and_bad_checkpoints_are_explained(tmp_path):
    run = tmp_path / "run"
    train_main([*TINY, "--max-iters", "2", "--log-every", "1", "--output", str(run)])
    config_before = (run / "config.json").read_text()
    with pytest.raises(SystemExit, match="exists: pass --resume"):
        train_main([*TINY, "--max-iters", "2", "--lr", "0.5", "--output", str(run)])
    assert (run / "config.json").read_text() == config_before  # the refused run left the finished one alone
    checkpoint = run / "checkpoint.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])
    with pytest.raises(SystemExit, match=r"checkpoint.pt \(\d+ bytes\) cannot be read, truncated or corrupt"):
        train_main([*TINY, "--max-iters", "4", "--output", str(run), "--resume"])
    torch.save({"fc.weight": torch.zeros(1)}, checkpoint)
    with pytest.raises(SystemExit, match="not a training checkpoint of this project"):
        train_main([*TINY, "--max-iters", "4", "--output", str(run), "--resume"])
    with pytest.raises(SystemExit, match="no checkpoint at"):
        train_main([*TINY, "--max-iters", "4", "--output", str(tmp_path / "new"), "--resume"])


def test_resume_refuses_a_checkpoint_of_another_architecture(tmp_path):
    run = tmp_path / "run"
    train_main([*TINY, "--max-iters", "1", "--output", str(run)])
    args = ["resnet32", *TINY[1:], "--max-iters", "2", "--output", str(run), "--resume"]
    with pytest.raises(SystemExit, match="another recipe \\(arch: 'resnet20' in the checkpoint, 'resnet32' now;"):
        train_main(args)


def test_native_size_trains_at_the_datasets_own_28x28_where_the_default_pads_to_32(tiny_fashion_mnist, tmp_path):
    from backbones.distributed import init_distributed
    from backbones.train import build_data

    for flags, size in (([], 32), (["--native-size"], 28)):
        args = ["resnet20", "--dataset", "fashion-mnist", "--data", str(tiny_fashion_mnist), "--batch-size", "4",
                "--device", "cpu", *flags]  # fmt: skip
        config = resolve_config(build_parser().parse_args(args))
        assert config["native_size"] is bool(flags)
        data = build_data(config, init_distributed("cpu"), "no", 0, False)
        assert (data.preprocess.input_size, data.preprocess.pad_to) == (size, size)
        images, _ = next(iter(data.train.batches(0)))
        test_images, _ = next(iter(data.val.batches(0)))
        assert images.shape == (4, 1, size, size) and test_images.shape[1:] == (1, size, size)
        if size == 32:  # the 28x28 image sits in the middle of a zero frame, before normalisation
            raw = data.val.dataset.images[:1]
            padded = data.preprocess(raw) * torch.tensor(data.preprocess.std) + torch.tensor(data.preprocess.mean)
            assert padded[..., :2, :].abs().max() < 1e-6 and padded[..., 2:30, 2:30].mul(255).round().equal(raw.float())
    run = tmp_path / "run"
    train_main([*args, "--max-iters", "2", "--no-progress", "--output", str(run)])
    config = json.loads((run / "config.json").read_text())
    assert config["native_size"] is True and config["preprocessing"]["input_size"] == 28
    with pytest.raises(SystemExit, match="--native-size applies to the in-memory datasets"):
        resolve_config(build_parser().parse_args(["resnet18", "--native-size"]))


def test_a_checkpoint_from_before_random_erasing_resumes_only_without_it(tmp_path):
    run = tmp_path / "run"
    train_main([*TINY, "--max-iters", "2", "--checkpoint-every", "1", "--output", str(run)])
    checkpoint = run / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False)
    old = json.loads(state["run_config"])
    del old["random_erasing"], old["erasing_fill"], old["native_size"], old["label_smoothing"]  # saved before them
    state["run_config"] = json.dumps(old)
    torch.save(state, checkpoint)
    with pytest.raises(SystemExit, match=re.escape("random_erasing: 0.0 in the checkpoint, 0.5 now")):
        train_main(
            [
                *TINY,
                "--max-iters",
                "2",
                "--checkpoint-every",
                "1",
                "--random-erasing",
                "0.5",
                "--output",
                str(run),
                "--resume",
            ]
        )
    with pytest.raises(SystemExit, match=re.escape("native_size: False in the checkpoint, True now")):
        train_main([*TINY, "--max-iters", "2", "--checkpoint-every", "1", "--native-size", "--output", str(run),
                    "--resume"])  # fmt: skip
    with pytest.raises(SystemExit, match=re.escape("label_smoothing: 0.0 in the checkpoint, 0.2 now")):
        train_main([*TINY, "--max-iters", "2", "--checkpoint-every", "1", "--label-smoothing", "0.2", "--output",
                    str(run), "--resume"])  # fmt: skip
    train_main(
        [*TINY, "--max-iters", "2", "--checkpoint-every", "1", "--output", str(run), "--resume"]
    )  # the old run's own recipe resumes


def test_unknown_architecture_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown model 'resnet21'"):
        train_main(["resnet21", "--dataset", "synthetic"])
    with pytest.raises(SystemExit, match=re.escape("--erasing-fill applies to Random Erasing: give --random-erasing")):
        train_main(["resnet20", "--dataset", "synthetic", "--erasing-fill", "mean", "--output", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="CIFAR-10 needs --data"):
        train_main(["resnet20", "--dataset", "cifar10", "--output", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="missing train-images-idx3-ubyte"):
        train_main(["resnet20", "--dataset", "fashion-mnist", "--data", str(tmp_path), "--output", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match=re.escape("--device 'gpu' is not a device: use auto, cpu, cuda or cuda:N")):
        train_main(["resnet20", "--dataset", "synthetic", "--device", "gpu", "--output", str(tmp_path / "z")])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda was asked for, but no CUDA GPU is available"):
            train_main(["resnet20", "--dataset", "synthetic", "--device", "cuda", "--output", str(tmp_path / "z")])
    assert not (tmp_path / "z").exists()  # nothing is written before the arguments are known to be good


def test_help_states_the_recipe_values_and_only_real_defaults():
    text = " ".join(build_parser().format_help().split())  # unwrapped
    assert "(recipe: 256 for ImageNet nets, 128 for CIFAR nets)" in text and "(recipe: 0.1)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 0)" in text  # --seed: a real default is still shown


def test_imagenet_folder_training_through_the_cli(tmp_path, capsys):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("val", 2)):
        for name in ("n01440764", "n01443537"):
            folder = tmp_path / "imagenet" / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = (torch.rand(300, 260, 3, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{index}.JPEG")
    (tmp_path / "imagenet" / "train" / "n01440764" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="broken.JPEG: skipping unreadable image"):
        train_main(["resnet18", "--data", str(tmp_path / "imagenet"), "--max-iters", "3", "--batch-size", "4",
                    "--workers", "0", "--log-every", "1", "--no-progress", "--output", str(run)])  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "imagenet" and config["schedule"] == "plateau" and config["momentum"] == 0.9
    assert config["class_names"] == ["n01440764", "n01443537"]
    evals = _records(run, "eval")
    assert evals[-1]["images"] == 4 and evals[-1]["iteration"] == 3
    assert any(r.get("skipped_images") == 1 for r in _records(run, "data"))
    assert "top-1 error" in capsys.readouterr().out


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_steps_run_and_stay_finite(tmp_path, amp, caplog):
    from backbones.engine import cpu_has_native_bf16

    run = tmp_path / amp
    train_main([*TINY, "--max-iters", "3", "--log-every", "1", "--amp", amp, "--channels-last", "--output", str(run)])
    # bf16 on a CPU that only emulates it is named as the slow choice it is
    assert ("is emulated and usually several times slower" in caplog.text) == (
        amp == "bf16" and not cpu_has_native_bf16()
    )
    losses = [r["loss"] for r in _records(run, "train")]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    state = read_checkpoint(run / "checkpoint.pt")
    assert (state["scaler"].get("scale", 0) > 0) == (amp == "fp16")  # a grad scaler only for fp16
    assert all(v.dtype == torch.float32 for k, v in state["model"].items() if v.is_floating_point())


def test_amp_warning_names_emulated_bf16_on_the_cpu_only():
    from backbones.engine import amp_warning, cpu_description

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    message = amp_warning(cpu, "bf16", native_bf16=False)
    assert message is not None and cpu_description() in message and "--amp none" in message
    assert amp_warning(cpu, "bf16", native_bf16=True) is None
    assert amp_warning(cpu, "none", native_bf16=False) is None and amp_warning(cpu, "fp16", native_bf16=False) is None
    assert amp_warning(gpu, "bf16", native_bf16=False) is None
    assert cpu_description().split(" + ")[0] == torch.backends.cpu.get_cpu_capability()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_tunes_glibc_once_and_leaves_other_allocators_alone(monkeypatch):
    from backbones import cpu_memory

    code = ("from backbones.cpu_memory import cpu_allocator, keep_freed_memory; "
            "print(cpu_allocator(), keep_freed_memory(), cpu_allocator(), sep=';')")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().split(";") == ["glibc", "True", "glibc, no trim"]  # a fresh process: mallopt applied

    monkeypatch.setattr(cpu_memory, "_kept_by_mallopt", False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # the user's own setting is kept, not overridden
    assert cpu_memory.cpu_allocator() == "glibc, no trim" and cpu_memory.keep_freed_memory()
    assert cpu_memory._kept_by_mallopt is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert cpu_memory.cpu_allocator() == "tcmalloc" and not cpu_memory.keep_freed_memory()
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert cpu_memory.cpu_allocator() == "jemalloc" and not cpu_memory.keep_freed_memory()
    assert cpu_memory._kept_by_mallopt is False


class ToyBatches:
    """A deterministic regression stream for engine-level tests: ``length`` batches of 8 per epoch."""

    skipped = 0

    def __init__(self, length):
        self.length = length

    def __len__(self):
        return self.length

    def batches(self, epoch, start=0):
        for index in range(start, self.length):
            g = torch.Generator().manual_seed(epoch * 10 + index)
            yield torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def toy_step(model, batch):
    x, y = batch
    return {"loss": torch.nn.functional.mse_loss(model(x), y)}


def test_a_failed_final_evaluation_loses_no_training_and_resume_runs_only_the_evaluation(tmp_path):
    from backbones.engine import EngineConfig, Trainer
    from backbones.schedule import LRSchedule

    calls = []

    def failing_once(model):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("evaluation crashed")
        return {"top1_err": 1.0}

    def trainer(evaluate_fn):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        config = EngineConfig(tmp_path / "run", max_iters=6, log_every=2, eval_every=100, checkpoint_every=100,
                              progress=False)  # fmt: skip
        return Trainer(model, optimizer, LRSchedule(0.1, max_iters=6), ToyBatches(4), toy_step, config,
                       evaluate_fn=evaluate_fn)  # fmt: skip

    first = trainer(failing_once)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        first.fit()
    saved = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["iteration"] == 6 and saved["last_eval_iteration"] == -1  # the finished training was saved first
    resumed = trainer(failing_once)
    assert resumed.fit(resume=True) == {"top1_err": 1.0} and len(calls) == 2  # only the evaluation ran again
    assert resumed.iteration == 6 and all(
        torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), first.model.state_dict().values())
    )
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["last_eval_iteration"] == 6


def test_without_a_progress_bar_the_log_reports_progress_eta_and_evaluations(tmp_path, caplog):
    import logging

    from backbones.engine import EngineConfig, Trainer, format_duration
    from backbones.schedule import LRSchedule

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    config = EngineConfig(
        tmp_path / "run", max_iters=6, log_every=2, eval_every=3, checkpoint_every=100, progress=False
    )

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), LRSchedule(0.1, max_iters=6), ToyBatches(3),
                      toy_step, config, evaluate_fn=lambda net: {"top1_err": 12.5})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="backbones.engine"):
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.name == "backbones.engine"]
    progress = [line for line in lines if "ETA" in line]
    assert [line.split(":")[0] for line in progress] == ["iteration 2/6", "iteration 4/6", "iteration 6/6"]
    assert all(re.search(r": loss \d\.\d+, lr 0\.1, epoch [\d.]+, \d+ img/s, ETA \d+s$", line) for line in progress), (
        progress
    )
    assert progress[-1].endswith("ETA 0s")
    assert [line for line in lines if "evaluation" in line] == ["iteration 3: evaluation: top1_err 12.5",
                                                                  "iteration 6: evaluation: top1_err 12.5"]  # fmt: skip
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 7530)] == ["0s", "59s", "1m01s", "59m59s", "1h00m",
                                                                              "2h05m"]  # fmt: skip


def test_resume_keeps_the_recipe_and_survives_a_torn_metrics_line(tmp_path, caplog):
    run = tmp_path / "run"
    train_main([*TINY, "--max-iters", "4", "--log-every", "1", "--checkpoint-every", "2", "--output", str(run)])
    for changed, message in ((["--seed", "1"], "seed: 0 in the checkpoint, 1 now"),
                             (["--batch-size", "8"], "batch_size: 16 in the checkpoint, 8 now"),
                             (["--momentum", "0.5"], "momentum: 0.9 in the checkpoint, 0.5 now"),
                             (["--random-erasing", "0.5"], "random_erasing: 0.0 in the checkpoint, 0.5 now")
                             ):  # fmt: skip
        with pytest.raises(SystemExit, match=re.escape(message)):
            train_main([*TINY, "--max-iters", "4", *changed, "--output", str(run), "--resume"])
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "iteration": 3, "lo')  # a crash in the middle of a write
    # the same recipe resumes; how it runs (log interval, compile, channels_last) may change
    train_main([*TINY, "--max-iters", "4", "--log-every", "2", "--channels-last", "--output", str(run), "--resume"])
    assert "not a JSON record (torn by a crash?); dropped" in caplog.text
    assert [r["iteration"] for r in _records(run, "train")] == [1, 2, 3, 4]
    # each start and resume records how it ran (config.json keeps the first start's settings)
    segments = _records(run, "segment")
    assert [
        (s["iteration"], s["resumed"], s["engine"]["channels_last"], s["engine"]["log_every"]) for s in segments
    ] == [(0, False, False, 1), (4, True, True, 2)]
    assert segments[1]["world_size"] == 1 and segments[1]["torch"] == torch.__version__
    assert segments[1]["threads"] == torch.get_num_threads()
    assert segments[1]["cpu"] == cpu_description()
    assert segments[1]["allocator"] == cpu_allocator()
    if sys.platform.startswith("linux"):  # the trainer had glibc keep freed memory (or a preload replaced it)
        assert segments[1]["allocator"] != "glibc"
    assert json.loads((run / "config.json").read_text())["engine"]["channels_last"] is False


def test_with_a_validation_split_the_log_ends_with_the_test_splits_error(tmp_path, capsys):
    from backbones.analysis import final_errors, read_metrics

    run = tmp_path / "run"
    train_main([*TINY, "--max-iters", "2", "--val-split", "64", "--output", str(run)])
    printed = float(capsys.readouterr().out.split("test top-1 error ")[1].split("%")[0])
    (evaluation,), (test,) = _records(run, "eval"), _records(run, "test")
    assert evaluation["images"] == 64 and test["images"] == 1000 and test["iteration"] == 2  # validation, then test
    assert round(test["top1_err"], 2) == printed == round(final_errors(read_metrics(run), 2500)["test_err"], 2)


def test_resume_may_change_the_precision_and_records_each_stretch_for_the_zoo(tmp_path, caplog):
    """The CPU changes between sessions: a run begun in fp32 on a CPU without bf16 units resumes in bf16 on one
    with them (and back). The recipe is still enforced; metrics.jsonl and a zoo record say which part ran how."""
    import logging

    from backbones.engine import (
        CheckpointError,
        EngineConfig,
        Trainer,
        describe_amp,
        read_checkpoint,
        recipe_and_segments,  # fmt: skip
        run_segments,
    )
    from backbones.schedule import LRSchedule

    def trainer(max_iters, amp, lr=0.1, step=toy_step):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        config = EngineConfig(tmp_path / "run", max_iters=max_iters, log_every=1, checkpoint_every=100, amp=amp,
                              progress=False)  # fmt: skip
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), LRSchedule(lr, max_iters=14), ToyBatches(4),
                       step, config, run_config={"lr": lr, "amp": amp})  # fmt: skip

    def crashing_step(model, batch):
        raise RuntimeError("out of memory")

    trainer(3, "none").fit()
    with pytest.raises(CheckpointError, match=re.escape("lr: 0.1 in the checkpoint, 0.2 now")):
        trainer(6, "bf16", lr=0.2).fit(resume=True)  # the recipe is still the recipe
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer(6, "fp16", step=crashing_step).fit(resume=True)  # a resume that trains nothing leaves no stretch
    with caplog.at_level(logging.INFO, logger="backbones.engine"):
        resumed = trainer(6, "bf16")
        resumed.fit(resume=True)
    assert resumed.iteration == 6
    assert "resuming with amp bf16; iterations up to 3 ran with amp none" in caplog.text
    trainer(9, "fp16").fit(resume=True)  # from a checkpoint without a gradient scale: a fresh one
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["scaler"]["scale"] > 0
    trainer(12, "none").fit(resume=True)  # and back, from one with a scale
    threads = torch.get_num_threads()
    try:  # a resume with another thread count is a stretch of its own, whatever else stays the same
        torch.set_num_threads(threads + 1)
        trainer(14, "none").fit(resume=True)
    finally:
        torch.set_num_threads(threads)
    segments = run_segments(tmp_path / "run" / "metrics.jsonl")
    assert [(s["from_iteration"], s["amp"], s["threads"]) for s in segments] == [
        (0, "none", threads),
        (3, "bf16", threads),
        (6, "fp16", threads),
        (9, "none", threads),
        (12, "none", threads + 1),
    ]
    assert all(s["cpu"] == cpu_description() and s["device"] == "cpu" and s["compile"] is False for s in segments)
    described = "none to iteration 3, then bf16 to iteration 6, then fp16 to iteration 9, then none"
    assert describe_amp(segments, "none") == described
    fields = recipe_and_segments(tmp_path / "run", {"lr": 0.1, "amp": "none", "seed": 3}, ("lr", "amp"))
    assert fields == {"recipe": {"lr": 0.1, "amp": described}, "segments": segments}
    # a resume that changes nothing of how it runs continues its stretch; what segment records do not cover
    # (a run older than them, or its start) is the configured precision
    assert describe_amp(segments[:1] * 2, "none") == "none" and describe_amp([], "bf16") == "bf16"
    assert describe_amp([dict(segments[1], from_iteration=5)], "none") == "none to iteration 5, then bf16"
    assert run_segments(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
    (["--lr", "abc"], "argument --lr: 'abc' is not a number"),
    (["--batch-size", "0"], "argument --batch-size: must be > 0, got 0"),
    (["--batch-size", "1.5"], "argument --batch-size: '1.5' is not an integer"),
    (["--momentum", "1.5"], "argument --momentum: must lie in [0, 1), got 1.5"),
    (["--weight-decay=-1e-4"], "argument --weight-decay: must be >= 0, got -1e-4"),
    (["--max-iters", "0"], "argument --max-iters: must be > 0, got 0"),
    (["--max-iters", "5", "--epochs", "1"], "argument --epochs: not allowed with argument --max-iters"),
    (["--warmup-until-error", "80"],
     "argument --warmup-until-error: must lie in [0, 1) (a fraction: 0.8 = 80 %), got 80"),
    (["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    (["--eval-every", "-5"], "argument --eval-every: must be >= 0, got -5"),
    (["--log-every", "0"], "argument --log-every: must be > 0, got 0"),
    (["--random-erasing", "1.5"], "argument --random-erasing: must lie in [0, 1], got 1.5"),
    (["--random-erasing", "-0.5"], "argument --random-erasing: must lie in [0, 1], got -0.5"),
    (["--random-erasing", "half"], "argument --random-erasing: 'half' is not a number"),
    (["--erasing-fill", "zero"], "argument --erasing-fill: invalid choice: 'zero'"),
])  # fmt: skip
def test_out_of_range_flags_are_refused_by_name_before_anything_runs(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        train_main([*TINY, *flags, "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_warm_up_and_schedule_flags_that_cannot_mean_what_was_asked_are_refused(tmp_path):
    out = ["--output", str(tmp_path / "x")]
    with pytest.raises(SystemExit, match=r"--milestones 500 900: at or past the run's end \(iteration 400\)"):
        train_main([*TINY, "--max-iters", "400", "--milestones", "100", "500", "900", *out])
    with pytest.raises(SystemExit, match="two kinds of warm-up: give one"):
        train_main([*TINY, "--warmup-until-error", "0.8", "--warmup-iters", "10", *out])
    with pytest.raises(SystemExit, match="--warmup-lr is the lr of a warm-up, and this run has none"):
        train_main([*TINY, "--warmup-lr", "0.05", *out])
    with pytest.raises(SystemExit, match="--milestones: only the step schedule .* this run's schedule is cosine"):
        train_main([*TINY, "--schedule", "cosine", "--milestones", "100", "200", *out])
    ramp = resolve_config(build_parser().parse_args(["resnet20", "--warmup-iters", "100"]))
    assert ramp["warmup_iters"] == 100 and ramp["warmup_lr"] is None  # the linear ramp the help describes
    assert resolve_config(build_parser().parse_args(["resnet110", "--warmup-lr", "0.02"]))["warmup_lr"] == 0.02
    with pytest.raises(SystemExit, match="--schedule step needs --milestones for resnet18"):
        train_main(["resnet18", "--dataset", "synthetic", "--schedule", "step", "--max-iters", "2", *out])
    args = build_parser().parse_args(["resnet110", "--warmup-until-error", "0"])
    assert resolve_config(args)["warmup_until_error"] is None and resolve_config(args)["warmup_lr"] is None  # 0: off
    default = resolve_config(build_parser().parse_args(["resnet110"]))
    assert default["warmup_until_error"] == 0.8 and default["warmup_lr"] == 0.01  # §4.2
    fixed = resolve_config(build_parser().parse_args(["resnet110", "--warmup-iters", "400"]))
    assert fixed["warmup_until_error"] is None and fixed["warmup_iters"] == 400
    with pytest.raises(SystemExit, match="on fashion-mnist with --val-split 0 that would be the test split"):
        resolve_config(build_parser().parse_args(["resnet18", "--dataset", "fashion-mnist"]))
    held_out = resolve_config(
        build_parser().parse_args(["resnet18", "--dataset", "fashion-mnist", "--val-split", "5000"])
    )
    assert held_out["schedule"] == "plateau" and held_out["val_split"] == 5000
    assert resolve_config(build_parser().parse_args(["resnet18", "--dataset", "cifar10"]))["val_split"] == 5000  # §4.2
    with pytest.raises(SystemExit, match="ImageNet has its own val/ folder"):
        resolve_config(build_parser().parse_args(["resnet18", "--val-split", "100"]))
