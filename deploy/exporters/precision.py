"""Reduced precision decided once, in the ONNX graph: fp16 tensors, or INT8 as explicit
QuantizeLinear/DequantizeLinear (Q/DQ) nodes. The graph is what onnxruntime and OpenVINO run here on
the CPU, and what TensorRT (10.x strongly typed, 11.x) builds on a GPU, so its accuracy is measured
before any GPU sees it (DESIGN.md, "TensorRT where TensorRT cannot be installed").

* **fp16**: ``onnxconverter-common``'s ``convert_float_to_float16`` with fp32 inputs and outputs.
  NVIDIA Model Optimizer's AutoCast gave the same graph quality here (resnet56_fashion_mnist, 10k
  test images: top-1 error 4.82 % with both, 4.83 % fp32; logits error 5.4e-4 with both) but took
  25× longer (5.1 s vs 0.2 s, it runs the graph to classify nodes), and its ``[onnx]`` extra replaced
  onnxruntime 1.32 by onnxruntime-gpu 1.24 and onnx 1.23 by 1.21 in the environment. Ops that need
  fp32 stay fp32: the converter's own list (NMS, RoIAlign, TopK, Resize, ...) plus, for detectors,
  every node outside the convolutional trunk and heads (``keep_fp32`` below).
* **int8**: ``onnxruntime.quantization.quantize_static`` in Q/DQ format, weights per output channel,
  calibrated on real images. ``symmetric`` (default): int8 activations and weights with zero points
  0 and float biases, what TensorRT requires; ``asymmetric``: uint8 activations and int32 biases,
  what onnxruntime's CPU kernels fuse into fast int8 convolutions (README, "Reduced precision": the
  measured figures, and why OpenVINO on CPUs without VNNI wants 7-bit weights for the symmetric one).
  Only Conv and Gemm inputs (and Add, for the residual fusions) are quantized, and not the first
  convolution (it sees the raw image) nor the last classifier layer: measured on
  resnet56_fashion_mnist (3k test images, onnxruntime), quantizing them too cost 2.6 points of top-1
  (7.43 % vs 4.80 % fp32), keeping them float 0 points (4.77 %). The rest of the graph stays float.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .common import ExportError
from .onnx_graph import check_onnx_file

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add")
# Detectors: no Add. onnxruntime calibrates every tensor of the op types it quantizes, in the whole
# graph, and the box decoding's Adds are empty on an image without detections, which its histogram
# calibrator cannot merge (numpy: zero-size array to reduction operation).
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
ORT_CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _require(module: str, package: str, why: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ExportError(f"{why} needs {package} (pip install {package}): {error}") from None


def node_names(path: Path, keep: Callable[[Any], bool]) -> list[str]:
    """Names of the graph's nodes for which ``keep(node)`` holds."""
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.node if keep(node)]


def _subgraphs(node: Any) -> list[Any]:
    return [
        sub for attribute in node.attribute for sub in ([attribute.g] if attribute.HasField("g") else attribute.graphs)
    ]


def _nested_nodes(node: Any) -> Iterator[Any]:
    """The nodes of ``node``'s If/Loop bodies, recursively."""
    for sub in _subgraphs(node):
        for inner in sub.node:
            yield inner
            yield from _nested_nodes(inner)


def end_layers(path: Path) -> set[str]:
    """The first convolution and the last Conv/Gemm/MatMul of the graph (in graph order): kept in float."""
    names = node_names(path, lambda node: node.op_type in ("Conv", "Gemm", "MatMul"))
    first_conv = node_names(path, lambda node: node.op_type == "Conv")[:1]
    return set(first_conv) | set(names[-1:])


def scoped(prefixes: Sequence[str]) -> Callable[[Any], bool]:
    """A node filter: nodes whose (TorchScript exporter's, module-scoped) name starts with one of ``prefixes``."""
    pattern = re.compile("|".join(re.escape(prefix) for prefix in prefixes))
    return lambda node: bool(pattern.match(node.name))


