"""Reduced precision in the ONNX graph (fp16 tensors, INT8 Q/DQ), checked on real images, run by
onnxruntime and OpenVINO on the CPU; OpenVINO IR; the TensorRT 11 API check; Triton's OpenVINO config.

The classifier cases use the zoo's real ``resnet20_fashion_mnist`` on the Fashion-MNIST test split that
ships with the package (calibration images and check images are disjoint parts of it here, written as
PNG files so no training split is needed), and a randomly initialised ResNet-18 for an ImageNet-layout
net; the detector cases a planted C4 detector on a tiny generated fashion-det benchmark.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import deploy
from backbones.datasets import load_fashion_mnist
from deploy.backends import ArtifactLoadError
from deploy.export import ExportError, export_model
from deploy.exporters import classifier as classifier_exporter
from deploy.exporters.detector import REDUCED_SCOPES
from deploy.exporters.precision import graph_precision, zero_points
from deploy.sidecar import sidecar_path
from deploy.tensorrt import EngineCompatibilityError, check_engine_compatibility

sys.path.insert(0, str(Path(__file__).parent))
from test_deploy_detection import make_run
from test_deploy_triton_bench import _parse

pytestmark = pytest.mark.filterwarnings("ignore:.*randomly initialised model:UserWarning")
CHECK_IMAGES = 500  # held-out Fashion-MNIST test images the artifact is compared with fp32 on


@pytest.fixture(scope="module")
def fmnist_test():
    return load_fashion_mnist(None, "test")  # the shipped copy where the system one is absent


@pytest.fixture(scope="module")
def calibration_pngs(fmnist_test, tmp_path_factory) -> Path:
    """160 test images from index 5000 on, as PNG files in nested folders ("any layout")."""
    root = tmp_path_factory.mktemp("calibration")
    for index in range(160):
        folder = root / f"part{index % 3}" / "deeper"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fmnist_test.images[5000 + index, 0].numpy()).save(folder / f"{index:03d}.png")
    return root


def _accuracy_points(result) -> tuple[float, float]:
    accuracy = result.accuracy["top1_accuracy"]
    return accuracy["fp32"], accuracy["artifact"]


# ---------------------------------------------------------------- classifiers: fp16
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp16_classifier_keeps_fp32_accuracy_on_real_images(fmt, tmp_path):
    out = tmp_path / f"r20-fp16{'.onnx' if fmt == 'onnx' else '.xml'}"
    result = export_model("resnet20", "resnet20_fashion_mnist", out, format=fmt, precision="fp16",
                          eval_dataset="fashion-mnist", eval_images=CHECK_IMAGES)  # fmt: skip
    data = json.loads(sidecar_path(out).read_text())
    fp32, artifact = _accuracy_points(result)
    assert data["precision"] == "fp16" and data["accuracy"]["images"] == CHECK_IMAGES
    assert abs(fp32 - artifact) <= 0.3 and 90 < fp32 < 100  # the real net: ~94.6 % on this split
    assert data["accuracy"]["top1_agreement"] >= 0.99 and data["accuracy"]["logits_rel_error"] < 5e-3
    assert data["quantization"]["fp16_initializers"] > 20 and data["quantization"]["keep_io_types"]
    if fmt == "openvino":
        assert out.with_suffix(".bin").is_file() and data["artifact"]["weights"]["file"] == "r20-fp16.bin"
        assert data["openvino"]["inference_precision"] == "f32" and data["openvino"]["compress_to_fp16"]
    else:
        graph = onnx.load(str(out)).graph
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in and out
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    predictor = deploy.load(out)
    top = predictor.predict(load_fashion_mnist(None, "test").images[:2].permute(0, 2, 3, 1).numpy())
    assert [row[0][0] for row in top] == ["Ankle boot", "Pullover"]  # the split's first two labels


# ---------------------------------------------------------------- classifiers: int8
def test_int8_symmetric_onnx_graph_is_tensorrt_ready_and_accurate(calibration_pngs, tmp_path):
    out = tmp_path / "r20-int8.onnx"
    result = export_model("resnet20", "resnet20_fashion_mnist", out, precision="int8", calibration_dir=calibration_pngs,
                          calibration_images=128, eval_dataset="fashion-mnist", eval_images=CHECK_IMAGES)  # fmt: skip
    data = json.loads(sidecar_path(out).read_text())
    quantization = data["quantization"]
    assert quantization["scheme"] == "symmetric" and quantization["activations"] == "int8"
    assert quantization["calibration"]["images"] == 128 and "128 of 160 images" in quantization["calibration"]["source"]
    points = zero_points(out)
    assert len(points) == quantization["quantize_nodes"] + quantization["dequantize_nodes"] > 40
    assert all(np.all(p == 0) and p.dtype == np.int8 for p in points)  # what TensorRT requires
    graph = onnx.load(str(out)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert sorted(quantization["float_nodes_kept"]) == sorted([first_conv.name, gemm.name])
    assert not set(first_conv.input) & dequantized and not set(gemm.input) & dequantized  # they stay float
    fp32, artifact = _accuracy_points(result)
    assert fp32 - artifact <= 0.5 and result.parity["tolerance"] is None  # real images decide for int8
    assert deploy.load(out).backend.name == "onnx"


def test_int8_openvino_from_the_asymmetric_qdq_graph(calibration_pngs, tmp_path):
    out = tmp_path / "r20-int8.xml"
    result = export_model("resnet20", "resnet20_fashion_mnist", out, format="openvino", precision="int8",
                          int8_scheme="asymmetric", calibration_dir=calibration_pngs, calibration_images=128,
                          eval_dataset="fashion-mnist", eval_images=CHECK_IMAGES)  # fmt: skip
    data = json.loads(sidecar_path(out).read_text())
    assert data["quantization"]["activations"] == "uint8" and data["quantization"]["nonzero_zero_points"] > 0
    assert data["openvino"]["int8_from"] == "qdq" and data["openvino"]["inference_precision"] == "f32"
    fp32, artifact = _accuracy_points(result)
    assert fp32 - artifact <= 0.5
    predictor = deploy.load(out)
    assert predictor.backend.name == "openvino" and len(predictor.predict(np.zeros((28, 28, 1), np.uint8))[0]) == 5


def test_imagenet_layout_net_in_fp16_and_int8(tmp_path):
    """ResNet-18 (random weights): 224-px preprocessing, 3 channels; held-out = the calibration folder's rest."""
    from deploy.samples import natural_images

    folder = tmp_path / "photos"
    folder.mkdir()
    for index, image in enumerate(natural_images(20, (240, 300), 3, seed=3).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{index:02d}.jpg")
    torch.manual_seed(0)
    int8 = export_model("resnet18", None, tmp_path / "r18-int8.onnx", precision="int8", calibration_dir=folder,
                        calibration_images=12, max_accuracy_drop=100.0)  # fmt: skip
    assert int8.accuracy is not None and int8.accuracy["images"] == 8 and not int8.accuracy["labelled"]
    assert all(np.all(p == 0) for p in zero_points(int8.artifact))
    torch.manual_seed(0)
    fp16 = export_model("resnet18", None, tmp_path / "r18-fp16.xml", format="openvino", precision="fp16",
                        calibration_dir=folder, max_accuracy_drop=100.0)  # fmt: skip
    assert fp16.accuracy["images"] == 20  # fp16 calibrates nothing: every image of the folder is a check image
    assert fp16.parity["rel_error"] < 2e-2 and fp16.accuracy["top1_agreement"] >= 0.75
    assert deploy.load(fp16.artifact).predict(folder / "00.jpg", top_k=3)[0][0][1] > 0


def test_an_artifact_that_loses_accuracy_fails_and_leaves_nothing(tmp_path, monkeypatch):
    real = classifier_exporter.convert_fp16

    def damaged(source, target):
        record = real(source, target)
        model = onnx.load(str(target))
        for init in model.graph.initializer:
            if init.name == "fc.weight":  # flip the classifier: the wrong class wins
                array = -onnx.numpy_helper.to_array(init)
                init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
        onnx.save(model, str(target))
        return record

    monkeypatch.setattr(classifier_exporter, "convert_fp16", damaged)
    with pytest.raises(ExportError, match=r"on 200 images of fashion-mnist test split, top-1 accuracy .* vs fp32 .*: "
                                          r"loses \d+\.\d\d points, more than --max-accuracy-drop 0.5"):  # fmt: skip
        export_model("resnet20", "resnet20_fashion_mnist", tmp_path / "bad.onnx", precision="fp16", tolerance=10.0,
                     eval_dataset="fashion-mnist", eval_images=200)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bad input
def test_reduced_precision_bad_input_is_named(calibration_pngs, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=rf"{empty}: no images \(\.jpg, .*\) found, searched recursively"):
        export_model("resnet20", "resnet20_fashion_mnist", tmp_path / "a.onnx", precision="int8", calibration_dir=empty)
    with pytest.raises(ValueError, match=r"cifar10 needs --data-root"):
        export_model("resnet20", "resnet20_fashion_mnist", tmp_path / "a.onnx", precision="int8",
                     calibration_dataset="cifar10")  # fmt: skip
    wrong = tmp_path / "classes" / "Sneakerz"
    wrong.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(wrong / "0.png")
    with pytest.raises(ValueError, match=r"Sneakerz: no class of the model is named 'Sneakerz'"):
        export_model("resnet20", "resnet20_fashion_mnist", tmp_path / "a.onnx", precision="fp16",
                     eval_dataset=str(tmp_path / "classes"))  # fmt: skip
    with pytest.raises(ValueError, match=r"evaluation set fashion-mnist/test has 1-channel images; the model takes 3"):
        export_model("resnet18", None, tmp_path / "a.onnx", precision="fp16", eval_dataset="fashion-mnist")
    with pytest.raises(ExportError, match=r"with more than --calibration-images 160 of them"):
        export_model("resnet20", "resnet20_fashion_mnist", tmp_path / "a.onnx", precision="int8",
                     calibration_dir=calibration_pngs,
                     calibration_images=160)  # all of them: nothing held out  # fmt: skip
    assert not list(tmp_path.glob("a.*")) and not list(tmp_path.glob(".a.*"))


def test_openvino_missing_and_an_ir_without_its_bin(tmp_path, monkeypatch):
    out = tmp_path / "r20.xml"
    export_model("resnet20", "resnet20_fashion_mnist", out, format="openvino")
    data = json.loads(sidecar_path(out).read_text())
    assert data["precision"] == "fp32" and data["openvino"]["inference_precision"] == "f32"  # never silently bf16
    moved = out.with_suffix(".bin").rename(tmp_path / "elsewhere.bin")
    with pytest.raises(FileNotFoundError, match=r"r20\.bin: the weights of r20\.xml are missing"):
        deploy.load(out)
    with pytest.raises(ArtifactLoadError, match=r"its weights file r20\.bin is missing"):
        deploy.load(out, verify_sha256=False)
    moved.rename(out.with_suffix(".bin"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ArtifactLoadError, match=r"OpenVINO is not installed .*pip install openvino"):
        deploy.load(out)
    with pytest.raises(ExportError, match=r"--format openvino needs OpenVINO \(pip install openvino\)"):
        export_model("resnet20", "resnet20_fashion_mnist", tmp_path / "b.xml", format="openvino")
    assert not list(tmp_path.glob("b.*"))


def test_a_tensorrt_10_engine_under_tensorrt_11_is_refused_by_name():
    built = {"version": "10.13.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    running = {"version": "11.4.0", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    with pytest.raises(EngineCompatibilityError, match=r"model\.engine: built by TensorRT 10\.13\.0, this is TensorRT "
                                                       r"11\.4\.0; .*rebuild it here"):  # fmt: skip
        check_engine_compatibility(built, running, "model.engine")


# ---------------------------------------------------------------- detectors
@pytest.fixture(scope="module")
def tiny_fashion_det(fmnist_test, tmp_path_factory) -> Path:
    """A fashion-det benchmark of 8 training and 8 test canvases, made from the shipped test split only."""
    from detection.fashion_det import generate

    root = tmp_path_factory.mktemp("fashion_det")
    train, test = (fmnist_test.subset(torch.arange(start, start + 500), name) for start, name in ((0, "a"), (500, "b")))
    generate(root, train_images=8, test_images=8, fashion_mnist=(train, test))
    return root


@pytest.fixture(scope="module")
def planted_c4(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "resnet20", "c4")


@pytest.mark.parametrize(
    ("fmt", "precision"), [("onnx", "fp16"), ("onnx", "int8"), ("openvino", "fp16"), ("openvino", "int8")]
)
def test_c4_detector_in_reduced_precision_keeps_its_map(fmt, precision, planted_c4, tiny_fashion_det, tmp_path,
                                                        monkeypatch):  # fmt: skip
    out = tmp_path / f"det-{precision}{'.onnx' if fmt == 'onnx' else '.xml'}"
    working_directory = tmp_path / "cwd"
    working_directory.mkdir()
    monkeypatch.chdir(working_directory)
    export_model("resnet20", planted_c4, out, detector="c4", format=fmt, precision=precision,
                          eval_dataset="fashion-det", data_root=tiny_fashion_det, max_accuracy_drop=100.0,
                          calibration_dataset="fashion-det" if precision == "int8" else None)  # fmt: skip
    assert list(working_directory.iterdir()) == []  # onnxruntime's shape inference leaves files in the cwd
    data = json.loads(sidecar_path(out).read_text())
    accuracy = data["accuracy"]
    assert accuracy["metric"] == "VOC mAP (voc07)" and accuracy["images"] == 8
    assert set(accuracy["results"]["artifact"]) == {"voc", "coco"}
    assert accuracy["confident_detections"]["reference_confident"] > 0
    assert accuracy["accuracy_drop"] == pytest.approx(accuracy["fp32"] - accuracy["artifact"])
    if precision == "int8":
        assert data["quantization"]["calibration"]["images"] == 8 and data["quantization"]["nonzero_zero_points"] == 0
    if fmt == "onnx":
        graph = onnx.load(str(out)).graph
        reduced = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast")]
        kinds = {n.op_type for n in reduced}
        assert ("QuantizeLinear" in kinds) == (precision == "int8")
        produced = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
        tail = [n for n in graph.node if n.op_type in ("RoiAlign", "NonMaxSuppression", "TopK")]
        assert {n.op_type for n in tail} == {"RoiAlign", "NonMaxSuppression", "TopK"}
        # RoIAlign, NMS and top-k compute in fp32 (the heads may take RoIAlign's result in fp16 / int8)
        assert {types[n.input[0]] for n in tail} == {onnx.TensorProto.FLOAT}
        if precision == "int8":  # Q/DQ only around the trunk's and heads' layers
            computing = [n for n in graph.node if set(n.input) & produced and n.op_type in ("Conv", "Gemm", "MatMul")]
            assert computing and all(n.name.startswith(REDUCED_SCOPES) for n in computing)
            kept = [n for n in graph.node if n.name.startswith(("/detector/rpn/head/cls_logits",
                                                                "/detector/rpn/head/bbox_pred",
                                                                 "/detector/roi_heads/box_predictor/"))]  # fmt: skip
            assert kept and not [n.name for n in kept if set(n.input) & produced and n.op_type != "Add"]
        assert graph_precision(out)["fp16_initializers"] > 0 or precision == "int8"
    found = deploy.load(out).predict(np.zeros((96, 128, 3), np.uint8) + 40)
    assert isinstance(found[0], list)


# ---------------------------------------------------------------- TensorRT 11 API check
def test_our_tensorrt_code_uses_no_api_tensorrt_11_removed(capsys):
    from deploy.tensorrt.api_check import CheckUnavailable, default_bindings, main

    try:
        default_bindings()
        args: list[str] = []
    except CheckUnavailable:  # no 11.x wheel (make fetches it): the documented list still checks
        args = ["--list-only"]
    assert main(args) == 0, capsys.readouterr().out
    assert "0 use(s) of APIs TensorRT 11 removed" in capsys.readouterr().out


def test_the_api_check_catches_weakly_typed_precision_code(tmp_path, capsys):
    from deploy.tensorrt.api_check import CheckUnavailable, default_bindings, main

    bad = tmp_path / "old_build.py"
    bad.write_text("import tensorrt as trt\n\n\ndef build(builder, config, calibrator):\n"
                   "    config.set_flag(trt.BuilderFlag.FP16)\n    config.int8_calibrator = calibrator\n"
                   "    return builder.platform_has_fast_int8\n")  # fmt: skip
    assert main(["--list-only", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "old_build.py:5: trt.BuilderFlag.FP16: removed in TensorRT 11" in out
    assert (
        "old_build.py:6: config.int8_calibrator: removed" in out
        and "old_build.py:7: builder.platform_has_fast_int8" in out
    )
    try:
        default_bindings()
    except CheckUnavailable:
        return
    sneaky = tmp_path / "renamed.py"  # not on the list: only the real 11.x bindings can tell
    sneaky.write_text("import tensorrt as trt\n\n\ndef f():\n    return trt.IAlgorithmSelector\n")
    assert main([str(sneaky)]) == 1
    assert "renamed.py:5: trt.IAlgorithmSelector: not in the TensorRT 11 bindings" in capsys.readouterr().out


# ---------------------------------------------------------------- Triton
def test_triton_openvino_repository(tmp_path):
    from deploy.triton import TritonOptions, write_model

    out = tmp_path / "r20.xml"
    export_model("resnet20", "resnet20_fashion_mnist", out, format="openvino")
    model = write_model(out, tmp_path / "repo")
    config = _parse(model.config)
    assert config.backend == "openvino" and not config.platform and config.max_batch_size == 32
    assert sorted(p.name for p in (model.directory / "1").iterdir()) == ["model.bin", "model.xml"]
    assert (model.directory / "1" / "model.bin").read_bytes() == out.with_suffix(".bin").read_bytes()
    assert not config.parameters and "cannot pin f32" in model.notes[0]
    assert json.loads((model.directory / "sidecar.json").read_text())["artifact"]["weights"]["file"] == "model.bin"
    bf16 = tmp_path / "r20-bf16.xml"  # an explicit bf16 choice: the one precision parameter the backend takes
    export_model("resnet20", "resnet20_fashion_mnist", bf16, format="openvino", precision="bf16",
                 eval_dataset="fashion-mnist", eval_images=100)  # fmt: skip
    config = _parse(write_model(bf16, tmp_path / "repo", TritonOptions(name="bf16")).config)
    assert config.parameters["HINT_BF16"].string_value == "YES"
