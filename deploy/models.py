"""A zoo classifier with what its artifacts must carry: classes, preprocessing, weights provenance."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from backbones.evaluate import load_model
from backbones.fileio import sha256_of
from backbones.registry import create_model, get_model_entry
from backbones.weights import read_zoo

from .preprocess import from_zoo_preprocess, imagenet_preprocessing


@dataclass
class PreparedModel:
    arch: str
    model: nn.Module  # in eval mode, on the CPU, fp32
    class_names: list[str]
    preprocessing: dict[str, Any]  # sidecar form (deploy.preprocess)
    weights: str | None  # as given: zoo id, run directory, weights file; None = random init
    weights_sha256: str | None = None
    constructor: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.preprocessing["channels"])

    @property
    def input_size(self) -> int:
        return int(self.preprocessing["input_size"])


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, as torchvision ships them (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _default_preprocessing(family: str, channels: int) -> dict[str, Any]:
    if family == "imagenet" and channels == 3:
        return imagenet_preprocessing()
    # A CIFAR-family net (or an odd channel count) with no record: native size, neutral statistics.
    return from_zoo_preprocess({"input_size": 32 if family == "cifar" else 224, "channels": channels,
                                "mean": [0.5] * channels, "std": [0.25] * channels, "pad_to": None})  # fmt: skip


def _constructor_of(weights: str | None) -> dict[str, Any]:
    if weights is None:
        return {}
    path = Path(weights)
    config = (path if path.is_dir() else path.parent) / "config.json"
    if (path.is_dir() or path.is_file()) and config.is_file():
        return dict(json.loads(config.read_text()).get("constructor", {}))
    record = read_zoo().get(weights)
    return dict(record.constructor) if record is not None else {}


def _weights_file(weights: str) -> Path | None:
    path = Path(weights)
    if path.is_dir():
        return path / "final.safetensors"
    if path.is_file():
        return path
    record = read_zoo().get(weights)
    return record.path if record is not None else None


def prepare_model(arch: str, weights: str | Path | None = None, **constructor: Any) -> PreparedModel:
    """Build ``arch`` with ``weights`` (zoo id, run directory or weights file, as
    ``backbones.evaluate.load_model`` takes them); ``None`` means random init, with a warning."""
    entry = get_model_entry(arch)  # unknown names fail here, listing close matches
    if weights is None:
        warnings.warn(f"{arch}: no weights given, using a randomly initialised model (fine for testing a pipeline, "
                      "useless for predictions)", stacklevel=2)  # fmt: skip
        model = create_model(arch, **constructor)
        class_names: list[str] | None = None
        preprocessing: dict[str, Any] | None = None
        source = None
    else:
        source = str(weights)
        if constructor:
            model = create_model(arch, weights=source, **constructor)
            class_names, preprocessing = None, None
        else:
            loaded = load_model(arch, source)
            model, class_names, preprocessing = loaded.model, loaded.class_names, loaded.preprocessing
    model = model.float().eval()
    channels = int(getattr(model, "in_chans", 3))
    num_classes = int(getattr(model, "num_classes", 0)) or int(model.fc.out_features)  # type: ignore[union-attr]
    if class_names is None:
        if entry.family == "imagenet" and num_classes == 1000:
            class_names = imagenet_class_names()
        else:
            class_names = [f"class_{index}" for index in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{arch} with weights {source}: {len(class_names)} class names for {num_classes} outputs")
    sidecar_pre = from_zoo_preprocess(preprocessing) if preprocessing else _default_preprocessing(entry.family, channels)
    if sidecar_pre["channels"] != channels:
        raise ValueError(f"{arch} with weights {source}: preprocessing makes {sidecar_pre['channels']} channel(s), "
                         f"the model takes {channels}")  # fmt: skip
    file = _weights_file(source) if source is not None else None
    digest = sha256_of(file) if file is not None and file.is_file() else None
    options = {**_constructor_of(source), **constructor, "in_chans": channels}
    return PreparedModel(arch, model, class_names, sidecar_pre, source, digest, options)
