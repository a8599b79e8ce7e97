"""deploy: Faster R-CNN detectors (C4, FPN) to ONNX with post-processing in the graph, parity, sidecar, runtime.

The detectors are detection.train-shaped run directories written here (config.json +
final.safetensors) with planted heads, so that they detect something: a random-init detector
scores every region about 1/(C+1) and its RPN saturates. :func:`make_run` rescales the RPN
objectness layer and the box classifier / regressor so their outputs have a set spread on a
natural-looking image (objectness logits std 1, class logits std 1.5, box deltas std 1), and
biases the background logit down: deterministic, well-separated scores and real boxes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from PIL import Image

import deploy
from backbones.fileio import sha256_of
from backbones.weights import save_weights
from deploy.backends import OnnxDetectionBackend
from deploy.export import ExportError, ExportOptions, export_model
from deploy.export import main as export_main
from deploy.exporters.detector import (
    OUTPUT_NAMES,
    ExactResizeTransform,
    build_detector_onnx,
    build_tensorrt_onnx,
    check_detection_parity,  # fmt: skip
    eager_resized_size,
    exact_resize,
    match_detections,
)
from deploy.models import prepare_detector
from deploy.runtime import DetectionPredictor
from deploy.samples import natural_images
from deploy.sidecar import SidecarError, read_sidecar, sidecar_path, validate
from deploy.tensorrt import TensorRTUnavailable, tensorrt_available
from deploy.tensorrt.detection import detector_profiles
from deploy.tensorrt.static_topk import fewest_anchors
from detection.train import build_detector

CLASSES = ["shirt", "trouser", "pullover", "dress", "coat", "sandal", "sneaker", "bag", "boot", "hat"]
MIN_SIZE, MAX_SIZE = 128, 192
# 121 * float32(128 / 121) = 127.99999: torchvision's traced resize made 127 rows where PyTorch makes 128
FLOAT32_RESIZE_TRAP = (160, 121)
# Planted spreads; objectness much wider saturates sigmoid in float32 and ties proposals at the RPN's top-n cut.
RPN_LOGIT_STD, CLASS_LOGIT_STD, BOX_DELTA_STD = 1.0, 1.5, 1.0


def _calibrate(layer: torch.nn.Module, inputs: torch.Tensor, std: float) -> None:
    layer.bias.zero_()
    layer.weight.mul_(std / layer(inputs).std())


def make_run(root: Path, arch: str, design: str, seed: int = 0) -> Path:
    """A run directory as detection.train writes it, with planted heads (see the module docstring)."""
    config = {"backbone": arch, "backbone_weights": None, "design": design, "freeze_at": 2, "dataset": "fashion-det",
              "model": {"min_size": MIN_SIZE, "max_size": MAX_SIZE, "anchor_sizes": [16, 32, 64, 128],
                        "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100},
              "class_names": CLASSES, "channels": 3}  # fmt: skip
    torch.manual_seed(seed)
    model = build_detector(config, len(CLASSES), load_backbone_weights=False).eval()
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output) -> None:
            seen.setdefault(name, inputs[0])

        return hook

    predictor = model.roi_heads.box_predictor
    hooks = [
        model.rpn.head.cls_logits.register_forward_hook(keep("rpn")),
        predictor.cls_score.register_forward_hook(keep("box")),
    ]
    with torch.no_grad():
        model([natural_images(1, (MIN_SIZE, MIN_SIZE + 20), 3, seed=99)[0].float() / 255])
        for hook in hooks:
            hook.remove()
        _calibrate(model.rpn.head.cls_logits, seen["rpn"], RPN_LOGIT_STD)
        _calibrate(predictor.cls_score, seen["box"], CLASS_LOGIT_STD)
        _calibrate(predictor.bbox_pred, seen["box"], BOX_DELTA_STD)
        predictor.cls_score.bias[0] = -4.0  # background rarely wins
    run = root / f"det-{arch}-{design}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config, indent=1))
    save_weights(model, run / "final.safetensors")
    return run


def _image(size: tuple[int, int], seed: int) -> torch.Tensor:
    return natural_images(1, size, 3, seed=seed)[0]  # uint8 (3, H, W)


def _as_tensors(found: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runtime detections back to (boxes, labels 1..C, scores) for match_detections."""
    boxes = torch.tensor([d["box"] for d in found], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([CLASSES.index(d["label"]) + 1 for d in found], dtype=torch.int64)
    return boxes, labels, torch.tensor([d["score"] for d in found], dtype=torch.float32)


def _assert_same(reference: list[dict], got: list[dict], max_detections: int = 100) -> dict:
    report = match_detections(
        _as_tensors(reference), _as_tensors(got), score_thresh=0.05, max_detections=max_detections
    )
    assert not report["unmatched"] and not report["extra"], report
    assert report["compared"] >= 5 and report["max_box_error_px"] < 1.0
    return report


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {design: make_run(root, "resnet20", design) for design in ("c4", "fpn")}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, deploy.ExportResult]:
    out = tmp_path_factory.mktemp("onnx")
    return {design: export_model("resnet20", run, out / f"r20-{design}.onnx", detector=design)
            for design, run in runs.items()}  # fmt: skip


