"""Weights: safetensors and torch files, the zoo manifest with sha256, and bad files."""

import json

import pytest
import torch
import torchvision

from backbones import create_model
from backbones.fileio import atomic_write_json, sha256_of
from backbones.weights import append_record, describe_state_dict, read_finished_run, read_zoo, save_weights


def _write_zoo(directory, model, **fields):
    path = save_weights(model, directory / "tiny.safetensors")
    record = {
        "id": "resnet20_tiny", "arch": "resnet20", "constructor": {"in_chans": 1}, "dataset": "synthetic",
        "class_names": [f"c{i}" for i in range(4)],
        "preprocessing": {"input_size": 32, "channels": 1, "mean": [0.5], "std": [0.25]},
        "recipe": {"lr": 0.1}, "metrics": {"top1_err": 12.5, "command": "python -m backbones.evaluate ..."},
        "file": path.name, "sha256": sha256_of(path), "size": path.stat().st_size,
    }  # fmt: skip
    record.update(fields)
    zoo = directory / "zoo.json"
    zoo.write_text(json.dumps({"format_version": 1, "weights": [record]}))
    return zoo, path


def test_zoo_id_builds_the_recorded_architecture_and_loads_it(tmp_path, monkeypatch):
    torch.manual_seed(1)
    trained = create_model("resnet20", in_chans=1, num_classes=4).eval()
    zoo, _ = _write_zoo(tmp_path, trained)
    monkeypatch.setenv("BACKBONES_ZOO", str(zoo))
    model = create_model("resnet20", weights="resnet20_tiny").eval()
    assert model.in_chans == 1 and model.num_classes == 4
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="4 classes, but num_classes=10"):
        create_model("resnet20", weights="resnet20_tiny", num_classes=10)
    with pytest.raises(ValueError, match="are for resnet20, not resnet56"):
        create_model("resnet56", weights="resnet20_tiny")
    with pytest.raises(ValueError, match="neither a file nor a zoo id.*resnet20_tiny"):
        create_model("resnet20", weights="resnet20_imagenet")


def test_zoo_checksum_and_size_are_verified(tmp_path, monkeypatch):
    zoo, path = _write_zoo(tmp_path, create_model("resnet20", in_chans=1, num_classes=4))
    monkeypatch.setenv("BACKBONES_ZOO", str(zoo))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 of .*tiny.safetensors is"):
        create_model("resnet20", weights="resnet20_tiny")
    path.write_bytes(bytes(data[:1000]))
    with pytest.raises(ValueError, match="has 1000 bytes, the record says"):
        create_model("resnet20", weights="resnet20_tiny")


def test_malformed_zoo_manifest_names_the_field(tmp_path):
    zoo = tmp_path / "zoo.json"
    zoo.write_text(json.dumps({"weights": [{"id": "x", "arch": "resnet20"}]}))
    with pytest.raises(ValueError, match=r"weights\[0\] \(x\): missing field\(s\) \['constructor'"):
        read_zoo(zoo)
    zoo.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_zoo(zoo)


def test_torchvision_pth_and_wrapped_ddp_checkpoints_load(tmp_path):
    reference = torchvision.models.resnet18().eval()
    plain_path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), plain_path)
    wrapped_path = tmp_path / "checkpoint.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 3}, wrapped_path)
    x = torch.randn(1, 3, 64, 64)
    for path in (plain_path, wrapped_path):
        model = create_model("resnet18", weights=path).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_state_dict_of_another_architecture_is_explained(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_weights(create_model("resnet18"), path)
    with pytest.raises(ValueError) as info:
        create_model("resnet34", weights=path)
    message = str(info.value)
    assert "r18.safetensors: the state dict does not fit resnet34" in message
    assert "missing 4" not in message and "missing" in message and "layer1.2.conv1.weight" in message
    assert "expected a 34-layer basic-block net with blocks [3, 4, 6, 3]" in message
    assert "found a 18-layer basic-block net with blocks [2, 2, 2, 2]" in message

    save_weights(create_model("resnet18", num_classes=10), path)
    with pytest.raises(ValueError, match=r"shape mismatch: fc.weight expected \(1000, 512\), found \(10, 512\)"):
        create_model("resnet18", num_classes=1000, weights=path)
    assert create_model("resnet18", weights=path).num_classes == 10  # inferred from the file when not given


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_weights_file_gives_a_clear_error(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    model = create_model("resnet20")
    if suffix == ".safetensors":
        save_weights(model, path)
    else:
        torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"weights{suffix} \(\d+ bytes\): not a readable .*truncated or corrupt"):
        create_model("resnet20", weights=path)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_model("resnet20", weights=tmp_path / "nope.safetensors")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        create_model("resnet20", weights=path)


def test_save_weights_is_atomic_and_leaves_no_temporary_files(tmp_path):
    save_weights(create_model("resnet20"), tmp_path / "w.safetensors", metadata={"arch": "resnet20"})
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o044 == 0o044  # readable by others, not mkstemp's 0600
    assert describe_state_dict(create_model("resnet56").state_dict()).startswith("a 56-layer basic-block net")


def test_atomic_write_json_round_trips_ends_with_newline_and_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"top1_err": 4.67, "rows": [1, 2]})
    text = path.read_text()
    assert text.endswith("}\n") and json.loads(text) == {"top1_err": 4.67, "rows": [1, 2]}
    atomic_write_json(path, [1, 2], indent=None)
    assert path.read_text() == "[1, 2]\n"
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"bad": object()})
    assert path.read_text() == "[1, 2]\n"  # the old file stays whole
    assert [f.name for f in tmp_path.iterdir()] == ["report.json"]  # and no temporary file is left behind


def test_read_finished_run_names_the_missing_or_bad_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match=r"run/config\.json is missing: is .* a finished backbones\.train run"):
        read_finished_run(run, "backbones.train")
    (run / "config.json").write_text('{"arch": "resnet20"}')
    with pytest.raises(FileNotFoundError, match=r"run/final\.safetensors is missing.*detection\.train run"):
        read_finished_run(run, "detection.train")
    (run / "final.safetensors").write_bytes(b"weights")
    assert read_finished_run(run, "backbones.train") == ({"arch": "resnet20"}, run / "final.safetensors")
    (run / "config.json").write_text('{"arch": ')
    with pytest.raises(ValueError, match=r"run/config\.json: not valid JSON"):
        read_finished_run(run, "backbones.train")
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"run/config\.json: expected a JSON object, got list"):
        read_finished_run(run, "backbones.train")


def test_append_record_creates_the_manifest_and_keeps_other_sections(tmp_path):
    zoo = tmp_path / "zoo.json"
    append_record(zoo, "weights", {"id": "a"})
    append_record(zoo, "detectors", {"id": "d"})
    append_record(zoo, "weights", {"id": "b"})
    assert json.loads(zoo.read_text()) == {"format_version": 1, "weights": [{"id": "a"}, {"id": "b"}],
                                           "detectors": [{"id": "d"}]}  # fmt: skip