# ---------------------------------------------------------------- fp16
def convert_fp16(source: Path, target: Path) -> dict[str, Any]:
    """The whole graph in fp16 (the converter's fp32 op list aside), fp32 inputs and outputs."""
    import onnx

    float16 = _require("onnxconverter_common.float16", "onnxconverter-common", "an fp16 ONNX graph")
    model = onnx.load(str(source))
    with warnings.catch_warnings(record=True) as clamped:  # one warning per weight below fp16's range: counted
        warnings.simplefilter("always", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(target))
    check_onnx_file(target)
    return {"tool": "onnxconverter-common float16.convert_float_to_float16",
            "version": _version("onnxconverter-common"),
            "keep_io_types": True, "fp32_ops": list(float16.DEFAULT_OP_BLOCK_LIST),
            "weights_clamped_to_fp16_range": sum("truncated" in str(w.message) for w in clamped),
            **graph_precision(target)}  # fmt: skip


FP16_MAX = 65504.0


def convert_fp16_scoped(source: Path, target: Path, in_scope: Callable[[Any], bool]) -> dict[str, Any]:
    """fp16 for the nodes where ``in_scope(node)`` holds, fp32 everywhere else, Casts at the borders.

    Used for detector graphs, where the fp16 region (trunk and heads) is a plain feed-forward part and
    everything else (resize, anchors, box decoding, RoIAlign, NMS, If/Loop bodies) must stay exactly
    as it is. onnxconverter-common cannot do that here: its clean-up of the Casts it inserts around
    kept-fp32 nodes reconnects only main-graph consumers, leaving If bodies pointing at renamed
    tensors, and it keeps weights fp32 that the exporter shares (through Identity nodes) with fp32
    layers. This converter never touches a node outside the scope."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    nodes = list(graph.node)
    scope = {id(node) for node in nodes if in_scope(node)}
    initializers = {init.name: init for init in graph.initializer}
    float_names = {init.name for init in graph.initializer if init.data_type == TensorProto.FLOAT}
    float_names |= {v.name for v in list(graph.value_info) + list(graph.input) + list(graph.output)
                    if v.type.tensor_type.elem_type == TensorProto.FLOAT}  # fmt: skip
    producer = {name: node for node in nodes for name in node.output}
    fp16_weights: dict[str, str] = {}
    casts: dict[tuple[str, int], str] = {}
    added: list[Any] = []
    clamped = 0

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}_as_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            added.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=f"{casts[key]}_cast"))
        return casts[key]

    for node in nodes:
        if id(node) not in scope:
            continue
        if node.op_type == "Constant" and node.attribute[0].t.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(node.attribute[0].t)
            node.attribute[0].t.CopyFrom(
                numpy_helper.from_array(np.clip(value, -FP16_MAX, FP16_MAX).astype(np.float16))
            )
            continue
        for index, name in enumerate(node.input):
            if name in initializers and initializers[name].data_type == TensorProto.FLOAT:
                if name not in fp16_weights:  # an fp16 copy: fp32 consumers keep the original
                    value = numpy_helper.to_array(initializers[name])
                    clamped += int(np.sum(np.abs(value) > FP16_MAX))
                    copy = numpy_helper.from_array(
                        np.clip(value, -FP16_MAX, FP16_MAX).astype(np.float16), f"{name}_fp16"
                    )
                    graph.initializer.append(copy)
                    fp16_weights[name] = copy.name
                node.input[index] = fp16_weights[name]
            elif name in float_names and (name not in producer or id(producer[name]) not in scope):
                node.input[index] = cast(name, TensorProto.FLOAT16)  # an fp32 tensor entering the fp16 region
    inside_outputs = {name for node in nodes if id(node) in scope for name in node.output}
    for node in nodes:  # fp16 tensors leaving the region, to a node or into an If/Loop body
        if id(node) in scope:
            continue
        for reader in [node, *_nested_nodes(node)]:
            for index, name in enumerate(reader.input):
                if name in inside_outputs and name in float_names:
                    reader.input[index] = cast(name, TensorProto.FLOAT)
    for output in graph.output:
        if output.name in inside_outputs and output.name in float_names:
            raise ExportError(f"{source}: graph output {output.name!r} would be fp16; keep the graph's outputs fp32")
    graph.node.extend(added)
    read = {name for node in graph.node for reader in [node, *_nested_nodes(node)] for name in reader.input}
    unused = [init for init in graph.initializer if init.name not in read]  # fp32 originals of fp16 copies
    for init in unused:
        graph.initializer.remove(init)
    del graph.value_info[:]  # types changed; shape inference below writes them again
    _sort_topologically(graph)
    onnx.save(model, str(target))
    check_onnx_file(target)
    return {"tool": "deploy.exporters.precision.convert_fp16_scoped", "fp16_nodes": len(scope), "casts": len(added),
            "weights_clamped_to_fp16_range": clamped, **graph_precision(target)}  # fmt: skip


def _sort_topologically(graph: Any) -> None:
    """Appended Casts go before their readers, also readers inside If/Loop bodies (otherwise stable)."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output}
    placed: set[int] = set()
    order: list[int] = []

    def place(index: int) -> None:
        if index in placed:
            return
        placed.add(index)
        reads = [name for reader in [nodes[index], *_nested_nodes(nodes[index])] for name in reader.input]
        for name in reads:
            if name in producer:
                place(producer[name])
        order.append(index)

    for index in range(len(nodes)):
        place(index)
    del graph.node[:]
    graph.node.extend(nodes[index] for index in order)


