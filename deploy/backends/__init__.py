"""The engines a :class:`deploy.runtime.Predictor` runs on. Each classifier backend takes a normalised
float32 (N, C, H, W) CPU batch and returns the raw outputs (logits) as a float32 CPU tensor; device
transfers are theirs. Detector backends (:class:`DetectorBackend`) take one float (C, H, W) image in
[0, 1] at its own size and return its boxes, labels and scores (the graph resizes, normalises and
post-processes).

* :mod:`.onnxrt` — onnxruntime (CPU, CUDA and TensorRT execution providers)
* :mod:`.openvino` — OpenVINO IR on Intel/AMD CPUs
* :mod:`.pytorch` — eager PyTorch and AOTInductor packages
* TensorRT engines: :mod:`deploy.tensorrt.engine` and :mod:`deploy.tensorrt.detection` (need
  ``tensorrt`` and CUDA)
"""

from .base import ArtifactLoadError, Backend, Detections, DetectorBackend, env_threads
from .onnxrt import OnnxBackend, OnnxDetectionBackend, default_providers, open_onnx_session
from .openvino import OpenVINOBackend, OpenVINODetectionBackend
from .pytorch import AotiBackend, EagerBackend, EagerDetectionBackend

__all__ = [
    "AotiBackend",
    "ArtifactLoadError",
    "Backend",
    "Detections",
    "DetectorBackend",
    "EagerBackend",
    "EagerDetectionBackend",
    "OnnxBackend",
    "OnnxDetectionBackend",
    "OpenVINOBackend",
    "OpenVINODetectionBackend",
    "default_providers",
    "env_threads",
    "open_onnx_session",
]