# ---------------------------------------------------------------- export and parity
@pytest.mark.parametrize("design", ["c4", "fpn"])
def test_resnet20_round_trip_at_two_sizes_and_the_float32_resize_trap(design, runs, exported):
    result = exported[design]
    parity = result.parity
    assert [row["shape"][1:] for row in parity["images"]] == [[97, 173], [197, 145]]  # two sizes, both orientations
    assert parity["compared"] >= 20 and parity["max_box_error_px"] < 1e-2 and parity["max_score_error"] < 1e-4
    sidecar = read_sidecar(result.artifact)
    assert sidecar["task"] == "detection" and sidecar["model"]["design"] == design
    assert sidecar["inputs"] == [{"name": "image", "shape": [3, "height", "width"], "dtype": "float32"}]
    assert [o["name"] for o in sidecar["outputs"]] == list(OUTPUT_NAMES) and sidecar["class_names"] == CLASSES
    assert sidecar["preprocessing"]["min_size"] == MIN_SIZE and sidecar["postprocessing"]["label_offset"] == 1
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(result.artifact))).graph
    double = onnx.TensorProto.DOUBLE  # OpenVINO's CPU plugin and TensorRT compute it in float32
    assert not [n.name for n in graph.node if n.op_type == "Cast" and n.attribute[0].i == double]
    assert not [v.name for v in graph.value_info if v.type.tensor_type.elem_type == double]
    assert not [t.name for t in graph.initializer if t.data_type == double]

    artifact, eager = deploy.load(result.artifact), deploy.load(runs[design])
    assert (
        isinstance(artifact, DetectionPredictor) and artifact.backend.name == "onnx" and eager.backend.name == "eager"
    )
    for size, seed in ((FLOAT32_RESIZE_TRAP, 1), ((83, 86), 2)):
        image = _image(size, seed)
        _assert_same(eager.predict(image)[0], artifact.predict(image)[0])


@pytest.mark.parametrize("design", ["c4", "fpn"])
def test_resnet18_round_trip(design, tmp_path):
    run = make_run(tmp_path, "resnet18", design)
    result = export_model("resnet18", run, tmp_path / f"r18-{design}.onnx", detector=design)
    assert result.parity["compared"] >= 20 and result.parity["max_box_error_px"] < 1e-2
    image = _image((150, 211), 5)
    _assert_same(deploy.load(run).predict(image)[0], deploy.load(result.artifact).predict(image)[0])


