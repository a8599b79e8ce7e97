"""OpenVINO IR (``.xml`` + ``.bin``) from the checked ONNX graph of an export.

* fp32: the graph as it is, weights fp32; run with the ``f32`` inference hint (never silently bf16).
* fp16: the same graph with fp16-compressed weights (``compress_to_fp16``); the CPU decompresses
  them and computes in fp32, a GPU plugin in fp16.
* int8: the Q/DQ graph (``--openvino-int8 qdq``, the default: one calibration for every runtime,
  OpenVINO turns Q/DQ into int8 kernels), or NNCF's post-training quantization of the fp32 IR on
  the same calibration images (``--openvino-int8 nncf``).
* bf16: the fp32 IR run with the ``bf16`` hint, an explicit choice for CPUs with AVX512-BF16/AMX.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .common import ExportError


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as error:
        raise ExportError(f"--format openvino needs OpenVINO (pip install openvino): {error}") from None
    return ov


def inference_hint(precision: str) -> str:
    return "bf16" if precision == "bf16" else "f32"


def onnx_to_ir(onnx_path: Path, xml_path: Path, *, compress_to_fp16: bool) -> dict[str, Any]:
    ov = _openvino()
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    return {"converter": "openvino.convert_model + save_model", "openvino": ov.__version__,
            "compress_to_fp16": compress_to_fp16}  # fmt: skip


def nncf_int8(onnx_path: Path, xml_path: Path, batches: Iterator[np.ndarray], images: int) -> dict[str, Any]:
    """NNCF post-training quantization (its default symmetric preset) of the fp32 IR."""
    ov = _openvino()
    try:
        import nncf
    except ImportError as error:
        raise ExportError(f"--openvino-int8 nncf needs NNCF (pip install nncf): {error}") from None
    samples = list(batches)
    model = ov.convert_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return {"converter": "openvino.convert_model + nncf.quantize (preset performance: symmetric)",
            "openvino": ov.__version__, "nncf": metadata.version("nncf"), "compress_to_fp16": False,
            "calibration_images": images}  # fmt: skip
