"""Weights: the zoo manifest (``weights/zoo.json``), reading state dicts safely, loading them with
errors that say what was expected and what was found.

A zoo record (one entry of ``zoo.json``'s ``"weights"`` list)::

    {"id": "resnet20_fashion_mnist", "arch": "resnet20", "constructor": {"in_chans": 1},
     "dataset": "fashion-mnist", "class_names": [...],
     "preprocessing": {"input_size": 32, "channels": 1, "mean": [...], "std": [...], ...},
     "recipe": {...}, "metrics": {"top1_err": 5.1, "command": "python -m backbones.evaluate ..."},
     "file": "resnet20_fashion_mnist.safetensors", "sha256": "...", "size": 1093456,
     "segments": [{"from_iteration": 0, "amp": "bf16", "device": "cpu", "cpu": "AVX512 + ...", ...}],
     "log": {"file": "resnet20_fashion_mnist.metrics.jsonl", "sha256": "...", "size": 131072}}

``segments`` (how each stretch of the run was executed) and ``log`` (the run's metrics.jsonl, for its
curves) are optional: records added before they existed have neither.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import atomic_path, atomic_write_json, read_json_object, sha256_of

ZOO_ENV = "BACKBONES_ZOO"
DEFAULT_ZOO = Path(__file__).resolve().parent.parent / "weights" / "zoo.json"
STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_REQUIRED_FIELDS = ("id", "arch", "constructor", "dataset", "class_names", "preprocessing", "recipe", "metrics",
                    "file", "sha256", "size")  # fmt: skip


@dataclass(frozen=True)
class ZooRecord:
    id: str
    arch: str
    constructor: dict[str, Any]
    dataset: str
    class_names: list[str]
    preprocessing: dict[str, Any]
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    file: str
    sha256: str
    size: int
    path: Path = field(compare=False)
    log: dict[str, Any] | None = None  # the run's metrics.jsonl beside the weights: {"file", "sha256", "size"}


@dataclass
class WeightsSource:
    name: str  # what to call it in messages: a path or a zoo id
    state_dict: dict[str, torch.Tensor]
    record: ZooRecord | None = None


def zoo_path() -> Path:
    return Path(os.environ.get(ZOO_ENV, DEFAULT_ZOO))


def manifest_entries(path: Path, section: str, required: tuple[str, ...],
                     optional_section: bool = False) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(where, entry) of every record in a manifest's ``section`` list, each an object holding the
    ``required`` fields, with a sha256 field of 64 hex digits and a unique id; else ValueError naming
    the record and the field. Shared by the backbone and the detector zoo."""
    data = read_json_object(path)
    entries = data.get(section, [] if optional_section else None)
    if not isinstance(entries, list):
        raise ValueError(f'{path}: expected an object with a "{section}" list')
    found: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: {section}[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = [key for key in required if key not in entry]
        if missing:
            raise ValueError(f"{where} ({entry.get('id', '?')}): missing field(s) {missing}")
        if not re.fullmatch(r"[0-9a-f]{64}", str(entry["sha256"])):
            raise ValueError(f"{where} ({entry['id']}): field 'sha256' must be 64 hex digits")
        if not isinstance(entry["class_names"], list) or not entry["class_names"]:
            raise ValueError(f"{where} ({entry['id']}): field 'class_names' must be a non-empty list")
        if entry["id"] in seen:
            raise ValueError(f"{where}: duplicate id {entry['id']!r}")
        seen.add(entry["id"])
        found.append((where, entry))
    return found


def read_zoo(path: str | Path | None = None) -> dict[str, ZooRecord]:
    """All records of a zoo manifest by id; a malformed manifest raises ValueError naming the field."""
    path = Path(path) if path is not None else zoo_path()
    if not path.exists():
        return {}
    return {entry["id"]: ZooRecord(**{key: entry[key] for key in _REQUIRED_FIELDS}, path=path.parent / entry["file"],
                                   log=entry.get("log"))
            for _, entry in manifest_entries(path, "weights", _REQUIRED_FIELDS)}  # fmt: skip


def keep_run_log(run_dir: Path, zoo_dir: Path, zoo_id: str) -> dict[str, Any] | None:
    """Copy a run's metrics.jsonl beside its zoo weights as ``ID.metrics.jsonl``, so the training curves
    outlive the machine the run trained on; the record's ``log`` field. None if the run has no log."""
    source = Path(run_dir) / "metrics.jsonl"
    if not source.is_file():
        return None
    target = Path(zoo_dir) / f"{zoo_id}.metrics.jsonl"
    with atomic_path(target) as tmp:
        tmp.write_bytes(source.read_bytes())
    return {"file": target.name, "sha256": sha256_of(target), "size": target.stat().st_size}


def read_finished_run(run_dir: str | Path, trainer: str) -> tuple[dict[str, Any], Path]:
    """(config.json as a dict, path of final.safetensors) of a finished ``trainer`` run; a missing file or a
    config that is not a JSON object raises an error naming the file."""
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.json", run_dir / "final.safetensors"
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: is {run_dir} a finished {trainer} run?")
    return read_json_object(config_path), weights_path


def publish_run(run_dir: str | Path, weights_path: Path, zoo: Path, zoo_id: str) -> dict[str, Any]:
    """Copy a run's weights (and its metrics.jsonl) beside the manifest as ``ID.safetensors``, atomically;
    the record's ``file``, ``sha256``, ``size`` and ``log`` fields."""
    target = zoo.parent / f"{zoo_id}.safetensors"
    with atomic_path(target) as tmp:
        shutil.copyfile(weights_path, tmp)
    return {"file": target.name, "sha256": sha256_of(target), "size": target.stat().st_size,
            "log": keep_run_log(Path(run_dir), zoo.parent, zoo_id)}  # fmt: skip


_ZOO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_zoo_id(zoo_id: str) -> str:
    """A zoo id names ``ID.safetensors`` beside the manifest and is typed into the record's command: letters,
    digits, ``_``, ``.`` and ``-`` only."""
    if not _ZOO_ID.fullmatch(zoo_id):
        raise ValueError(f"zoo id {zoo_id!r}: use letters, digits, '_', '.' and '-', starting with a letter or digit "
                         "(it names weights/ID.safetensors and is part of the record's command)")  # fmt: skip
    return zoo_id


def add_verified_record(zoo: Path, section: str, record: dict[str, Any], load_back: Callable[[], object]) -> None:
    """Append ``record`` (whose files ``publish_run`` wrote), then ``load_back()`` through the manifest; if
    that fails, the manifest is restored and the record's files removed before the error goes on."""
    before = zoo.read_bytes() if zoo.exists() else None
    append_record(zoo, section, record)
    try:
        load_back()
    except BaseException:
        if before is None:
            zoo.unlink(missing_ok=True)
        else:
            with atomic_path(zoo) as tmp:
                tmp.write_bytes(before)
        for name in (record.get("file"), (record.get("log") or {}).get("file")):
            if name:
                (zoo.parent / name).unlink(missing_ok=True)
        raise


def append_record(zoo: Path, section: str, record: dict[str, Any]) -> None:
    """Add ``record`` to the manifest's ``section`` list (creating the manifest or section), atomically."""
    manifest: dict[str, Any] = json.loads(zoo.read_text()) if zoo.exists() else {"format_version": 1, "weights": []}
    manifest.setdefault(section, []).append(record)
    atomic_write_json(zoo, manifest)


def zoo_run_log(zoo_id: str, path: str | Path | None = None) -> Path | None:
    """The verified training log of a zoo record, backbone or detector; None if ``zoo_id`` is no record.
    A record that kept no log (added before records kept them) or a malformed ``log`` field is a ValueError."""
    path = Path(path) if path is not None else zoo_path()
    if not path.exists():
        return None
    for section in ("weights", "detectors"):  # the detector records' fields are detection.zoo's; only these matter
        for where, entry in manifest_entries(
            path, section, ("id", "file", "sha256", "class_names"), optional_section=True
        ):
            if entry["id"] != str(zoo_id):
                continue
            log = entry.get("log")
            if log is None:
                raise ValueError(f"zoo record {zoo_id!r} kept no training log (it was added before zoo records kept "
                                 "their run's metrics.jsonl)")  # fmt: skip
            if not isinstance(log, dict) or not {"file", "size", "sha256"} <= set(log):
                raise ValueError(f"{where} ({zoo_id}): field 'log' must be an object with file, size and sha256, "
                                 f"got {log!r}")  # fmt: skip
            log_path = path.parent / log["file"]
            verify_zoo_file(str(zoo_id), log_path, log["size"], log["sha256"], what="training log")
            return log_path
    return None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file or a torch state dict (``weights_only=True``, never plain pickle).

    Checkpoints that wrap the state dict (``{"model": ...}``, ``{"state_dict": ...}``) and the
    ``module.`` / ``_orig_mod.`` prefixes of DDP and torch.compile are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{path} ({size} bytes): not a readable safetensors file, truncated or corrupt? ({error})"
            ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"{path} ({size} bytes): not a readable torch state dict, truncated or corrupt? ({first})"
            ) from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), found {type(state).__name__}")
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; is this a state dict?")
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        clean[key] = value
    return clean