def test_real_photograph(runs, exported):
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn ships the sample photograph (china.jpg)")
    photo = datasets.load_sample_image("china.jpg")  # uint8 (427, 640, 3)
    for design in ("c4", "fpn"):
        got = deploy.load(exported[design].artifact).predict(photo)[0]
        expected = deploy.load(runs[design]).predict(photo)[0]
        report = _assert_same(expected, got)
        assert report["max_box_error_px"] < 1e-2
        height, width = photo.shape[:2]
        assert all(0 <= d["box"][0] < d["box"][2] <= width and 0 <= d["box"][1] < d["box"][3] <= height for d in got)


def test_boxes_come_back_in_original_image_pixels(runs, exported):
    """A 75 x 300 image is resized to 48 x 192 inside the graph; boxes must come back in 75 x 300 pixels."""
    image = _image((75, 300), 7)
    model = deploy.load(runs["fpn"]).backend.model
    with torch.no_grad():
        expected = model([image.float() / 255])[0]  # torchvision maps boxes back to the input image
    got = deploy.load(exported["fpn"].artifact).predict(image)[0]
    report = match_detections((expected["boxes"], expected["labels"], expected["scores"]), _as_tensors(got),
                              score_thresh=0.05, max_detections=100)  # fmt: skip
    assert not report["unmatched"] and not report["extra"] and report["compared"] >= 5
    boxes = _as_tensors(got)[0]
    assert float(boxes[:, 2].max()) > MAX_SIZE + 10  # beyond the resized width: not in resized coordinates
    assert float(boxes[:, [0, 2]].max()) <= 300 and float(boxes[:, [1, 3]].max()) <= 75


def test_exact_resize_matches_eager_sizes(tmp_path):
    """The traced resize gives eager PyTorch's size for every input size (torchvision's own does not)."""
    import onnxruntime as ort
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class Resize(torch.nn.Module):
        def __init__(self, transform: GeneralizedRCNNTransform) -> None:
            super().__init__()
            self.transform = transform

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.transform.resize(image)[0]

    stock = GeneralizedRCNNTransform(MIN_SIZE, MAX_SIZE, [0.5] * 3, [0.25] * 3).eval()
    sizes = [FLOAT32_RESIZE_TRAP, (83, 86), (260, 209), (84, 199), (97, 173), (300, 420)]
    shapes = {}
    for name, transform in (("stock", stock), ("exact", ExactResizeTransform.like(stock))):
        path = tmp_path / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Resize(transform).eval(), (torch.rand(3, 115, 150),), str(path), dynamo=False,
                              opset_version=17, input_names=["image"], output_names=["resized"],
                              dynamic_axes={"image": {1: "h", 2: "w"}, "resized": {1: "h", 2: "w"}})  # fmt: skip
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shapes[name] = [
            session.run(None, {"image": np.random.rand(3, *s).astype(np.float32)})[0].shape[1:] for s in sizes
        ]
    eager = [tuple(stock.resize(torch.rand(3, *s))[0].shape[1:]) for s in sizes]
    assert shapes["exact"] == eager
    assert shapes["stock"][0] == (169, 127) and eager[0] == (169, 128)  # why ExactResizeTransform exists


