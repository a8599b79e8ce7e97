"""The JSON sidecar written next to every exported artifact (``<artifact>.json``).

It carries everything production needs besides the artifact itself: what the artifact is (backend,
file, sha256), the tensors it takes and gives (names, symbolic shapes, dtypes, dynamic axes), how
raw images become its input (preprocessing), what its output means (postprocessing, class names),
the tools that made it and, for TensorRT, the GPU and optimisation profiles it was built for, and
the parity figures of the export check. One example (a classifier exported to ONNX)::

    {"format": "resnet-zoo-deploy", "version": 1, "task": "classification", "backend": "onnx",
     "artifact": {"file": "resnet18.onnx", "sha256": "…", "size": 46772345},
     "model": {"arch": "resnet18", "weights": "resnet18.pth", "weights_sha256": "…", "num_classes": 1000},
     "precision": "fp32", "device": "any",
     "inputs": [{"name": "images", "shape": ["batch", 3, 224, 224], "dtype": "float32"}],
     "outputs": [{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}],
     "dynamic_axes": {"images": {"0": "batch"}, "logits": {"0": "batch"}},
     "preprocessing": {"input_size": 224, "channels": 3, "resize": 256, "pad_to": null,
                       "interpolation": "bilinear", "antialias": true, "scale": 255.0,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"},
     "postprocessing": {"type": "softmax_topk", "output": "logits", "top_k": 5},
     "class_names": ["tench", …],
     "tools": {"python": "3.11.9", "torch": "2.14.1", "onnx": "1.23.2", "onnxruntime": "1.32.0", "tensorrt": null},
     "export": {"exporter": "torch.onnx.export(dynamo=False)", "opset": 17, "created": "…"},
     "parity": {"reference": "PyTorch eager, fp32, cpu", "rel_error": 3e-07, "max_abs_error": 4e-06, …},
     "tensorrt": null}

A detector (task "detection", backend "onnx") takes ONE float image and gives its detections::

     "inputs": [{"name": "image", "shape": [3, "height", "width"], "dtype": "float32"}],
     "outputs": [{"name": "boxes", "shape": ["detections", 4], "dtype": "float32"},
                 {"name": "labels", "shape": ["detections"], "dtype": "int64"},
                 {"name": "scores", "shape": ["detections"], "dtype": "float32"}],
     "preprocessing": {"type": "detector_graph", "channels": 3, "layout": "CHW", "value_range": [0.0, 1.0],
                       "scale": 255.0, "min_size": 600, "max_size": 1000, "size_divisible": 32,
                       "interpolation": "bilinear", "mean": […], "std": […]},
     "postprocessing": {"type": "detection", "boxes": "boxes", "labels": "labels", "scores": "scores",
                        "box_format": "xyxy", "box_coordinates": "pixels of the image given to the graph",
                        "label_offset": 1, "score_thresh": 0.05, "nms_thresh": 0.5,
                        "detections_per_image": 100, "sorted": "by score, descending"},
     "model": {"arch": "resnet50", "design": "c4", "weights": "runs/det-…", "num_classes": 20, "config": {…}},

The caller gives pixel values / 255 (RGB, or luminance for 1-channel backbones) at the image's own
size; the graph resizes (shorter side to min_size, longer at most max_size), normalises with
mean/std and pads, runs the RPN, RoI heads, box decoding, per-class NMS and the score threshold,
and maps the boxes back to the given image: x1, y1, x2, y2 in its pixels. Label l (1..C) is
``class_names[l - 1]``. ``preprocessing`` other than channels and value_range is informational.

``tensorrt`` (backend "tensorrt" only) is ``{"version", "gpu", "compute_capability", "profiles":
[{input name: {"min", "opt", "max"}}], "strongly_typed": true, "graph_precision": …}``; ``openvino``
(backend "openvino" only) is ``{"inference_precision": "f32"|"bf16", …}`` and ``artifact.weights``
names the IR's ``.bin`` (file, sha256, size). A reduced-precision artifact also carries
``quantization`` (tool, scheme, calibration images and method, Q/DQ counts) and ``accuracy`` (the
check on real held-out images: agreement, logits error, top-1 accuracy of fp32 and of the artifact).

:func:`read_sidecar` validates a sidecar and raises :class:`SidecarError` naming the file and the
field. The ``task`` field keeps the format general: a task adds its own checks to ``TASK_CHECKS``.
"""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from backbones.fileio import atomic_write_json, read_json_object, sha256_of