def resolve_weights(weights: str | Path, arch: str) -> WeightsSource:
    """Turn a zoo id or a file path into a state dict (and its zoo record, if any)."""
    as_path = Path(weights)
    if as_path.suffix in STATE_DICT_SUFFIXES or as_path.exists():
        return WeightsSource(str(as_path), load_state_dict_file(as_path))
    zoo = read_zoo()
    if str(weights) not in zoo:
        known = ", ".join(sorted(zoo)) or "none"
        raise ValueError(f"weights {str(weights)!r} is neither a file nor a zoo id in {zoo_path()} (zoo ids: {known})")
    record = zoo[str(weights)]
    if record.arch != arch:
        raise ValueError(
            f"zoo weights {record.id!r} are for {record.arch}, not {arch}; "
            f"use create_model({record.arch!r}, weights={record.id!r})"
        )
    verify_zoo_file(record.id, record.path, record.size, record.sha256)
    return WeightsSource(record.id, load_state_dict_file(record.path), record)


def verify_zoo_file(zoo_id: str, path: Path, size: int, sha256: str, what: str = "weights") -> None:
    """A zoo record's file (its weights, or ``what`` else) must exist with the recorded size and sha256 (else
    one clear error)."""
    if not path.is_file():
        raise FileNotFoundError(f"zoo {what} {zoo_id!r}: file {path} is missing")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ValueError(f"zoo {what} {zoo_id!r}: {path} has {actual_size} bytes, the record says {size} (truncated?)")
    digest = sha256_of(path)
    if digest != sha256:
        raise ValueError(f"zoo {what} {zoo_id!r}: sha256 of {path} is {digest}, the record says {sha256}")


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short guess at what architecture a ResNet-style state dict belongs to."""
    blocks = []
    for stage in range(1, 6):
        indices = {int(m.group(1)) for key in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        if not indices:
            break
        blocks.append(max(indices) + 1)
    if not blocks:
        return "no ResNet stages (layer1, layer2, ...) found"
    bottleneck = any(".conv3." in key for key in state_dict)
    depth = (3 if bottleneck else 2) * sum(blocks) + 2
    fc = state_dict.get("fc.weight")
    classes = f", {fc.shape[0]} classes" if fc is not None else ""
    stem = state_dict.get("conv1.weight")
    chans = f", {stem.shape[1]} input channel(s)" if stem is not None else ""
    kind = "bottleneck" if bottleneck else "basic-block"
    return f"a {depth}-layer {kind} net with blocks {blocks}{chans}{classes}"


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one ValueError listing missing/unexpected keys and shape mismatches, if any."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} expected {tuple(expected[key].shape)}, found {tuple(state_dict[key].shape)}"
        for key in expected
        if key in state_dict and expected[key].shape != state_dict[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return

    def some(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")

    lines = [f"{source}: the state dict does not fit {getattr(model, 'name', type(model).__name__)}"]
    if missing:
        lines.append(f"  missing {len(missing)} key(s): {some(missing)}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} key(s): {some(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatch: {some(mismatched)}")
    lines.append(f"  expected {describe_state_dict(expected)}; found {describe_state_dict(state_dict)}")
    raise ValueError("\n".join(lines))


def load_weights(model: nn.Module, source: WeightsSource) -> None:
    check_state_dict(model, source.state_dict, source.name)
    model.load_state_dict(source.state_dict, strict=True)


def save_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                 metadata: Mapping[str, str] | None = None) -> Path:  # fmt: skip
    """Write a state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
    return path
