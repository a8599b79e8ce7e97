"""Model registry: every zoo architecture by name, with ``create_model`` and ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .resnet import ResNet, cifar_resnet, imagenet_resnet
from .weights import load_weights, resolve_weights


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., ResNet]
    family: str  # "imagenet" or "cifar": decides native input size and default classes
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return 224 if self.family == "imagenet" else 32


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., ResNet], family: str, description: str, **defaults: Any) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    if family not in ("imagenet", "cifar"):
        raise ValueError(f"family must be 'imagenet' or 'cifar', got {family!r}")
    _REGISTRY[name] = ModelEntry(name, partial(builder, name=name, **defaults), family, description, defaults)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a glob ``pattern``, in registration order."""
    return [
        name
        for name, entry in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (family is None or entry.family == family)
    ]


def get_model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (backbones.list_models() lists all {len(_REGISTRY)})")
    return _REGISTRY[name]


_CONSTRUCTOR_OPTIONS = [
    p
    for p in inspect.signature(ResNet.__init__).parameters
    if p not in ("self", "block", "layers", "widths", "name", "stem")
]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    **overrides: Any,
) -> ResNet:
    """Build a zoo model by name.

    ``weights`` is a zoo id from ``weights/zoo.json`` (its record supplies the constructor options
    and class count; the file's sha256 is verified) or a path to a ``.safetensors`` file or a
    torchvision/timm ``.pth`` state dict (its fc and conv1 shapes give the class and input-channel
    counts unless they are passed). ``overrides`` are constructor options: ``shortcut``
    (A/B/C/none), ``stride_in_1x1``, ``zero_init_residual``, ``in_chans``.
    """
    entry = get_model_entry(name)
    unknown = sorted(set(overrides) - set(_CONSTRUCTOR_OPTIONS))
    if unknown:
        raise TypeError(f"create_model({name!r}) got unknown option(s) {unknown}; accepted: {_CONSTRUCTOR_OPTIONS}")
    source = resolve_weights(weights, name) if weights is not None else None
    options = dict(overrides)
    if source is not None and source.record is not None:
        for key, value in source.record.constructor.items():
            if key in options and options[key] != value:
                raise ValueError(
                    f"weights {source.record.id!r} were trained with {key}={value!r}, "
                    f"but create_model got {key}={options[key]!r}"
                )
            options[key] = value
        record_classes = len(source.record.class_names)
        if num_classes is not None and num_classes != record_classes:
            raise ValueError(
                f"weights {source.record.id!r} have {record_classes} classes, "
                f"but num_classes={num_classes} was asked for"
            )
        num_classes = record_classes
    elif source is not None:  # a plain file: its shapes say what it was trained for
        fc, stem = source.state_dict.get("fc.weight"), source.state_dict.get("conv1.weight")
        if num_classes is None and fc is not None and fc.dim() == 2:
            num_classes = int(fc.shape[0])
        if "in_chans" not in options and stem is not None and stem.dim() == 4:
            options["in_chans"] = int(stem.shape[1])
    if num_classes is not None:
        options["num_classes"] = num_classes
    model = entry.builder(**options)
    if source is not None:
        load_weights(model, source)
    return model


def _register_zoo() -> None:
    for depth in (18, 34, 50, 101, 152):
        register_model(f"resnet{depth}", partial(imagenet_resnet, depth), "imagenet",
                       f"ResNet-{depth}, Table 1, option B, torchvision layout (stride on the 3×3)")  # fmt: skip
    for depth in (50, 101, 152):
        register_model(f"resnet{depth}_paper", partial(imagenet_resnet, depth), "imagenet",
                       f"ResNet-{depth} exactly as the paper: bottleneck stride on the first 1×1, option B",
                       stride_in_1x1=True)  # fmt: skip
    for depth, option in ((18, "A"), (34, "A"), (34, "C")):
        register_model(f"resnet{depth}_{option.lower()}", partial(imagenet_resnet, depth), "imagenet",
                       f"ResNet-{depth} with shortcut option {option} (Tables 2-3)", shortcut=option)  # fmt: skip
    for depth in (18, 34, 50, 101, 152):
        register_model(f"plain{depth}", partial(imagenet_resnet, depth), "imagenet",
                       f"Plain-{depth}: ResNet-{depth} without shortcuts (Table 2, Fig. 4)",
                       shortcut="none")  # fmt: skip
    for depth in (20, 32, 44, 56, 110, 1202):
        register_model(f"resnet{depth}", partial(cifar_resnet, depth), "cifar",
                       f"CIFAR ResNet-{depth} (§4.2, 6n+2, option A)")  # fmt: skip
    for depth in (20, 32, 44, 56, 110):
        register_model(f"plain{depth}", partial(cifar_resnet, depth), "cifar",
                       f"CIFAR plain-{depth} (§4.2, Fig. 6 left)", shortcut="none")  # fmt: skip


_register_zoo()
