"""A zoo classifier with what its artifacts must carry: classes, preprocessing, weights provenance."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from backbones.evaluate import load_model
from backbones.fileio import read_json_object, sha256_of
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
        return dict(read_json_object(config).get("constructor", {}))
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
    num_classes = int(getattr(model, "num_classes", 0)) or int(model.fc.out_features)
    if class_names is None:
        if entry.family == "imagenet" and num_classes == 1000:
            class_names = imagenet_class_names()
        else:
            class_names = [f"class_{index}" for index in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{arch} with weights {source}: {len(class_names)} class names for {num_classes} outputs")
    sidecar_pre = (
        from_zoo_preprocess(preprocessing) if preprocessing else _default_preprocessing(entry.family, channels)
    )
    if sidecar_pre["channels"] != channels:
        raise ValueError(f"{arch} with weights {source}: preprocessing makes {sidecar_pre['channels']} channel(s), "
                         f"the model takes {channels}")  # fmt: skip
    file = _weights_file(source) if source is not None else None
    digest = sha256_of(file) if file is not None and file.is_file() else None
    options = {**_constructor_of(source), **constructor, "in_chans": channels}
    return PreparedModel(arch, model, class_names, sidecar_pre, source, digest, options)


# ---------------------------------------------------------------- detectors
@dataclass
class PreparedDetector:
    """A ``detection.train`` run's Faster R-CNN with what its artifacts must carry."""

    arch: str
    design: str  # "c4" or "fpn"
    model: Any  # torchvision FasterRCNN (untyped), eval mode, CPU, fp32
    class_names: list[str]  # label l (1..C) is class_names[l - 1]; 0 is background and never output
    channels: int
    config: dict[str, Any]  # the run's config.json
    weights: str  # the run directory (or its weights file)
    weights_sha256: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def transform(self) -> Any:
        return self.model.transform  # GeneralizedRCNNTransform: min_size, max_size, image_mean, image_std

    def preprocessing(self) -> dict[str, Any]:
        """The sidecar's ``preprocessing`` record: what the caller does (float image in [0, 1]) and
        what the graph does itself (resize, normalise, pad), for the record."""
        t = self.transform
        return {"type": "detector_graph", "channels": self.channels, "layout": "CHW", "value_range": [0.0, 1.0],
                "scale": 255.0, "min_size": int(t.min_size[-1]), "max_size": int(t.max_size),
                "size_divisible": int(t.size_divisible), "interpolation": "bilinear",
                "mean": [float(v) for v in t.image_mean], "std": [float(v) for v in t.image_std]}  # fmt: skip

    def postprocessing(self) -> dict[str, Any]:
        heads = self.model.roi_heads
        return {"type": "detection", "boxes": "boxes", "labels": "labels", "scores": "scores", "box_format": "xyxy",
                "box_coordinates": "pixels of the image given to the graph", "label_offset": 1,
                "score_thresh": float(heads.score_thresh), "nms_thresh": float(heads.nms_thresh),
                "detections_per_image": int(heads.detections_per_img), "sorted": "by score, descending"}  # fmt: skip


def prepare_detector(arch: str, weights: str | Path, design: str | None = None, *, score_thresh: float | None = None,
                     detections_per_image: int | None = None) -> PreparedDetector:  # fmt: skip
    """Rebuild the detector of a ``detection.train`` run directory (config.json + final.safetensors), a zoo
    detector id, or a torchvision Faster R-CNN checkpoint.

    ``arch`` and ``design`` (when given) must be what the run trained; ``score_thresh`` and
    ``detections_per_image`` replace the box head's inference settings (torchvision: 0.05, 100)."""
    from detection.eval import load_detector, run_or_zoo
    from detection.torchvision_checkpoints import identify_checkpoint

    source = Path(weights)
    found = run_or_zoo(source)
    if found is None:  # a checkpoint file: torchvision's (anything else is refused, naming what it is)
        identify_checkpoint(source)
        config, file = {"design": "fpn"}, source
    else:
        config, file = found
    if design is not None and config["design"] != design:
        raise ValueError(f"{source}: the run trained a {config['design']!r} detector, not {design!r} "
                         f"(pass --detector {config['design']})")  # fmt: skip
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: the run at {source} has no final weights yet")
    loaded, config = load_detector(arch, source)
    model: Any = loaded  # torchvision FasterRCNN
    heads = model.roi_heads
    if score_thresh is not None:
        if not 0.0 <= score_thresh < 1.0:
            raise ValueError(f"score_thresh must lie in [0, 1), got {score_thresh}")
        heads.score_thresh = float(score_thresh)
    if detections_per_image is not None:
        if detections_per_image < 1:
            raise ValueError(f"detections_per_image must be a positive integer, got {detections_per_image}")
        heads.detections_per_img = int(detections_per_image)
    channels = int(config.get("channels", model.backbone_info.in_chans))
    return PreparedDetector(arch, config["design"], model.float().eval(), list(config["class_names"]), channels,
                            config, str(weights), sha256_of(file))  # fmt: skip
