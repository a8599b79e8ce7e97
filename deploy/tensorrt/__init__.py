"""TensorRT: engines built from the ONNX graphs :mod:`deploy.exporters` checked on the CPU, their
runtimes, and the checks that keep this code honest where TensorRT cannot be installed.

* :mod:`.environment` — is TensorRT here, which version and GPU; engine/machine compatibility
* :mod:`.build` — strongly typed engines from ONNX graphs (TensorRT 10.x and 11.x)
* :mod:`.engine`, :mod:`.detection` — running classifier and detector engines
* :mod:`.static_topk` — the detector graph TensorRT's ONNX parser takes (constant RPN top-k)
* :mod:`.typecheck` — mypy against TensorRT's stubs; :mod:`.api_check` — no API TensorRT 11 removed
"""

from .environment import (
    EngineCompatibilityError,
    TensorRTUnavailable,
    check_engine_compatibility,
    dims_to_list,
    environment_summary,
    require_tensorrt,
    running_environment,
    tensorrt_available,
)

__all__ = [
    "EngineCompatibilityError",
    "TensorRTUnavailable",
    "check_engine_compatibility",
    "dims_to_list",
    "environment_summary",
    "require_tensorrt",
    "running_environment",
    "tensorrt_available",
]
