"""Export the zoo's classifiers (ONNX, OpenVINO IR, TensorRT, AOTInductor, eager safetensors) and
detectors (one graph with box decoding and NMS inside) in fp32, fp16 or INT8 (the precision decided
in the ONNX graph and checked on real images), and run them with one API.

    python -m deploy.export --model resnet50 --weights resnet50.pth --format onnx --output r50.onnx
    python -m deploy.export --model resnet56 --weights resnet56_fashion_mnist --precision int8 \\
        --calibration-dataset fashion-mnist --eval-dataset fashion-mnist --output r56-int8.onnx
    python -m deploy.export --model resnet20 --detector c4 --weights runs/det --format openvino --output det.xml

    import deploy
    predictor = deploy.load("r50.onnx")                  # reads and checks r50.onnx.json (the sidecar)
    predictor.predict(["cat.jpg", "dog.png"], top_k=5)   # [[(class name, probability), ...], ...]
    deploy.load("det.onnx").predict("street.jpg")        # [[{"box": [x1, y1, x2, y2], "label": .., "score": ..}]]

Layout: :mod:`deploy.exporters` (how artifacts are made and checked), :mod:`deploy.backends` (the
runtimes), :mod:`deploy.tensorrt` (TensorRT's builder, runners and checks). Imports go downward only:
deploy uses detection and backbones, never the reverse.
"""

from typing import Any

from .runtime import DetectionPredictor, Predictor, load, load_eager, load_eager_detector
from .sidecar import SidecarError, read_sidecar, sidecar_path, validate

_FROM_EXPORT = ("ExportError", "ExportOptions", "ExportResult", "export_model")


def __getattr__(name: str) -> Any:
    # deploy.export is imported on first use, so `python -m deploy.export` does not find it half-imported.
    if name in _FROM_EXPORT:
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")


__all__ = [
    "DetectionPredictor",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "Predictor",
    "SidecarError",
    "export_model",
    "load",
    "load_eager",
    "load_eager_detector",
    "read_sidecar",
    "sidecar_path",
    "validate",
]
