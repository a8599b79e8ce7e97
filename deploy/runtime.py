"""One production API over every backend: ``deploy.load(path).predict(images, top_k=5)``.

``path`` is an exported artifact with its sidecar (``.onnx``, OpenVINO ``.xml``, ``.engine``/``.plan``,
``.pt2``, an eager ``.safetensors``), or a ``backbones.train`` run directory. The sidecar supplies the
preprocessing, the class names and the output semantics; its sha256 must match the artifact.

Detectors (a detector ``.onnx`` or TensorRT engine, or a ``detection.train`` run directory) load as a
:class:`DetectionPredictor`: ``predict(images, score_threshold=0.5)`` gives, per image, its
detections ``{"box": [x1, y1, x2, y2], "label": name, "score": s}``, best first, with boxes in the
pixels of the image as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from backbones.fileio import read_json_object

from .backends import (
    AotiBackend,
    Backend,
    Detections,
    DetectorBackend,
    EagerBackend,
    EagerDetectionBackend,
    OnnxBackend,
    OnnxDetectionBackend,
    OpenVINOBackend,
    OpenVINODetectionBackend,
)
from .preprocess import ImageReader, Images, Preprocessor
from .sidecar import SidecarError, read_sidecar, sidecar_path

TopK = list[tuple[str, float]]
Detection = dict[str, Any]  # {"box": [x1, y1, x2, y2], "label": class name, "score": float}
DEFAULT_CHUNK = 64  # images per backend call when the artifact takes any batch size


class Predictor:
    """Preprocess -> backend -> postprocess, as one artifact's sidecar describes them."""

    def __init__(self, backend: Backend, sidecar: dict[str, Any], source: str) -> None:
        self.backend, self.sidecar, self.source = backend, sidecar, source
        self.task: str = sidecar["task"]
        if self.task != "classification":
            raise SidecarError(f"{source}: task {self.task!r} is not classification; deploy.load gives the right "
                               "predictor for each task (DetectionPredictor for detectors)")  # fmt: skip
        self.preprocess = Preprocessor.from_sidecar(sidecar["preprocessing"])
        self.class_names: list[str] = list(sidecar["class_names"])
        self.default_top_k: int = sidecar["postprocessing"].get("top_k", 5)

    def __repr__(self) -> str:
        model = self.sidecar.get("model", {})
        return (f"Predictor({self.source}: {model.get('arch')} {self.task}, backend {self.backend.name} on "
                f"{self.backend.device}, {self.sidecar.get('precision')}, "
                f"{len(self.class_names)} classes)")  # fmt: skip

    def logits(self, images: Images) -> torch.Tensor:
        """Raw outputs (N, classes) for any accepted input."""
        batch = self.preprocess(images)
        chunk = self.backend.max_batch or DEFAULT_CHUNK
        return torch.cat([self.backend(part) for part in batch.split(chunk)])

    def probabilities(self, images: Images) -> torch.Tensor:
        return self.logits(images).double().softmax(dim=1).float()

    @overload
    def predict(self, images: Images, top_k: int | None = None, return_probabilities: Literal[False] = False, *,
                score_threshold: None = None) -> list[TopK]: ...  # fmt: skip

    @overload
    def predict(self, images: Images, top_k: int | None = None, *, return_probabilities: Literal[True],
                score_threshold: None = None) -> tuple[list[TopK], np.ndarray]: ...  # fmt: skip

    def predict(self, images: Images, top_k: int | None = None, return_probabilities: bool = False, *,
                score_threshold: None = None) -> list[TopK] | tuple[list[TopK], np.ndarray]:  # fmt: skip
        """Top-k (class name, probability) per image, best first; one list per image, also for one image.

        ``images``: a file path, PIL image, uint8 numpy array (H, W, C) / (N, H, W, C), tensor (C, H, W) /
        (N, C, H, W) in uint8 or float in [0, 1], or a list of these. With ``return_probabilities``
        also the full (N, classes) softmax as a numpy array.
        """
        if score_threshold is not None:
            raise ValueError(f"{self.source} is a classifier: score_threshold applies to detectors (task 'detection'); "
                             "use top_k to choose how many classes to return")  # fmt: skip
        k = self.default_top_k if top_k is None else top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        probabilities = self.probabilities(images)
        values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
        results = [[(self.class_names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
                   for row_p, row_i in zip(values, indices)]  # fmt: skip
        return (results, probabilities.numpy()) if return_probabilities else results


class DetectionPredictor:
    """One image at a time through a detector artifact; boxes come back in each image's own pixels."""

    def __init__(self, backend: DetectorBackend, sidecar: dict[str, Any], source: str) -> None:
        self.backend, self.sidecar, self.source = backend, sidecar, source
        self.task: str = sidecar["task"]
        if self.task != "detection":
            raise SidecarError(f"{source}: task {self.task!r} is not detection")
        self.channels: int = int(sidecar["preprocessing"]["channels"])
        self.reader = ImageReader(self.channels)
        self.class_names: list[str] = list(sidecar["class_names"])
        post = sidecar["postprocessing"]
        self.min_score: float = float(post["score_thresh"])  # the artifact drops anything below
        self.max_detections: int = int(post["detections_per_image"])

    def __repr__(self) -> str:
        model = self.sidecar.get("model", {})
        return (f"DetectionPredictor({self.source}: {model.get('arch')} {model.get('design', '')} detector, backend "
                f"{self.backend.name} on {self.backend.device}, {len(self.class_names)} classes, scores >= "
                f"{self.min_score:g})")  # fmt: skip

    def raw(self, image: torch.Tensor) -> Detections:
        """The backend's (boxes (N, 4), labels (N,) in 1..C, scores (N,)) for one float (C, H, W) image in [0, 1]."""
        boxes, labels, scores = self.backend(image)
        outside = labels[(labels < 1) | (labels > len(self.class_names))]
        if len(outside):
            raise RuntimeError(f"{self.source}: the artifact gave label {int(outside[0])}, outside "
                               f"1..{len(self.class_names)}; "
                               "the artifact and its sidecar's class_names disagree")  # fmt: skip
        return boxes, labels, scores

    def predict(self, images: Images, score_threshold: float | None = None,
                top_k: int | None = None) -> list[list[Detection]]:  # fmt: skip
        """Per image (one list per image, also for one image), its detections best first:
        ``{"box": [x1, y1, x2, y2], "label": class name, "score": float}``, boxes in the image's own pixels.

        ``images``: as for classifiers (path, PIL, numpy, tensor, or a list of them, sizes may
        differ). ``score_threshold`` keeps detections scoring at least that (the artifact already
        dropped those below its own, ``self.min_score``); ``top_k`` keeps the best k per image.
        """
        threshold = _check_threshold(score_threshold)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        results = []
        for image in self.reader(images):
            boxes, labels, scores = self.raw(image)
            order = torch.argsort(scores, descending=True, stable=True)
            found = [{"box": [float(v) for v in boxes[i].tolist()], "label": self.class_names[int(labels[i]) - 1],
                      "score": float(scores[i])} for i in order.tolist() if float(scores[i]) >= threshold]  # fmt: skip
            results.append(found[:top_k] if top_k is not None else found)
        return results


def _check_threshold(value: float | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"score_threshold must be a number in [0, 1], got {value!r}")
    return float(value)


# ---------------------------------------------------------------- loading
def _eager_sidecar(prepared: Any) -> dict[str, Any]:
    return {"task": "classification", "backend": "eager", "precision": "fp32",
            "model": {"arch": prepared.arch, "weights": prepared.weights},
            "preprocessing": prepared.preprocessing, "class_names": prepared.class_names,
            "postprocessing": {"type": "softmax_topk", "output": "logits", "top_k": 5}}  # fmt: skip


def load_eager(arch: str, weights: str | Path | None = None, device: str = "cpu") -> Predictor:
    """A PyTorch eager predictor: ``weights`` is a zoo id, run directory or weights file
    (as ``backbones.evaluate.load_model`` takes them); classes and preprocessing come with them."""
    from .models import prepare_model

    prepared = prepare_model(arch, weights)
    return Predictor(EagerBackend(prepared.model, device), _eager_sidecar(prepared), f"{arch}:{weights}")


def _detector_sidecar(prepared: Any) -> dict[str, Any]:
    return {"task": "detection", "backend": "eager", "precision": "fp32",
            "model": {"arch": prepared.arch, "design": prepared.design, "weights": prepared.weights},
            "preprocessing": prepared.preprocessing(), "postprocessing": prepared.postprocessing(),
            "class_names": prepared.class_names}  # fmt: skip


def load_eager_detector(run: str | Path, device: str = "cpu") -> DetectionPredictor:
    """A PyTorch eager predictor for a ``detection.train`` run directory (config.json + final.safetensors)
    or a zoo detector id (``python -m detection.zoo list``)."""
    from detection.eval import run_or_zoo

    from .models import prepare_detector

    found = run_or_zoo(Path(run))
    if found is None:
        raise FileNotFoundError(f"{run}: not a detection.train run directory (config.json + final.safetensors) "
                                "nor a zoo detector id")  # fmt: skip
    prepared = prepare_detector(found[0]["backbone"], run)
    return DetectionPredictor(EagerDetectionBackend(prepared.model, device), _detector_sidecar(prepared), str(run))


def _open_detection_backend(path: Path, sidecar: dict[str, Any], device: str | None,
                            providers: Sequence[str] | None, strict_gpu: bool) -> DetectorBackend:  # fmt: skip
    post = sidecar["postprocessing"]
    input_name, outputs = sidecar["inputs"][0]["name"], [post["boxes"], post["labels"], post["scores"]]
    if sidecar["backend"] == "tensorrt":
        from .tensorrt.detection import TensorRTDetectionBackend

        return TensorRTDetectionBackend(path, sidecar, strict_gpu=strict_gpu)
    if sidecar["backend"] == "openvino":
        return OpenVINODetectionBackend(path, input_name, outputs, sidecar["openvino"]["inference_precision"])
    if sidecar["backend"] != "onnx":
        raise SidecarError(f"{sidecar_path(path)}: field 'backend' is {sidecar['backend']!r}; detectors run from ONNX, "
                           "OpenVINO or TensorRT artifacts "
                           "(or eagerly from their detection.train run directory)")  # fmt: skip
    if providers is None and device == "cpu":
        providers = ["CPUExecutionProvider"]
    return OnnxDetectionBackend(path, input_name, outputs, providers)


def open_backend(path: Path, sidecar: dict[str, Any], device: str | None, providers: Sequence[str] | None,
                 strict_gpu: bool) -> Backend:  # fmt: skip
    """The classifier backend a (validated) sidecar names, opened on ``path``."""
    backend = sidecar["backend"]
    input_name, output_name = sidecar["inputs"][0]["name"], sidecar["postprocessing"]["output"]
    if backend == "onnx":
        if providers is None and device == "cpu":
            providers = ["CPUExecutionProvider"]
        return OnnxBackend(path, input_name, output_name, providers)
    if backend == "openvino":
        return OpenVINOBackend(path, input_name, output_name, sidecar["openvino"]["inference_precision"])
    if backend == "aoti":
        built_for = sidecar["device"]
        if device is not None and device != built_for:
            raise ValueError(f"{path}: this AOTInductor package was compiled for {built_for}, not {device}; "
                             f"export again with --device {device}")  # fmt: skip
        dtype = torch.float16 if sidecar["inputs"][0]["dtype"] == "float16" else torch.float32
        return AotiBackend(path, built_for, dtype)
    if backend == "tensorrt":
        from .tensorrt.engine import TensorRTBackend

        return TensorRTBackend(path, sidecar, strict_gpu=strict_gpu)
    if backend == "eager":
        from backbones.registry import create_model

        model = create_model(sidecar["model"]["arch"], weights=path, num_classes=len(sidecar["class_names"]),
                             **sidecar["model"].get("constructor", {}))  # fmt: skip
        return EagerBackend(model, device or "cpu")
    raise SidecarError(f"{sidecar_path(path)}: field 'backend' {backend!r} has no runtime")


def load(path: str | Path, *, device: str | None = None, providers: Sequence[str] | None = None,
         strict_gpu: bool = True, verify_sha256: bool = True) -> Predictor | DetectionPredictor:  # fmt: skip
    """A :class:`Predictor` for an exported artifact (with its ``<artifact>.json`` sidecar) or a run directory;
    a :class:`DetectionPredictor` for a detector artifact or a ``detection.train`` run directory.

    ``device`` ("cpu"/"cuda") pins the engine where the backend allows a choice; ``providers``
    overrides onnxruntime's execution providers (default: TensorRT EP, CUDA EP where available, then
    CPU); ``strict_gpu=False`` lets a TensorRT engine built on another GPU model of the same
    architecture run, with a warning.
    """
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{path} is a directory without config.json; pass an exported artifact "
                                    "(with its .json sidecar) or a backbones.train run directory")  # fmt: skip
        run_config = read_json_object(config)
        if "design" in run_config:  # a detection.train run
            return load_eager_detector(path, device or "cpu")
        if not isinstance(run_config.get("arch"), str):
            raise ValueError(f"{config}: no 'arch' field (a backbones.train or detection.train run's config.json "
                             "names its architecture)")  # fmt: skip
        return load_eager(run_config["arch"], str(path), device or "cpu")
    if not path.exists():
        raise FileNotFoundError(f"artifact not found: {path}")
    if path.suffix in (".pth", ".pt", ".bin") or (path.suffix == ".safetensors" and not sidecar_path(path).exists()):
        raise SidecarError(f"{path}: plain weights carry no preprocessing or classes (expected sidecar "
                           f"{sidecar_path(path)}); use deploy.load_eager(arch, {str(path)!r}) or export them "
                           "with python -m deploy.export --format eager")  # fmt: skip
    sidecar = read_sidecar(path, verify_sha256=verify_sha256)
    if sidecar["task"] == "detection":
        return DetectionPredictor(_open_detection_backend(path, sidecar, device, providers, strict_gpu), sidecar,
                                  str(path))  # fmt: skip
    return Predictor(open_backend(path, sidecar, device, providers, strict_gpu), sidecar, str(path))