@pytest.mark.parametrize("min_size, max_size", [(MIN_SIZE, MAX_SIZE), (128, 128), (800, 1333)])
def test_resized_size_is_eager_float64_in_integer_arithmetic_in_onnxruntime_and_openvino(min_size, max_size, tmp_path):
    """OpenVINO's CPU plugin computes float64 in float32: the graph's size arithmetic is integer only."""
    import math

    import onnxruntime as ort

    ov = pytest.importorskip("openvino")

    def eager(h: int, w: int) -> tuple[int, int]:  # torchvision's eager arithmetic, Python floats
        scale = min(min_size / float(min(h, w)), max_size / float(max(h, w)))
        return math.floor(h * scale), math.floor(w * scale)

    rng = np.random.default_rng(min_size + max_size)
    shapes = np.concatenate([rng.integers(1, 300, (400, 2)), rng.integers(1, 3000, (400, 2)),
                             [[49, 49], [121, 160], [160, 121], [8192, 3], [9000, 40]]])  # fmt: skip
    expected = np.array([eager(int(h), int(w)) for h, w in shapes])
    in_float32 = np.floor(shapes.astype(np.float32) * np.minimum(
        np.float32(min_size) / shapes.min(1, keepdims=True).astype(np.float32),
        np.float32(max_size) / shapes.max(1, keepdims=True).astype(np.float32)))  # fmt: skip
    assert (in_float32 != expected).any(axis=1).sum() > 10  # what a float32 runtime gets from a float64 graph

    class Size(torch.nn.Module):
        def forward(self, shape: torch.Tensor) -> torch.Tensor:
            return eager_resized_size(shape, min_size, max_size)

    path = tmp_path / "size.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Size(), (torch.tensor([100, 200]),), str(path), dynamo=False, opset_version=17,
                          input_names=["shape"], output_names=["size"])  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    in_eager = np.stack([eager_resized_size(torch.from_numpy(s), min_size, max_size).numpy() for s in shapes])
    in_onnxruntime = np.stack([session.run(None, {"shape": s.astype(np.int64)})[0] for s in shapes])
    in_openvino = np.stack([np.array(compiled(s.astype(np.int64))[0]) for s in shapes])
    for got in (in_eager, in_onnxruntime, in_openvino):
        np.testing.assert_array_equal(got, expected)


def test_openvino_detector_matches_pytorch_and_gives_nothing_when_nothing_is_found(runs, tmp_path):
    """OpenVINO gave the empty branch of torchvision's batched NMS one row (label 0, score 0)."""
    pytest.importorskip("openvino")
    result = export_model("resnet20", runs["c4"], tmp_path / "strict.xml", detector="c4", format="openvino",
                          score_thresh=0.95)  # fmt: skip
    check = result.parity["score_thresh_0"]  # nothing at 0.95 on the check images: compared at score_thresh 0
    assert result.parity["compared"] == 0 and check["compared"] >= 20 and check["max_box_error_px"] < 1e-2
    predictor = deploy.load(result.artifact)
    assert predictor.backend.name == "openvino"
    eager = deploy.load(runs["c4"])
    for size, seed in ((FLOAT32_RESIZE_TRAP, 1), ((83, 86), 2)):
        image = _image(size, seed)
        assert max(d["score"] for d in eager.predict(image)[0]) < 0.95
        assert predictor.predict(image)[0] == []


def test_export_mismatch_fails_and_leaves_nothing(runs, tmp_path, monkeypatch):
    from deploy.backends import onnxrt as backends

    original = backends.OnnxDetectionBackend.__call__

    def shifted(self, image):
        boxes, labels, scores = original(self, image)
        return boxes + 2.0, labels, scores  # 2 px off: past the 1 px tolerance

    monkeypatch.setattr(backends.OnnxDetectionBackend, "__call__", shifted)
    out = tmp_path / "bad.onnx"
    with pytest.raises(
        ExportError, match=r"does not match PyTorch.*no match in the artifact.*nearest box off by 2\.00 px"
    ):
        export_model("resnet20", runs["c4"], out, detector="c4")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no artifact, no sidecar, no temporary folder


def test_detector_exporter_failure_names_the_step(runs, tmp_path, monkeypatch):
    from deploy.exporters import detector as detection_export

    def broken(*args, **kwargs):
        raise RuntimeError("torch.onnx: cannot export roi_align\nsecond line")

    monkeypatch.setattr(detection_export, "_build", broken)
    with pytest.raises(ExportError, match=r"the onnx export itself failed \(RuntimeError: torch.onnx: cannot export "
                                          r"roi_align\)$") as caught:  # fmt: skip
        export_model("resnet20", runs["c4"], tmp_path / "det.onnx", detector="c4")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_low_score_threshold_check_when_nothing_is_detected(runs, tmp_path, capsys):
    result = export_model("resnet20", runs["c4"], tmp_path / "strict.onnx", detector="c4", score_thresh=0.95,
                          detections_per_image=20)  # fmt: skip
    assert result.parity["compared"] == 0 and result.parity["score_thresh_0"]["compared"] >= 20
    assert "checking the same graph at score_thresh 0" in capsys.readouterr().out
    predictor = deploy.load(result.artifact)
    assert predictor.min_score == 0.95 and predictor.max_detections == 20


