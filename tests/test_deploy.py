"""deploy: export (ONNX, AOTInductor, eager; TensorRT where it exists), parity, sidecar, runtime."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deploy
from backbones import create_model
from backbones.augment import Preprocess
from backbones.fileio import sha256_of
from backbones.weights import save_weights
from deploy.export import ExportError, export_model
from deploy.export import main as export_main
from deploy.exporters.classifier import check_parity
from deploy.preprocess import ImageInputError
from deploy.samples import natural_images
from deploy.sidecar import SidecarError, read_sidecar, sidecar_path, validate
from deploy.tensorrt import (
    EngineCompatibilityError,
    TensorRTUnavailable,
    check_engine_compatibility,
    tensorrt_available,  # fmt: skip
)

TRT_OK, TRT_REASON = tensorrt_available()
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_PRE = {"input_size": 32, "channels": 1, "mean": [0.2860], "std": [0.3530], "pad_to": 32}


pytestmark = pytest.mark.filterwarnings("ignore:.*randomly initialised model:UserWarning")  # by design in these tests


def _eager_logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(batch)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def fmnist_zoo(tmp_path_factory):
    """A zoo with one 1-channel CIFAR ResNet-20 record (Fashion-MNIST preprocessing: 28 px padded to 32)."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1)
    file = save_weights(model, root / "resnet20_fmnist.safetensors")
    record = {"id": "resnet20_fmnist_test", "arch": "resnet20", "constructor": {"in_chans": 1},
              "dataset": "fashion-mnist", "class_names": FASHION, "preprocessing": FASHION_PRE, "recipe": {},
              "metrics": {}, "file": file.name, "sha256": sha256_of(file), "size": file.stat().st_size}  # fmt: skip
    (root / "zoo.json").write_text(json.dumps({"format_version": 1, "weights": [record]}))
    return root / "zoo.json"