FORMAT = "resnet-zoo-deploy"
VERSION = 1
BACKENDS = ("onnx", "openvino", "tensorrt", "aoti", "eager")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
OPENVINO_HINTS = ("f32", "bf16", "f16")
DTYPES = ("float32", "float16", "int8", "int32", "int64", "uint8", "bool")
DEVICES = ("any", "cpu", "cuda")  # "any": a portable artifact (ONNX, eager weights)
SUFFIX = ".json"


class SidecarError(ValueError):
    """A sidecar that is missing, unreadable or malformed; the message names the file and field."""


def sidecar_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SUFFIX)


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools that matter for an artifact (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("onnx", "onnx"),
                       ("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("tensorrt", "tensorrt")):  # fmt: skip
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["onnxruntime"] is None:  # the GPU build is a different distribution
        try:
            versions["onnxruntime"] = metadata.version("onnxruntime-gpu")
        except metadata.PackageNotFoundError:
            pass
    return versions


# ---------------------------------------------------------------- validation
class _Checker:
    """Field checks that collect nothing: the first problem raises, naming file and field."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def fail(self, field: str, problem: str) -> SidecarError:
        return SidecarError(f"{self.path}: field '{field}' {problem}")

    def get(self, field: str, required: bool = True) -> Any:
        node: Any = self.data
        for part in field.split("."):
            key, _, index = part.partition("[")
            if not isinstance(node, dict) or key not in node:
                if required:
                    raise self.fail(field, "is missing")
                return None
            node = node[key]
            if index:  # "inputs[0]"
                position = int(index.rstrip("]"))
                if not isinstance(node, list) or position >= len(node):
                    raise self.fail(field, "is missing")
                node = node[position]
        return node

    def kind(self, field: str, types: type | tuple[type, ...], required: bool = True) -> Any:
        value = self.get(field, required)
        if value is None and not required:
            return None
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(field, f"must be {_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise self.fail(field, f"must be {_names(types)}, got {type(value).__name__} {value!r:.60}")
        return value

    def choice(self, field: str, choices: tuple[str, ...], required: bool = True) -> Any:
        value = self.get(field, required)
        if value is None and not required:
            return None
        if value not in choices:
            raise self.fail(field, f"must be one of {list(choices)}, got {value!r}")
        return value

    def numbers(self, field: str, length: int | None = None, positive: bool = False) -> list[float]:
        value = self.kind(field, list)
        if length is not None and len(value) != length:
            raise self.fail(field, f"must list {length} number(s), one per channel, got {len(value)}")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                raise self.fail(field, f"must hold finite numbers, got {item!r}")
            if positive and item <= 0:
                raise self.fail(field, f"must hold positive numbers, got {item!r}")
        return value

    def positive_int(self, field: str, required: bool = True) -> int | None:
        value = self.kind(field, int, required)
        if value is not None and value < 1:
            raise self.fail(field, f"must be a positive integer, got {value}")
        return value


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    words = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
        bool: "a boolean",
    }
    return " or ".join(words.get(t, t.__name__) for t in types)


def _check_tensors(check: _Checker, field: str) -> list[dict[str, Any]]:
    tensors = check.kind(field, list)
    if not tensors:
        raise check.fail(field, "must list at least one tensor")
    seen = set()
    for index in range(len(tensors)):
        where = f"{field}[{index}]"
        if not isinstance(tensors[index], dict):
            raise check.fail(where, "must be an object with name, shape and dtype")
        name = check.kind(f"{where}.name", str)
        if name in seen:
            raise check.fail(f"{where}.name", f"repeats the tensor name {name!r}")
        seen.add(name)
        shape = tensors[index].get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(
                (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d) for d in shape
            )
        ):
            raise check.fail(
                f"{where}.shape", f"must be a non-empty list of positive sizes or axis names, got {shape!r}"
            )
        check.choice(f"{where}.dtype", DTYPES)
    return tensors


def _check_preprocessing(check: _Checker, input_shape: list[Any]) -> None:
    channels = check.positive_int("preprocessing.channels")
    size = check.positive_int("preprocessing.input_size")
    resize = check.positive_int("preprocessing.resize", required=False)
    pad_to = check.positive_int("preprocessing.pad_to", required=False)
    if resize is not None and size is not None and resize < size:
        raise check.fail("preprocessing.resize", f"({resize}) must be at least input_size ({size}) to center-crop from")
    if pad_to is not None and size is not None and pad_to != size:
        raise check.fail("preprocessing.pad_to", f"({pad_to}) must equal input_size ({size})")
    check.choice("preprocessing.interpolation", ("bilinear", "bicubic", "nearest"))
    check.kind("preprocessing.antialias", bool)
    scale = check.kind("preprocessing.scale", (int, float))
    if scale <= 0:
        raise check.fail("preprocessing.scale", f"must be positive, got {scale}")
    check.numbers("preprocessing.mean", channels)
    check.numbers("preprocessing.std", channels, positive=True)
    check.choice("preprocessing.layout", ("NCHW",))
    if len(input_shape) == 4 and isinstance(input_shape[1], int) and input_shape[1] != channels:
        raise check.fail(
            "preprocessing.channels", f"is {channels}, but input {input_shape} takes {input_shape[1]} channel(s)"
        )


def _check_classification(check: _Checker) -> None:
    inputs, outputs = _check_tensors(check, "inputs"), _check_tensors(check, "outputs")
    if len(inputs) != 1:
        raise check.fail("inputs", f"a classifier takes one image batch, {len(inputs)} inputs are listed")
    shape = inputs[0]["shape"]
    if len(shape) != 4:
        raise check.fail("inputs[0].shape", f"must be (batch, channels, height, width), got {shape}")
    _check_preprocessing(check, shape)
    names = _check_class_names(check)
    check.choice("postprocessing.type", ("softmax_topk",))
    output = check.kind("postprocessing.output", str)
    by_name = {t["name"]: t for t in outputs}
    if output not in by_name:
        raise check.fail("postprocessing.output", f"names {output!r}, which is not among the outputs {list(by_name)}")
    classes = by_name[output]["shape"][-1]
    if isinstance(classes, int) and classes != len(names):
        raise check.fail("class_names", f"lists {len(names)} names, but output {output!r} has {classes} classes")
    check.positive_int("postprocessing.top_k")


def _check_class_names(check: _Checker) -> list[str]:
    names = check.kind("class_names", list)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise check.fail("class_names", "must be a non-empty list of non-empty strings")
    return names


def _check_detector_preprocessing(check: _Checker, input_shape: list[Any]) -> None:
    check.choice("preprocessing.type", ("detector_graph",))
    channels = check.positive_int("preprocessing.channels")
    if isinstance(input_shape[0], int) and input_shape[0] != channels:
        raise check.fail(
            "preprocessing.channels", f"is {channels}, but input {input_shape} takes {input_shape[0]} channel(s)"
        )
    check.choice("preprocessing.layout", ("CHW",))
    if check.get("preprocessing.value_range") != [0, 1]:
        raise check.fail("preprocessing.value_range", "must be [0.0, 1.0] (the graph takes float images in [0, 1]), "
                         f"got {check.get('preprocessing.value_range')!r}")  # fmt: skip
    min_size, max_size = check.positive_int("preprocessing.min_size"), check.positive_int("preprocessing.max_size")
    assert min_size is not None and max_size is not None
    if min_size > max_size:
        raise check.fail("preprocessing.min_size", f"({min_size}) must not exceed max_size ({max_size})")
    check.positive_int("preprocessing.size_divisible")
    check.numbers("preprocessing.mean", channels)
    check.numbers("preprocessing.std", channels, positive=True)


def _check_detection(check: _Checker) -> None:
    """One float image (C, H, W) in, boxes / labels / scores out; boxes in the input image's pixels."""
    inputs, outputs = _check_tensors(check, "inputs"), _check_tensors(check, "outputs")
    if len(inputs) != 1:
        raise check.fail("inputs", f"a detector takes one image, {len(inputs)} inputs are listed")
    shape = inputs[0]["shape"]
    if len(shape) != 3:
        raise check.fail("inputs[0].shape", f"must be (channels, height, width) for one image, got {shape}")
    _check_detector_preprocessing(check, shape)
    _check_class_names(check)
    check.choice("postprocessing.type", ("detection",))
    by_name = {t["name"]: t for t in outputs}
    for role, rank in (("boxes", 2), ("labels", 1), ("scores", 1)):
        name = check.kind(f"postprocessing.{role}", str)
        if name not in by_name:
            raise check.fail(
                f"postprocessing.{role}", f"names {name!r}, which is not among the outputs {list(by_name)}"
            )
        if len(by_name[name]["shape"]) != rank or (role == "boxes" and by_name[name]["shape"][1] != 4):
            raise check.fail(f"postprocessing.{role}", f"names output {name!r} of shape {by_name[name]['shape']}; "
                             f"{role} must be {'(detections, 4)' if role == 'boxes' else '(detections,)'}")  # fmt: skip
    check.choice("postprocessing.box_format", ("xyxy",))
    if check.kind("postprocessing.label_offset", int) != 1:
        raise check.fail("postprocessing.label_offset", "must be 1 (label l names class_names[l - 1]; 0 is background)")
    threshold = check.kind("postprocessing.score_thresh", (int, float))
    if not 0 <= threshold < 1:
        raise check.fail("postprocessing.score_thresh", f"must lie in [0, 1), got {threshold}")
    check.positive_int("postprocessing.detections_per_image")


# A task adds its own checks here.
TASK_CHECKS: dict[str, Callable[[_Checker], None]] = {"classification": _check_classification,
                                                      "detection": _check_detection}  # fmt: skip


def _check_tensorrt(check: _Checker) -> None:
    check.kind("tensorrt", dict)
    check.kind("tensorrt.version", str)
    check.kind("tensorrt.gpu", str)
    capability = check.kind("tensorrt.compute_capability", str)
    if not re.fullmatch(r"\d+\.\d+", capability):
        raise check.fail("tensorrt.compute_capability", f"must look like '8.6', got {capability!r}")
    profiles = check.kind("tensorrt.profiles", list)
    if not profiles:
        raise check.fail("tensorrt.profiles", "must list at least one optimisation profile")
    for index, profile in enumerate(profiles):
        where = f"tensorrt.profiles[{index}]"
        if not isinstance(profile, dict) or not profile:
            raise check.fail(where, "must map input names to {min, opt, max} shapes")
        for name, shapes in profile.items():
            if not isinstance(shapes, dict) or set(shapes) != {"min", "opt", "max"}:
                raise check.fail(f"{where}.{name}", "must have exactly the keys min, opt and max")
            low, opt, high = shapes["min"], shapes["opt"], shapes["max"]
            if not all(isinstance(s, list) and all(isinstance(d, int) for d in s) for s in (low, opt, high)) or not (
                len(low) == len(opt) == len(high) and all(a <= b <= c for a, b, c in zip(low, opt, high))
            ):
                raise check.fail(
                    f"{where}.{name}", f"needs equally long integer shapes with min <= opt <= max, got {shapes}"
                )


def _check_openvino(check: _Checker) -> None:
    check.kind("openvino", dict)
    check.choice("openvino.inference_precision", OPENVINO_HINTS)
    file = check.kind("artifact.weights.file", str)
    if Path(file).name != file or not file.endswith(".bin"):
        raise check.fail("artifact.weights.file", f"must be the bare name of the IR's .bin file, got {file!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", str(check.get("artifact.weights.sha256"))):
        raise check.fail("artifact.weights.sha256", "must be 64 lowercase hex digits")
    check.kind("artifact.weights.size", int)


def validate(data: Any, path: str | Path = "<sidecar>") -> dict[str, Any]:
    """Check a sidecar's fields; return it unchanged or raise :class:`SidecarError`."""
    path = Path(path)
    if not isinstance(data, dict):
        raise SidecarError(f"{path}: expected a JSON object, got {type(data).__name__}")
    check = _Checker(path, data)
    if check.get("format") != FORMAT:
        raise check.fail("format", f"must be {FORMAT!r}, got {data.get('format')!r}; is this a deploy sidecar?")
    version = check.kind("version", int)
    if version > VERSION:
        raise check.fail("version", f"is {version}: written by a newer deploy; this one reads version {VERSION}")
    task = check.choice("task", tuple(TASK_CHECKS))
    backend = check.choice("backend", BACKENDS)
    file = check.kind("artifact.file", str)
    if Path(file).name != file:
        raise check.fail("artifact.file", f"must be a bare file name beside the sidecar, got {file!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", str(check.get("artifact.sha256"))):
        raise check.fail("artifact.sha256", f"must be 64 lowercase hex digits, got {check.get('artifact.sha256')!r}")
    check.kind("artifact.size", int)
    check.kind("model.arch", str)
    check.kind("model.weights", str, required=False)
    check.choice("precision", PRECISIONS)
    check.choice("device", DEVICES)
    axes = check.kind("dynamic_axes", dict)
    for name, mapping in axes.items():
        if not isinstance(mapping, dict) or not all(k.isdigit() and isinstance(v, str) for k, v in mapping.items()):
            raise check.fail(f"dynamic_axes.{name}", f"must map axis numbers (as strings) to names, got {mapping!r}")
    check.kind("tools", dict)
    check.kind("parity", dict, required=False)
    TASK_CHECKS[task](check)
    known = {t["name"] for t in data["inputs"]} | {t["name"] for t in data["outputs"]}
    unknown = sorted(set(axes) - known)
    if unknown:
        raise check.fail("dynamic_axes", f"names tensor(s) {unknown} that are neither inputs nor outputs")
    if backend == "tensorrt":
        _check_tensorrt(check)
    if backend == "openvino":
        _check_openvino(check)
    check.kind("quantization", dict, required=False)
    check.kind("accuracy", dict, required=False)
    return data


# ---------------------------------------------------------------- reading and writing
def write_sidecar(artifact: str | Path, data: dict[str, Any]) -> Path:
    """Validate ``data`` and write it atomically as ``<artifact>.json``."""
    path = sidecar_path(artifact)
    validate(data, path)
    atomic_write_json(path, data)
    return path


def read_sidecar(artifact: str | Path, verify_sha256: bool = True) -> dict[str, Any]:
    """The validated sidecar of ``artifact``; with ``verify_sha256`` the artifact must match its hash."""
    artifact = Path(artifact)
    path = sidecar_path(artifact)
    if not path.is_file():
        raise SidecarError(f"{artifact}: no sidecar found; expected {path} (written by python -m deploy.export "
                           "next to the artifact: it holds the preprocessing, classes and hash)")  # fmt: skip
    try:
        data = read_json_object(path)
    except ValueError as error:
        raise SidecarError(str(error)) from None
    validate(data, path)
    if data["artifact"]["file"] != artifact.name:
        raise SidecarError(f"{path}: field 'artifact.file' is {data['artifact']['file']!r}, but the sidecar sits next "
                           f"to {artifact.name!r}; was the artifact renamed without its sidecar?")  # fmt: skip
    if verify_sha256:
        verify_artifact(artifact, data, path)
    return data


def verify_artifact(artifact: Path, data: dict[str, Any], path: Path) -> None:
    _verify_file(artifact, data["artifact"], path, "artifact")
    if "weights" in data["artifact"]:  # OpenVINO's .bin
        weights = artifact.with_name(data["artifact"]["weights"]["file"])
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the weights of {artifact.name} are missing (an OpenVINO IR is the "
                                    f".xml and its .bin; {path} names both)")  # fmt: skip
        _verify_file(weights, data["artifact"]["weights"], path, "artifact.weights")


def _verify_file(file: Path, record: dict[str, Any], path: Path, field: str) -> None:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: artifact not found (its sidecar {path} exists)")
    size = file.stat().st_size
    if size != record["size"]:
        raise SidecarError(f"{file}: {size} bytes, but {path} (field '{field}.size') says "
                           f"{record['size']}; truncated or replaced?")  # fmt: skip
    digest = sha256_of(file)
    if digest != record["sha256"]:
        raise SidecarError(f"{file}: sha256 {digest} does not match {path} (field '{field}.sha256' "
                           f"{record['sha256']}); "
                           "the artifact was changed or the sidecar belongs to another")  # fmt: skip