# ---------------------------------------------------------------- runtime
def test_predict_accepts_every_input_type_and_batches(exported, tmp_path):
    predictor = deploy.load(exported["c4"].artifact)
    image = _image((140, 170), 3)
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array).save(tmp_path / "x.png")
    inputs = [image, image.float() / 255, array, Image.fromarray(array), tmp_path / "x.png", str(tmp_path / "x.png")]
    results = [predictor.predict(item) for item in inputs]
    assert len(results[0]) == 1 and len(results[0][0]) >= 5 and all(r == results[0] for r in results)
    found = results[0][0]
    assert set(found[0]) == {"box", "label", "score"} and found[0]["label"] in CLASSES
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)

    other = _image((90, 260), 4)
    batch = predictor.predict([image, other, np.stack([array, array])])  # sizes differ; a numpy batch counts as 2
    assert len(batch) == 4 and batch[0] == found and batch[2] == batch[3] == found
    assert batch[1] == predictor.predict(other)[0]
    assert predictor.predict(image, score_threshold=0.5)[0] == [d for d in found if d["score"] >= 0.5]
    assert predictor.predict(image, top_k=2)[0] == found[:2]
    with pytest.raises(ValueError, match="score_threshold must be a number in"):
        predictor.predict(image, score_threshold=1.5)
    with pytest.raises(deploy.preprocess.ImageInputError, match="float images must lie in"):
        predictor.predict(image.float())


# ---------------------------------------------------------------- errors
def test_detector_sidecar_problems_name_file_and_field(exported, tmp_path):
    source = exported["c4"]
    data = json.loads(source.sidecar.read_text())
    cases = [("class_names", None, "field 'class_names' is missing"),
             ("postprocessing.label_offset", 0, "field 'postprocessing.label_offset' must be 1"),
             ("postprocessing.boxes", "logits", "field 'postprocessing.boxes' names 'logits'"),
             ("preprocessing.value_range", [0, 255], "field 'preprocessing.value_range' must be"),
             ("inputs", [{"name": "image", "shape": ["batch", 3, "h", "w"], "dtype": "float32"}],
              "field 'inputs\\[0\\].shape' must be \\(channels, height, width\\)")]  # fmt: skip
    for field, value, message in cases:
        broken = json.loads(json.dumps(data))
        *parents, key = field.split(".")
        node = broken
        for part in parents:
            node = node[part]
        if value is None:
            del node[key]
        else:
            node[key] = value
        with pytest.raises(SidecarError, match=f"{sidecar_path(source.artifact).name}: {message}"):
            validate(broken, sidecar_path(source.artifact))
    # and through deploy.load, from the file
    copy = tmp_path / "r20.onnx"
    copy.write_bytes(source.artifact.read_bytes())
    missing = {k: v for k, v in data.items() if k != "class_names"} | {
        "artifact": {**data["artifact"], "file": copy.name}
    }
    sidecar_path(copy).write_text(json.dumps(missing))
    with pytest.raises(SidecarError, match=r"r20\.onnx\.json: field 'class_names' is missing"):
        deploy.load(copy)