@pytest.fixture(scope="module")
def torchvision_r18(tmp_path_factory):
    """torchvision's own ResNet-18 (random init) and its state dict as a .pth file."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("tv") / "resnet18_tv.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def r18_onnx(tmp_path_factory, torchvision_r18):
    out = tmp_path_factory.mktemp("r18") / "resnet18.onnx"
    return export_model("resnet18", torchvision_r18[1], out)


# ---------------------------------------------------------------- ONNX round trips
@pytest.mark.parametrize("arch", ["resnet34", "resnet50", "resnet101", "resnet152"])
def test_onnx_parity_imagenet_depths(arch, tmp_path, capsys):
    torch.manual_seed(0)
    result = export_model(arch, None, tmp_path / f"{arch}.onnx")
    out = capsys.readouterr().out
    assert "largest error: rel" in out and result.parity["rel_error"] <= 1e-4
    assert result.parity["top1_agreement"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{arch}.onnx", f"{arch}.onnx.json"]  # no leftovers


def test_onnx_resnet18_from_torchvision_weights_dynamic_batch(r18_onnx, torchvision_r18):
    data = read_sidecar(r18_onnx.artifact)
    assert data["backend"] == "onnx" and data["task"] == "classification" and data["precision"] == "fp32"
    assert data["inputs"] == [{"name": "images", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]
    assert data["outputs"][0]["shape"] == ["batch", 1000] and data["class_names"][0] == "tench"
    assert data["preprocessing"]["resize"] == 256 and data["preprocessing"]["input_size"] == 224
    assert data["export"]["opset"] == 17 and data["tools"]["onnxruntime"]
    assert data["parity"]["rel_error"] <= 1e-4 and data["parity"]["max_abs_error"] < 1e-3
    import onnx

    graph = onnx.load(str(r18_onnx.artifact), load_external_data=False).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert data["model"]["weights"].endswith("resnet18_tv.pth") and len(data["model"]["weights_sha256"]) == 64
    predictor = deploy.load(r18_onnx.artifact, device="cpu")
    reference = torchvision_r18[0]  # torchvision's model itself: the zoo layout loads its weights exactly
    for batch in (1, 7):
        x = predictor.preprocess(natural_images(batch, 224, 3, seed=batch))
        logits = predictor.backend(x)
        assert logits.shape == (batch, 1000)
        assert _rel(logits, _eager_logits(reference, x)) < 1e-4


def test_onnx_cifar_one_channel_from_zoo_with_padding(fmnist_zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BACKBONES_ZOO", str(fmnist_zoo))
    out = tmp_path / "r20.onnx"
    assert export_main(["--model", "resnet20", "--weights", "resnet20_fmnist_test", "--format", "onnx",
                        "--output", str(out)]) == 0  # fmt: skip
    assert "largest error: rel" in capsys.readouterr().out
    data = read_sidecar(out)
    assert data["inputs"][0]["shape"] == ["batch", 1, 32, 32] and data["class_names"] == FASHION
    assert data["preprocessing"]["pad_to"] == 32 and data["preprocessing"]["channels"] == 1
    assert data["model"]["weights"] == "resnet20_fmnist_test" and len(data["model"]["weights_sha256"]) == 64
    assert data["export"]["command"].startswith("python -m deploy.export --model resnet20")
    predictor = deploy.load(out)
    images = natural_images(7, 28, 1, seed=3)  # Fashion-MNIST-sized: padded to 32 as in training
    model = create_model("resnet20", weights="resnet20_fmnist_test")
    expected = _eager_logits(model, Preprocess.from_dict(FASHION_PRE)(images))
    for batch in (images[:1], images):
        assert _rel(predictor.logits(batch), expected[: len(batch)]) < 1e-4
    top = predictor.predict(images[0, 0].numpy(), top_k=3)  # (H, W) grayscale
    assert len(top) == 1 and len(top[0]) == 3 and top[0][0][0] in FASHION


def test_onnx_dynamic_hw(tmp_path):
    result = export_model("resnet20", None, tmp_path / "r20.onnx", dynamic_hw=True)
    data = read_sidecar(result.artifact)
    assert data["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert data["dynamic_axes"]["images"] == {"0": "batch", "2": "height", "3": "width"}
    assert [b["shape"][2] for b in result.parity["batches"]] == [32, 32, 64]


def test_export_fails_cleanly_on_mismatch(tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    import deploy.exporters.classifier as export_module

    real_build = export_module.build_onnx

    def corrupted_build(model, example, path, opset=17, dynamic_hw=False):
        real_build(model, example, path, opset, dynamic_hw)
        proto = onnx.load(str(path))
        for init in proto.graph.initializer:
            if init.name == "fc.bias":
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(export_module, "build_onnx", corrupted_build)
    with pytest.raises(ExportError, match=r"does not match PyTorch: relative error .* > tolerance 1e-04"):
        export_model("resnet20", None, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # no artifact, no sidecar, no temporary folder
    with pytest.raises(SystemExit, match="error: .*does not match PyTorch"):
        export_main(["--model", "resnet20", "--output", str(tmp_path / "bad.onnx")])
    assert list(tmp_path.iterdir()) == []


def test_exporter_failure_names_the_step_and_keeps_the_cause(tmp_path, monkeypatch):
    import deploy.exporters.classifier as export_module

    def broken_build(model, example, path, opset=17, dynamic_hw=False):
        raise RuntimeError("Unsupported: aten::frobnicate\n(long exporter trace)")

    monkeypatch.setattr(export_module, "build_onnx", broken_build)
    with pytest.raises(ExportError, match=r"^onnx fp32 resnet20: the onnx export itself failed "
                                          r"\(RuntimeError: Unsupported: aten::frobnicate\)$") as caught:  # fmt: skip
        export_model("resnet20", None, tmp_path / "r20.onnx")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_model("resnet20", None, tmp_path / "x.pt2", format="onnx")
    with pytest.raises(ValueError, match="a fp16 artifact is checked against fp32 on real held-out images"):
        export_model("resnet20", None, tmp_path / "x.onnx", precision="fp16")
    with pytest.raises(ValueError, match=r"onnx exports support precision \['fp32', 'fp16', 'int8'\], not 'bf16'"):
        export_model("resnet20", None, tmp_path / "x.onnx", precision="bf16")
    with pytest.raises(ValueError, match="one calibration source"):
        export_model("resnet20", None, tmp_path / "x.onnx", precision="int8", calibration_dir=tmp_path,
                     calibration_dataset="fashion-mnist")  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        export_model("resnet19", None, tmp_path / "x.onnx")


# ---------------------------------------------------------------- runtime
def test_predict_identical_across_input_types(r18_onnx, tmp_path):
    predictor = deploy.load(r18_onnx.artifact)
    images = natural_images(2, (240, 320), 3, seed=11)  # uint8 (2, 3, 240, 320)
    arrays = images.permute(0, 2, 3, 1).numpy()
    paths = []
    for index, array in enumerate(arrays):
        paths.append(tmp_path / f"img{index}.png")
        Image.fromarray(array).save(paths[-1])
    reference, probabilities = predictor.predict(images, top_k=5, return_probabilities=True)
    assert len(reference) == 2 and all(len(r) == 5 for r in reference)
    assert probabilities.shape == (2, 1000) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert reference[0][0][1] == pytest.approx(float(probabilities[0].max()), rel=1e-6)
    batched = {"paths": [str(p) for p in paths], "PIL": [Image.open(p) for p in paths], "numpy list": list(arrays),
               "numpy NHWC": arrays, "tensor CHW list": list(images), "float NCHW": images.float() / 255}  # fmt: skip
    for name, batch in batched.items():
        got, probs = predictor.predict(batch, return_probabilities=True)
        assert [[c for c, _ in r] for r in got] == [[c for c, _ in r] for r in reference], name
        assert np.allclose(probs, probabilities, atol=1e-6), name
    singles = {"path": paths[1], "PIL": Image.open(paths[1]), "numpy HWC": arrays[1], "tensor CHW": images[1],
               "tensor 1CHW": images[1:], "float CHW": images[1].float() / 255}  # fmt: skip
    for name, single in singles.items():
        got, probs = predictor.predict(single, return_probabilities=True)
        assert len(got) == 1 and [c for c, _ in got[0]] == [c for c, _ in reference[1]], name
        assert np.allclose(probs[0], probabilities[1], atol=1e-6), name
    eager = deploy.load_eager("resnet18")  # a different random init: only the shape of the answer matches
    assert len(eager.predict(paths, top_k=2)) == 2


def test_eager_export_and_run_directory(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1)
    run = tmp_path / "run"
    run.mkdir()
    save_weights(model, run / "final.safetensors")
    config = {"arch": "resnet20", "constructor": {"in_chans": 1}, "class_names": FASHION, "preprocessing": FASHION_PRE}
    (run / "config.json").write_text(json.dumps(config))
    images = natural_images(3, 28, 1, seed=5)
    expected = torch.softmax(_eager_logits(model, Preprocess.from_dict(FASHION_PRE)(images)), 1)
    from_run = deploy.load(run)  # a run directory: eager PyTorch
    _, probs = from_run.predict(images, return_probabilities=True)
    assert np.allclose(probs, expected.numpy(), atol=1e-6)
    result = export_model("resnet20", str(run), tmp_path / "r20.safetensors", format="eager")
    assert result.parity["rel_error"] == 0.0
    _, probs = deploy.load(result.artifact).predict(list(images), return_probabilities=True)
    assert np.allclose(probs, expected.numpy(), atol=1e-6)


@pytest.fixture
def r18_copy(r18_onnx, tmp_path):
    """The resnet18 artifact and sidecar copied into a fresh folder (tests may damage them)."""
    target = tmp_path / "copy.onnx"
    shutil.copy(r18_onnx.artifact, target)
    data = json.loads(r18_onnx.sidecar.read_text())
    data["artifact"]["file"] = target.name
    sidecar_path(target).write_text(json.dumps(data))
    return target


def test_runtime_input_errors(r18_onnx, tmp_path):
    predictor = deploy.load(r18_onnx.artifact)
    with pytest.raises(ImageInputError, match="the input has type int; expected a file path, a PIL image"):
        predictor.predict(42)
    with pytest.raises(ImageInputError, match=r"images\[1\] has type dict"):
        predictor.predict([np.zeros((8, 8, 3), np.uint8), {}])
    with pytest.raises(ImageInputError, match=r"has 4 channel\(s\) .* the model takes 3"):
        predictor.predict(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(ImageInputError, match=r"has 1 channel\(s\)"):
        predictor.predict(torch.zeros(1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ImageInputError, match=r"float image with values in \[0, 255\]"):
        predictor.predict(torch.arange(3 * 32 * 32).float().view(3, 32, 32) % 256)
    with pytest.raises(ImageInputError, match="dtype torch.int32"):
        predictor.predict(torch.zeros(3, 32, 32, dtype=torch.int32))
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    with pytest.raises(ImageInputError, match=re.escape(f"{corrupt}: cannot decode the image")):
        predictor.predict([str(corrupt)])
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.png"):
        predictor.predict(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), top_k=0)


def test_runtime_artifact_errors(r18_copy, tmp_path):
    lonely = tmp_path / "lonely" / "model.onnx"
    lonely.parent.mkdir()
    shutil.copy(r18_copy, lonely)
    with pytest.raises(SidecarError, match=re.escape(f"no sidecar found; expected {lonely}.json")):
        deploy.load(lonely)
    with pytest.raises(FileNotFoundError, match="artifact not found"):
        deploy.load(tmp_path / "nothing.onnx")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"dataset": "synthetic"}')
    with pytest.raises(ValueError, match=re.escape(f"{run / 'config.json'}: no 'arch' field")):
        deploy.load(run)
    (run / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=re.escape(f"{run / 'config.json'}: not valid JSON")):
        deploy.load(run)
    weights = tmp_path / "w.safetensors"
    save_weights(create_model("resnet20"), weights)
    with pytest.raises(SidecarError, match=r"plain weights .* use deploy.load_eager\(arch, "):
        deploy.load(weights)
    data = bytearray(r18_copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    r18_copy.write_bytes(bytes(data))
    with pytest.raises(SidecarError, match=r"sha256 [0-9a-f]{64} does not match .*copy.onnx.json"):
        deploy.load(r18_copy)
    r18_copy.write_bytes(bytes(data[:-10]))
    with pytest.raises(SidecarError, match="truncated or replaced"):
        deploy.load(r18_copy)


# ---------------------------------------------------------------- sidecar validation
def _mutations():
    def drop(key):
        return lambda d: d.pop(key)

    def setter(path, value):
        def apply(d):
            *parents, last = path.split(".")
            for part in parents:
                d = d[part]
            d[last] = value

        return apply

    return {
        "missing class_names": (drop("class_names"), "field 'class_names' is missing"),
        "wrong format": (setter("format", "something-else"), "field 'format' must be 'resnet-zoo-deploy'"),
        "newer version": (setter("version", 99), "field 'version' is 99: written by a newer deploy"),
        "unknown backend": (setter("backend", "tflite"), "field 'backend' must be one of"),
        "unknown task": (setter("task", "segmentation"), "field 'task' must be one of"),
        "bad sha": (setter("artifact.sha256", "abc"), "field 'artifact.sha256' must be 64 lowercase hex digits"),
        "path as file": (setter("artifact.file", "../x.onnx"), "field 'artifact.file' must be a bare file name"),
        "mean length": (setter("preprocessing.mean", [0.5]), r"field 'preprocessing.mean' must list 3 number"),
        "zero std": (setter("preprocessing.std", [0.2, 0, 0.2]), "field 'preprocessing.std' must hold positive"),
        "crop too big": (setter("preprocessing.resize", 100), "field 'preprocessing.resize' .* must be at least"),
        "class count": (
            setter("class_names", ["a", "b"]),
            "field 'class_names' lists 2 names, but output 'logits' has 1000",
        ),
        "dtype": (lambda d: d["inputs"][0].update(dtype="float64"), r"field 'inputs\[0\].dtype' must be one of"),
        "shape": (lambda d: d["inputs"][0].update(shape=["batch", 3, 0, 224]), r"field 'inputs\[0\].shape' must be"),
        "postprocessing output": (setter("postprocessing.output", "probs"), "names 'probs', which is not among"),
        "dynamic axes": (setter("dynamic_axes", {"scores": {"0": "batch"}}), "names tensor\\(s\\) \\['scores'\\]"),
        "precision": (setter("precision", "fp8"), "field 'precision' must be one of"),
        "tensorrt without record": (setter("backend", "tensorrt"), "field 'tensorrt' must be an object"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_sidecar_validation_names_file_and_field(r18_onnx, case):
    data = json.loads(r18_onnx.sidecar.read_text())
    mutate, message = _mutations()[case]
    mutate(data)
    with pytest.raises(SidecarError, match=rf"^/?.*bad\.onnx\.json: .*{message}"):
        validate(data, "/models/bad.onnx.json")


def test_sidecar_file_problems(r18_copy):
    path = sidecar_path(r18_copy)
    path.write_text("{not json")
    with pytest.raises(SidecarError, match=f"{path}: not valid JSON"):
        read_sidecar(r18_copy)
    path.write_text("[1, 2]")
    with pytest.raises(SidecarError, match="expected a JSON object, got list"):
        read_sidecar(r18_copy)
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(SidecarError, match=f"{path}: not valid JSON \\(not UTF-8 text"):
        read_sidecar(r18_copy)


def test_tensorrt_sidecar_profiles_checked(r18_onnx):
    data = json.loads(r18_onnx.sidecar.read_text())
    data["backend"], data["device"] = "tensorrt", "cuda"
    good = {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    data["tensorrt"] = {"version": "10.13.0", "gpu": "NVIDIA H100", "compute_capability": "9.0",
                        "profiles": [{"images": good}]}  # fmt: skip
    validate(data)
    data["tensorrt"]["profiles"] = [{"images": {**good, "min": [64, 3, 224, 224]}}]
    with pytest.raises(SidecarError, match=r"tensorrt.profiles\[0\].images' needs .* min <= opt <= max"):
        validate(data)
    data["tensorrt"]["compute_capability"] = "sm90"
    with pytest.raises(SidecarError, match="compute_capability' must look like '8.6'"):
        validate(data)


# ---------------------------------------------------------------- TensorRT
def test_engine_compatibility_check():
    built = {"version": "10.13.0.35", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    with pytest.raises(EngineCompatibilityError, match="built by TensorRT 10.13.0.35, this is TensorRT 10.9.0"):
        check_engine_compatibility(built, {**built, "version": "10.9.0"}, "m.engine")
    with pytest.raises(EngineCompatibilityError, match=r"compute capability 9.0\), this GPU is NVIDIA A100 .*8.0"):
        check_engine_compatibility(built, {**built, "gpu": "NVIDIA A100", "compute_capability": "8.0"}, "m.engine")
    other = {**built, "gpu": "NVIDIA H100 PCIe"}
    with pytest.raises(EngineCompatibilityError, match="strict_gpu=False"):
        check_engine_compatibility(built, other, "m.engine")
    with pytest.warns(UserWarning, match="timed on the other GPU"):
        check_engine_compatibility(built, other, "m.engine", strict_gpu=False)
    check_engine_compatibility(built, dict(built), "m.engine")


@pytest.mark.skipif(TRT_OK, reason="checks the message where TensorRT is missing")
def test_tensorrt_missing_is_a_clear_error(r18_copy, tmp_path):
    with pytest.raises(TensorRTUnavailable, match="TensorRT|CUDA"):
        export_model("resnet20", None, tmp_path / "m.engine", format="tensorrt")
    assert list(tmp_path.glob("m.engine*")) == []
    with pytest.raises(ValueError, match="--device is for aoti and eager exports; onnx artifacts are device-free"):
        export_model("resnet20", None, tmp_path / "m.onnx", format="onnx", device="cuda")
    assert list(tmp_path.glob("m.onnx*")) == []
    engine = tmp_path / "fake.engine"
    engine.write_bytes(b"not an engine")
    data = json.loads(sidecar_path(r18_copy).read_text())
    data.update(backend="tensorrt", device="cuda", artifact={"file": engine.name, "sha256": sha256_of(engine),
                                                            "size": engine.stat().st_size})  # fmt: skip
    data["tensorrt"] = {"version": "10.13.0", "gpu": "NVIDIA H100", "compute_capability": "9.0",
                        "profiles": [{"images": {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224],
                                                 "max": [32, 3, 224, 224]}}]}  # fmt: skip
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(TensorRTUnavailable, match="TensorRT"):
        deploy.load(engine)


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_round_trip(precision, tmp_path):
    """Strongly typed engines from the checked fp32 / fp16 / Q/DQ graphs (TensorRT 10.x or 11.x)."""
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for index, image in enumerate(natural_images(48, (256, 320), 3, seed=7).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(calibration / f"{index}.png")
    out = tmp_path / f"r18_{precision}.engine"
    torch.manual_seed(0)
    reduced = precision != "fp32"
    # a randomly initialised net: the held-out check bounds agreement, not accuracy (no labels)
    result = export_model("resnet18", None, out, format="tensorrt", precision=precision,
                          calibration_dir=calibration if reduced else None, calibration_images=16,
                          max_accuracy_drop=100.0)  # fmt: skip
    data = read_sidecar(out)
    assert data["tensorrt"]["profiles"][0]["images"]["max"] == [32, 3, 224, 224]
    assert data["tensorrt"]["gpu"] == torch.cuda.get_device_name()
    assert data["tensorrt"]["strongly_typed"] and data["tensorrt"]["graph_precision"] == precision
    assert Path(str(out) + ".timing.cache").is_file()
    if precision == "int8":
        assert data["quantization"]["calibration"]["images"] == 16 and data["quantization"]["nonzero_zero_points"] == 0
    if precision != "int8":
        assert result.parity["rel_error"] <= {"fp32": 1e-4, "fp16": 2e-2}[precision]
    predictor = deploy.load(out)
    torch.manual_seed(0)
    reference = create_model("resnet18")
    for batch in (1, 7):
        x = predictor.preprocess(natural_images(batch, 224, 3, seed=batch))
        assert (
            _rel(predictor.backend(x), _eager_logits(reference, x))
            <= {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.5}[precision]
        )
    stale = json.loads(sidecar_path(out).read_text())
    stale["tensorrt"]["version"] = "10.13.0"
    sidecar_path(out).write_text(json.dumps(stale))
    with pytest.raises(EngineCompatibilityError, match="built by TensorRT 10.13.0"):
        deploy.load(out)


# ---------------------------------------------------------------- type-checking TensorRT code
def _typecheck_available() -> tuple[bool, str]:
    from deploy.tensorrt.typecheck import CheckUnavailable, installed_stub_files

    if importlib.util.find_spec("mypy") is None:
        return False, "mypy is not installed"
    try:
        installed_stub_files()
    except CheckUnavailable as error:
        return False, str(error)
    return True, ""


TYPECHECK_OK, TYPECHECK_REASON = _typecheck_available()
needs_typecheck = pytest.mark.skipif(not TYPECHECK_OK, reason=TYPECHECK_REASON)


def test_stub_fixes_are_mechanical():
    from deploy.tensorrt.typecheck import FixCounts, fix_stub_text

    counts = FixCounts()
    text = ("import tensorrt_libs as tensorrt_libs\n"
            "    def configure_plugin(self: IPluginV3, in: list[int], out: list[int]) -> None:\n"
            "    def add_scale_nd(self, input: ITensor, shift: Weights = None, channel_axis: int) -> IScaleLayer:\n"
            "    def f(self, *args, **kwargs) -> None:\n")  # fmt: skip
    fixed = fix_stub_text(text, counts)
    assert "tensorrt_libs" not in fixed
    assert "in_: list[int], out_: list[int]" in fixed and "channel_axis: int = ...) -> IScaleLayer" in fixed
    assert "def f(self, *args, **kwargs) -> None:" in fixed
    assert (counts.keyword_parameters, counts.default_order, counts.runtime_imports) == (2, 1, 1)


@needs_typecheck
def test_tensorrt_modules_typecheck(capsys):
    from deploy.tensorrt.typecheck import main as typecheck_main

    assert typecheck_main([]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "no TensorRT type errors" in out and "tensorrt/detection.py" in out and "tensorrt/build.py" in out


@needs_typecheck
def test_typecheck_catches_a_misspelled_api(tmp_path, capsys):
    from deploy.tensorrt.typecheck import main as typecheck_main

    bad = tmp_path / "bad_build.py"
    bad.write_text("import tensorrt as trt\n\n\ndef build() -> None:\n    builder = trt.Builder(trt.Logger())\n"
                   "    builder.create_netwrk(0)\n    profile = builder.create_optimization_profile()\n"
                   "    profile.set_shape('x', (1, 3), (2, 3), (4, 3))\n")  # fmt: skip
    assert typecheck_main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert f'{bad}:6: error: "Builder" has no attribute "create_netwrk"' in out
    assert "set_shape" not in out  # tuple -> Dims is pybind's implicit conversion: filtered


# ---------------------------------------------------------------- AOTInductor
@pytest.mark.slow
def test_aoti_round_trip(fmnist_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_ZOO", str(fmnist_zoo))
    result = export_model("resnet20", "resnet20_fmnist_test", tmp_path / "r20.pt2", format="aoti")
    assert result.parity["rel_error"] <= 1e-4
    data = read_sidecar(result.artifact)
    assert data["backend"] == "aoti" and data["device"] == "cpu"
    predictor = deploy.load(result.artifact)
    model = create_model("resnet20", weights="resnet20_fmnist_test")
    images = natural_images(7, 28, 1, seed=9)
    expected = _eager_logits(model, Preprocess.from_dict(FASHION_PRE)(images))
    for batch in (images[:1], images):
        assert _rel(predictor.logits(batch), expected[: len(batch)]) < 1e-4
    assert predictor.predict(images[0])[0][0][0] in FASHION


def test_parity_check_refuses_an_artifact_that_returns_nan():
    torch.manual_seed(0)
    reference = torch.nn.Linear(8, 3).eval()
    batches = [torch.randn(4, 8), torch.randn(1, 8)]

    def one_nan(x):
        y = reference(x).detach().clone()
        y[0, 0] = float("nan")
        return y

    assert check_parity(reference, lambda x: reference(x).detach(), batches, 1e-5, "same")["rel_error"] == 0.0
    with pytest.raises(
        ExportError, match=r"nan: the artifact does not match PyTorch: relative error inf .*max abs error inf"
    ):
        check_parity(reference, one_nan, batches, 1e-5, "nan")