# ---------------------------------------------------------------- int8
@dataclass
class CalibrationFeed:
    """What the quantizer's calibrator reads: one input name, how many images, and a stream of float32
    numpy arrays whose first axis enumerates images (any number per array). ``batch_axis``: whether the
    graph's input keeps that axis (classifiers: (1, C, H, W)) or takes one (C, H, W) image (detectors)."""

    input_name: str
    count: int
    batches: Callable[[], Iterator[np.ndarray]]
    batch_axis: bool = True


def quantize_int8(source: Path, target: Path, feed: CalibrationFeed, *, method: str = "percentile",
                  scheme: str = "symmetric", nodes: Callable[[Any], bool] | None = None, keep_ends: bool = True,
                  reduce_range: bool = False, op_types: Sequence[str] = QUANTIZED_OPS) -> dict[str, Any]:  # fmt: skip
    """Static post-training quantization to Q/DQ nodes, calibrated on ``feed``: the Conv/Gemm/MatMul/Add
    nodes for which ``nodes(node)`` holds, without the :func:`end_layers` when ``keep_ends``.
    ``reduce_range``: 7-bit weights, for CPUs without VNNI (see the module's notes).

    The calibrator sees one image at a time, one range update per image (onnxruntime's strided
    calibration): its histograms then never hold more than one image's activations, and images of
    different sizes (detectors) calibrate together."""
    quantization = _require("onnxruntime.quantization", "onnxruntime", "INT8 quantization")
    if method not in ORT_CALIBRATION:
        raise ValueError(f"calibration method must be one of {list(ORT_CALIBRATION)}, got {method!r}")
    if scheme not in ("symmetric", "asymmetric"):
        raise ValueError(f"int8 scheme must be symmetric or asymmetric, got {scheme!r}")
    if feed.count < 1:
        raise ExportError(f"{source}: no calibration images")

    class Reader(quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        """Single images from the feed's batches, ``stride`` of them per range update."""

        def __init__(self) -> None:
            self.images = (image[None] if feed.batch_axis else image for batch in feed.batches() for image in batch)
            self.left = feed.count
            self.count = 0

        def __len__(self) -> int:
            return feed.count

        def set_range(self, start_index: int, end_index: int) -> None:  # called in order: 0..1, 1..2, ...
            self.left = end_index - start_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.left <= 0:
                return None
            image = next(self.images, None)
            if image is None:
                return None
            self.left -= 1
            self.count += 1
            return {feed.input_name: np.ascontiguousarray(image, dtype=np.float32)}

        def rewind(self) -> None:
            self.__init__()  # type: ignore[misc]

    symmetric = scheme == "symmetric"
    reader = Reader()
    source = preprocess_for_quantization(source, target.with_name(target.stem + ".prepared.onnx"))
    ends = end_layers(source) if keep_ends else set()
    chosen = node_names(source, lambda n: n.op_type in op_types and (nodes is None or nodes(n)) and n.name not in ends)
    if not chosen:
        raise ExportError(f"{source}: no {'/'.join(op_types)} node to quantize")
    # TensorRT's Q/DQ layers are int8 (fp8): biases stay float for it; onnxruntime's CPU kernels fuse
    # Q/DQ into QLinearConv only with int32 biases.
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric,
                             "CalibStridedMinMax": 1}  # fmt: skip
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    quiet = io.StringIO()  # onnxruntime prints a line per range update; its own log keeps the warnings
    with contextlib.redirect_stdout(quiet):
        quantization.quantize_static(
            str(source), str(target), reader, quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            reduce_range=reduce_range,
            activation_type=quantization.QuantType.QInt8 if symmetric else quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, nodes_to_quantize=chosen, op_types_to_quantize=list(op_types),
            calibrate_method=getattr(quantization.CalibrationMethod, ORT_CALIBRATION[method]), extra_options=extra,
        )  # fmt: skip
    if reader.count != feed.count:
        raise ExportError(f"{source}: the calibration stream gave {reader.count} images, {feed.count} were expected")
    check_onnx_file(target)
    summary = graph_precision(target)
    if symmetric and summary["nonzero_zero_points"]:
        raise ExportError(f"{target}: {summary['nonzero_zero_points']} Q/DQ zero point(s) are not 0; TensorRT needs "
                          "symmetric quantization")  # fmt: skip
    return {"tool": "onnxruntime.quantization.quantize_static (QDQ)", "version": _version("onnxruntime"),
            "scheme": scheme, "activations": "int8" if symmetric else "uint8", "weights": "int8 per channel",
            "biases": "float" if symmetric else "int32",
            "method": method, **({"percentile": 99.999} if method == "percentile" else {}),
            "weight_bits": 7 if reduce_range else 8, "quantized_nodes": len(chosen), "float_nodes_kept": sorted(ends),
            **summary}  # fmt: skip


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """contextlib.chdir, which Python 3.10 lacks."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def preprocess_for_quantization(source: Path, target: Path) -> Path:
    """onnxruntime's own pre-processing (its basic graph optimisations and shape inference) before
    quantizing: the exporter shares equal constants through Identity nodes, which leaves convolution
    biases outside the quantizer's reach (measured on ResNet-50: 47 of 53 convolutions, whose int8
    graph then ran slower than fp32 in onnxruntime), and FrozenBatchNorm's Mul/Add fold into the
    convolutions they follow. Symbolic shape inference is skipped where it cannot follow the graph
    (detectors' data-dependent shapes); the optimisations still run."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = io.StringIO()
    source, target = Path(source).resolve(), Path(target).resolve()
    # When symbolic shape inference gives up it saves sym_shape_infer_temp.onnx and a <uuid>.data
    # into the working directory: run it in a scratch one, not the user's.
    with tempfile.TemporaryDirectory(prefix="quant-pre-process-") as scratch, _working_directory(Path(scratch)):
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                quant_pre_process(str(source), str(target))
        except Exception:  # symbolic shape inference gives up on some graphs; the optimisations do not need it
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target


# ---------------------------------------------------------------- what a graph holds
def graph_precision(path: Path) -> dict[str, Any]:
    """Counts that say what precision a graph really holds: Q/DQ nodes and their zero points, fp16 tensors."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    ops = collections.Counter(node.op_type for node in graph.node)
    initializers = {init.name: init for init in graph.initializer}
    constants = {node.output[0]: node.attribute[0].t for node in graph.node
                 if node.op_type == "Constant" and node.attribute
                 and node.attribute[0].type == onnx.AttributeProto.TENSOR}  # fmt: skip
    nonzero = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = initializers.get(node.input[2]) or constants.get(node.input[2])
            if zero is not None and np.any(numpy_helper.to_array(zero) != 0):
                nonzero += 1
    fp16 = sum(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    return {"quantize_nodes": ops.get("QuantizeLinear", 0), "dequantize_nodes": ops.get("DequantizeLinear", 0),
            "nonzero_zero_points": nonzero, "fp16_initializers": fp16}  # fmt: skip


def zero_points(path: Path) -> list[np.ndarray]:
    """Every Q/DQ node's zero point (for tests and audits)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    found = []
    for node in graph.node:
        if (
            node.op_type in ("QuantizeLinear", "DequantizeLinear")
            and len(node.input) > 2
            and node.input[2] in initializers
        ):
            found.append(numpy_helper.to_array(initializers[node.input[2]]))
    return found