def test_classifier_given_detector_options_and_other_bad_requests(runs, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--score-thresh applies to detector exports"):
        export_model("resnet20", None, tmp_path / "c.onnx", score_thresh=0.5)
    with pytest.raises(SystemExit, match=r"--detections-per-image applies to detector exports"):
        export_main(["--model", "resnet20", "--output", str(tmp_path / "c.onnx"), "--detections-per-image", "5"])
    with pytest.warns(UserWarning, match="randomly initialised"):
        classifier = deploy.load_eager("resnet20")
    with pytest.raises(ValueError, match="is a classifier: score_threshold applies to detectors"):
        classifier.predict(torch.zeros(3, 32, 32), score_threshold=0.5)
    with pytest.raises(ValueError, match=r"trained a 'c4' detector, not 'fpn' \(pass --detector c4\)"):
        export_model("resnet20", runs["c4"], tmp_path / "d.onnx", detector="fpn")
    with pytest.raises(ValueError, match="trained a resnet20 detector, not resnet18"):
        export_model("resnet18", runs["c4"], tmp_path / "d.onnx", detector="c4")
    with pytest.raises(ValueError, match="needs --weights RUN_DIR"):
        export_model("resnet20", None, tmp_path / "d.onnx", detector="c4")
    with pytest.raises(
        ValueError,
        match=r"detectors export to ONNX, OpenVINO or TensorRT \(--format onnx\|openvino\|tensorrt\), not 'aoti'",
    ):
        export_model("resnet20", runs["c4"], tmp_path / "d.pt2", detector="c4", format="aoti")
    with pytest.raises(ValueError, match=r"support precision \['fp32', 'fp16', 'int8'\], not 'bf16'"):
        export_model("resnet20", runs["c4"], tmp_path / "d.engine", detector="c4", format="tensorrt", precision="bf16")
    with pytest.raises(ValueError, match=r"d\.onnx: a detector tensorrt artifact must end in \.engine or \.plan"):
        export_model("resnet20", runs["c4"], tmp_path / "d.onnx", detector="c4", format="tensorrt")
    with pytest.raises(
        ValueError, match=r"a fp16 detector is checked by the mAP it keeps against fp32: give --eval-dataset"
    ):
        export_model("resnet20", runs["c4"], tmp_path / "d.onnx", detector="c4", precision="fp16")
    with pytest.raises(ValueError, match=r"an int8 detector needs calibration images"):
        export_model("resnet20", runs["c4"], tmp_path / "d.onnx", detector="c4", precision="int8",
                     eval_dataset="fashion-det", data_root=tmp_path)  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_graph_builder_leaves_the_detector_in_eval_mode(runs, tmp_path):
    model = deploy.load(runs["c4"]).backend.model
    transform = model.transform
    build_detector_onnx(model, _image((100, 120), 0).float() / 255, tmp_path / "g.onnx")
    assert not model.training and model.transform is transform  # exact_resize restored the stock transform
    with exact_resize(model):
        assert isinstance(model.transform, ExactResizeTransform)
    assert model.transform is transform


# ---------------------------------------------------------------- TensorRT
TRT_OK, TRT_REASON = tensorrt_available()


def test_detector_tensorrt_profile():
    fashion = detector_profiles("image", 1, 128, 128, 2048)[0]["image"]
    assert fashion == {"min": [1, 32, 32], "opt": [1, 128, 128], "max": [1, 2048, 2048]}
    voc = detector_profiles("image", 3, 600, 1000, 2048)[0]["image"]
    assert voc == {"min": [3, 32, 32], "opt": [3, 600, 800], "max": [3, 2048, 2048]}
    assert detector_profiles("image", 3, 600, 1000, 500)[0]["image"]["opt"] == [3, 500, 500]
    with pytest.raises(ValueError, match="max_image_side must be at least 32, got 16"):
        detector_profiles("image", 3, 600, 1000, 16)


def _topk_ks(path: Path) -> list[int | None]:
    """K of every TopK node: its value where K is a constant (initializer or Constant node), else None."""
    graph = onnx.load(str(path)).graph
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    constants |= {
        n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
    }
    return [int(constants[n.input[1]].item()) if n.input[1] in constants else None
            for n in graph.node if n.op_type == "TopK"]  # fmt: skip


@pytest.mark.parametrize("pre_nms_top_n", [300, 30000])
def test_tensorrt_graph_has_a_constant_topk_and_matches_pytorch_over_its_profile(pre_nms_top_n, runs, tmp_path):
    """The graph TensorRT builds from runs here in onnxruntime: constant K, and PyTorch's detections on
    images inside its profile, down to the thinnest (smallest side x largest side). With K = 30000
    a 32 x 320 image has too few anchors (18432), so the profile starts at 64 px."""
    prepared = prepare_detector("resnet20", runs["c4"])
    prepared.model.rpn._pre_nms_top_n["testing"] = pre_nms_top_n
    example = _image((120, 150), 3).float() / 255
    dynamic, static = tmp_path / "dynamic.onnx", tmp_path / "static.onnx"
    build_detector_onnx(prepared.model, example, dynamic)
    profiles = build_tensorrt_onnx(prepared.model, prepared, example, static,
                                   ExportOptions(format="tensorrt", detector="c4", max_image_side=320))  # fmt: skip
    assert _topk_ks(dynamic) == [None] and _topk_ks(static) == [pre_nms_top_n]
    low, high = profiles[0]["image"]["min"], profiles[0]["image"]["max"]
    side = {300: 32, 30000: 64}[pre_nms_top_n]
    assert low == [3, side, side] and high == [3, 320, 320]
    assert fewest_anchors(prepared.model, 3, [(side, 320), (320, side), (side, side)])[0] >= pre_nms_top_n
    if side > 32:
        assert fewest_anchors(prepared.model, 3, [(32, 320)]) == (18432, (32, 320))
    backend = OnnxDetectionBackend(static, "image", OUTPUT_NAMES, ["CPUExecutionProvider"])
    images = [
        _image(size, 20 + i).float() / 255 for i, size in enumerate([(side, 320), (320, side), (side + 7, side + 50)])
    ]
    report = check_detection_parity(prepared.model, backend, images, 1.0, "static-K graph")
    assert report["compared"] >= 30 and report["max_box_error_px"] < 1e-3


def test_tensorrt_graph_refuses_a_top_k_no_image_can_keep(runs):
    prepared = prepare_detector("resnet20", runs["c4"])
    prepared.model.rpn._pre_nms_top_n["testing"] = 10**6
    with pytest.raises(ExportError, match=r"resnet20 c4 detector: no optimisation profile with sides from 32 to "
                                          r"--max-image-side 320 px gives every RPN level at least pre_nms_top_n = "
                                          r"1000000 anchors; a 320x320 image gives a level only "
                                          r"49152 anchors"):  # fmt: skip
        build_tensorrt_onnx(prepared.model, prepared, _image((120, 150), 3).float() / 255, Path("unused.onnx"),
                            ExportOptions(format="tensorrt", detector="c4", max_image_side=320))  # fmt: skip
    assert not Path("unused.onnx").exists()


@pytest.mark.skipif(TRT_OK, reason="checks the messages where TensorRT is missing")
def test_detector_tensorrt_missing_is_a_clear_error(runs, exported, tmp_path):
    with pytest.raises(TensorRTUnavailable, match="TensorRT"):
        export_model("resnet20", runs["c4"], tmp_path / "d.engine", detector="c4", format="tensorrt", precision="fp16")
    assert not list(tmp_path.iterdir())  # refused before any work
    # a detector engine with a valid sidecar, loaded where TensorRT is missing
    engine = tmp_path / "d.engine"
    engine.write_bytes(b"serialised engine bytes")
    data = json.loads(exported["c4"].sidecar.read_text())
    data.update(backend="tensorrt", device="cuda", precision="fp16",
                artifact={"file": engine.name, "sha256": sha256_of(engine), "size": engine.stat().st_size},
                tensorrt={"version": "10.13.0", "gpu": "NVIDIA H100", "compute_capability": "9.0",
                          "profiles": detector_profiles("image", 3, MIN_SIZE, MAX_SIZE, 2048)})  # fmt: skip
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(TensorRTUnavailable, match="TensorRT"):
        deploy.load(engine)


@pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_detector_tensorrt_round_trip(precision, runs, exported, tmp_path):
    out = tmp_path / f"r20-c4-{precision}.engine"
    result = export_model("resnet20", runs["c4"], out, detector="c4", format="tensorrt", precision=precision,
                          max_image_side=512)  # fmt: skip
    data = read_sidecar(out)
    assert data["backend"] == "tensorrt" and data["precision"] == precision and data["task"] == "detection"
    assert data["tensorrt"]["profiles"][0]["image"]["max"] == [3, 512, 512]
    assert result.parity["compared"] >= 5 or result.parity["score_thresh_0"]["compared"] >= 5
    engine, onnx = deploy.load(out), deploy.load(exported["c4"].artifact, device="cpu")
    assert isinstance(engine, DetectionPredictor) and engine.backend.name == "tensorrt"
    image = _image((150, 200), 5)
    report = match_detections(_as_tensors(onnx.predict(image)[0]), _as_tensors(engine.predict(image)[0]),
                              score_thresh=0.05, max_detections=100, box_tolerance=1.0 if precision == "fp32" else 4.0,
                              score_tolerance=1e-3 if precision == "fp32" else 2e-2)  # fmt: skip
    assert not report["unmatched"] and not report["extra"], report
    with pytest.raises(ValueError, match="outside the engine's optimisation profile"):
        engine.predict(_image((600, 200), 6))


# ---------------------------------------------------------------- Triton
def test_detector_triton_repository_takes_one_image_of_any_size(exported, tmp_path):
    from test_deploy_triton_bench import _parse

    from deploy.triton import TritonError, TritonOptions, write_model

    model = write_model(exported["c4"].artifact, tmp_path / "repo")
    config = _parse(model.config)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 0  # detectors: no batching by default
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("boxes", [-1, 4]), ("labels", [-1]), ("scores", [-1])]
    assert model.labels.read_text().splitlines() == CLASSES and model.model_file.name == "model.onnx"
    assert not config.HasField("dynamic_batching")
    with pytest.raises(
        TritonError, match=r"--max-batch 8 needs a dynamic batch axis, but tensor 'image' has the fixed shape"
    ):
        write_model(exported["c4"].artifact, tmp_path / "repo2", TritonOptions(max_batch=8))


