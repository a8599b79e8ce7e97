"""The fp32 ONNX graph of a classifier, from which every other artifact is made.

``torch.onnx.export(dynamo=False)`` (the TorchScript exporter: see DESIGN.md, "Export facts"), opset
17, dynamic batch axis (optionally height and width), checked with ``onnx.checker`` (full check,
strict shape inference) and annotated with the inferred shapes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .common import ExportError

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def onnx_dynamic_axes(dynamic_hw: bool) -> dict[str, dict[int, str]]:
    image_axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    return {INPUT_NAME: image_axes, OUTPUT_NAME: {0: "batch"}}


def build_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = 17, dynamic_hw: bool = False
) -> None:
    """Export with the TorchScript exporter, check, and store inferred intermediate shapes."""
    with warnings.catch_warnings():
        # Deliberate: DESIGN.md, "Export facts". The tracer warnings come from the model's input
        # check (static channel count) and option A's strided slice; parity below is the real test.
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        warnings.filterwarnings(
            "ignore", message=r"Converting a tensor to a Python boolean", category=torch.jit.TracerWarning
        )
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=onnx_dynamic_axes(dynamic_hw),
                              do_constant_folding=True)  # fmt: skip
    check_onnx_file(path)


def check_onnx_file(path: Path) -> None:
    """``onnx.checker`` (full check) and strict shape inference; the inferred shapes are stored in the file."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"the exported ONNX graph is invalid: {error}") from None