# ---------------------------------------------------------------- bench
def test_bench_detector_onnx_vs_eager_run(runs, exported, tmp_path, capsys):
    from deploy.bench import BenchError, BenchOptions, run_bench
    from deploy.bench import main as bench_main

    report = run_bench(BenchOptions([exported["c4"].artifact], eager=str(runs["c4"]), warmup=1, iters=4, rounds=2,
                                    threads=1))  # fmt: skip
    assert report["task"] == "detection" and report["settings"]["input"] == [3, MIN_SIZE, 171]  # 4:3 capped by max_size
    assert [(r["backend"], r["batch"], r["calls"]) for r in report["results"]] == [
        ("eager-fp32", 1, 4),
        ("onnx-fp32", 1, 4),
    ]
    eager, onnx = report["results"]
    assert eager["latency_ratio"] == 1.0 and onnx["latency_ratio"] == pytest.approx(onnx["p50_ms"] / eager["p50_ms"])
    assert onnx["throughput_ips"] > 0 and len(report["predict"]) == 2 and report["goals"] == []  # goals are ResNet-50's
    assert [b["task"] for b in report["backends"]] == ["detection", "detection"]
    with pytest.raises(BenchError, match="classifiers and detectors cannot be compared in one run"):
        run_bench(BenchOptions([exported["c4"].artifact], eager="resnet20", iters=1, rounds=1))
    with pytest.raises(SystemExit, match=r"not a detection.train run directory"):
        bench_main([str(exported["c4"].artifact), "--eager", str(tmp_path)])
