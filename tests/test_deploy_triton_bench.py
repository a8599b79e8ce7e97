"""deploy.triton (Triton model repositories) and deploy.bench (side-by-side latency/throughput)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from backbones.fileio import sha256_of
from deploy.bench import BenchError, BenchOptions, round_sizes, run_bench, time_interleaved
from deploy.bench import main as bench_main
from deploy.export import export_model
from deploy.sidecar import SidecarError, sidecar_path, validate
from deploy.triton import TritonError, TritonOptions, write_model
from deploy.triton import main as triton_main

pytestmark = pytest.mark.filterwarnings("ignore:.*randomly initialised model:UserWarning")  # by design here

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                  onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32"}  # fmt: skip


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def r20(tmp_path_factory) -> Path:
    """A real resnet20 ONNX artifact (random weights, 10 classes) with its sidecar."""
    torch.manual_seed(0)
    return export_model("resnet20", None, tmp_path_factory.mktemp("r20") / "resnet20.onnx").artifact


@pytest.fixture(scope="module")
def r20_dynamic_hw(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_model("resnet20", None, tmp_path_factory.mktemp("r20hw") / "r20hw.onnx", dynamic_hw=True).artifact


def _variant(source: Path, target: Path, content: bytes | None = None, **changes) -> Path:
    """``source`` (or ``content``) copied to ``target``, its sidecar edited by ``changes`` (callables or values)."""
    if content is None:
        shutil.copy(source, target)
    else:
        target.write_bytes(content)
    data = json.loads(sidecar_path(source).read_text())
    data["artifact"] = {"file": target.name, "sha256": sha256_of(target), "size": target.stat().st_size}
    for key, value in changes.items():
        if callable(value):
            value(data)
        else:
            data[key] = value
    sidecar_path(target).write_text(json.dumps(data))
    return target


def _fake_tensorrt(r20: Path, folder: Path, max_batch: int = 16) -> Path:
    profile = {"images": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [max_batch, 3, 32, 32]}}
    record = {"version": "10.13.0", "gpu": "NVIDIA H100", "compute_capability": "9.0", "profiles": [profile]}
    return _variant(r20, folder / "r20.plan", b"not a real engine: triton.py never opens it", backend="tensorrt",
                    device="cuda", precision="fp16", tensorrt=record)  # fmt: skip


# ---------------------------------------------------------------- Triton's ModelConfig, the fields we write
def _model_config_class() -> type:
    """Triton's ``inference.ModelConfig`` restricted to the fields deploy.triton writes, with the names and
    numbers of triton-inference-server/common protobuf/model_config.proto, built as a descriptor at test time."""
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="triton_model_config_subset.proto", package="inference", syntax="proto3"
    )
    data_type = file.enum_type.add(name="DataType")
    for number, name in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                                   "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
                                   "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):  # fmt: skip
        data_type.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple], enums: dict[str, list[str]] | None = None) -> Any:
        proto = file.message_type.add(name=name)
        for enum_name, values in (enums or {}).items():
            enum = proto.enum_type.add(name=enum_name)
            for number, value in enumerate(values):
                enum.value.add(name=value, number=number)
        for field_name, number, kind, repeated, *type_name in fields:
            label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name[0]
        return proto

    message("ModelTensorReshape", [("shape", 1, F.TYPE_INT64, True)])
    message("ModelInput", [("name", 1, F.TYPE_STRING, False),
                           ("data_type", 2, F.TYPE_ENUM, False, ".inference.DataType"),
                           ("format", 3, F.TYPE_ENUM, False, ".inference.ModelInput.Format"),
                           ("dims", 4, F.TYPE_INT64, True),
                           ("reshape", 5, F.TYPE_MESSAGE, False, ".inference.ModelTensorReshape")],
            {"Format": ["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"]})  # fmt: skip
    message("ModelOutput", [("name", 1, F.TYPE_STRING, False),
                            ("data_type", 2, F.TYPE_ENUM, False, ".inference.DataType"),
                            ("dims", 3, F.TYPE_INT64, True), ("label_filename", 4, F.TYPE_STRING, False),
                            ("reshape", 5, F.TYPE_MESSAGE, False, ".inference.ModelTensorReshape")])  # fmt: skip
    message("ModelDynamicBatching", [("preferred_batch_size", 1, F.TYPE_INT32, True),
                                     ("max_queue_delay_microseconds", 2, F.TYPE_UINT64, False)])  # fmt: skip
    message("ModelInstanceGroup", [("name", 1, F.TYPE_STRING, False), ("count", 2, F.TYPE_INT32, False),
                                   ("gpus", 3, F.TYPE_INT32, True),
                                   ("kind", 4, F.TYPE_ENUM, False, ".inference.ModelInstanceGroup.Kind")],
            {"Kind": ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]})  # fmt: skip
    message("ModelParameter", [("string_value", 1, F.TYPE_STRING, False)])
    config = message("ModelConfig", [("name", 1, F.TYPE_STRING, False), ("platform", 2, F.TYPE_STRING, False),
                            ("backend", 17, F.TYPE_STRING, False), ("max_batch_size", 4, F.TYPE_INT32, False),
                            ("parameters", 14, F.TYPE_MESSAGE, True, ".inference.ModelConfig.ParametersEntry"),
                            ("input", 5, F.TYPE_MESSAGE, True, ".inference.ModelInput"),
                            ("output", 6, F.TYPE_MESSAGE, True, ".inference.ModelOutput"),
                            ("instance_group", 7, F.TYPE_MESSAGE, True, ".inference.ModelInstanceGroup"),
                            ("dynamic_batching", 11, F.TYPE_MESSAGE, False,
                             ".inference.ModelDynamicBatching")])  # fmt: skip
    entry = config.nested_type.add(name="ParametersEntry")  # map<string, ModelParameter> parameters = 14
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".inference.ModelParameter"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()


def _parse(config: Path):
    return text_format.Parse(config.read_text(), ModelConfig())  # unknown fields or bad syntax raise ParseError


def _names(enum_field_owner, field: str, value: int) -> str:
    return enum_field_owner.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[value].name


def _graph_tensors(path: Path, which: str) -> list[tuple[str, str, list[int]]]:
    """(name, Triton data type, full shape with -1 for symbolic axes) of the ONNX graph's real inputs/outputs."""
    graph = onnx.load(str(path)).graph
    initialisers = {init.name for init in graph.initializer}
    values = [v for v in getattr(graph, which) if v.name not in initialisers]
    return [(v.name, ONNX_TO_TRITON[v.type.tensor_type.elem_type],
             [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
            for v in values]  # fmt: skip


def _config_tensors(tensors) -> list[tuple[str, str, list[int]]]:
    return [(t.name, _names(t, "data_type", t.data_type), list(t.dims)) for t in tensors]


# ---------------------------------------------------------------- deploy.triton
def test_onnx_repository_matches_the_real_graph(r20, tmp_path, capsys):
    repo = tmp_path / "models"
    assert triton_main([str(r20), "--repository", str(repo)]) == 0
    assert "serve: tritonserver --model-repository" in capsys.readouterr().out
    model = repo / "resnet20"
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt", "sidecar.json"]  # fmt: skip
    assert sorted(p.name for p in repo.iterdir()) == ["resnet20"]  # no staging folder left behind
    config = _parse(model / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == ("resnet20", "onnxruntime_onnx", 32)
    inputs, outputs = _graph_tensors(r20, "input"), _graph_tensors(r20, "output")
    assert [shape[0] for *_, shape in inputs + outputs] == [-1, -1]  # the batch axis is symbolic in the graph
    assert (
        _config_tensors(config.input) == [(n, t, s[1:]) for n, t, s in inputs] == [("images", "TYPE_FP32", [3, 32, 32])]
    )
    assert _config_tensors(config.output) == [(n, t, s[1:]) for n, t, s in outputs] == [("logits", "TYPE_FP32", [10])]
    assert _names(config.input[0], "format", config.input[0].format) == "FORMAT_NCHW"
    assert config.output[0].label_filename == "labels.txt"
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    assert group.count == 1 and _names(group, "kind", group.kind) == "KIND_AUTO"
    assert (model / "1" / "model.onnx").read_bytes() == r20.read_bytes()
    sidecar = validate(json.loads((model / "sidecar.json").read_text()))
    assert sidecar["artifact"]["file"] == "model.onnx" and sidecar["artifact"]["sha256"] == sha256_of(
        model / "1/model.onnx"
    )
    assert sidecar["triton"]["model_file"] == "1/model.onnx" and sidecar["preprocessing"]["input_size"] == 32
    assert (model / "labels.txt").read_text().splitlines() == sidecar["class_names"]


def test_options_dynamic_hw_and_no_batching(r20_dynamic_hw, tmp_path):
    options = TritonOptions(name="r20.hw-v2", max_batch=8, instances=2, preferred_batch=[4, 2, 4], kind="cpu")
    written = write_model(r20_dynamic_hw, tmp_path, options)
    config = _parse(written.config)
    assert config.name == "r20.hw-v2" and config.max_batch_size == 8
    assert [(n, t, s[1:]) for n, t, s in _graph_tensors(r20_dynamic_hw, "input")] == _config_tensors(config.input)
    assert list(config.input[0].dims) == [3, -1, -1]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    (group,) = config.instance_group
    assert group.count == 2 and _names(group, "kind", group.kind) == "KIND_CPU"
    unbatched = _parse(write_model(r20_dynamic_hw, tmp_path, TritonOptions(name="flat", max_batch=0)).config)
    assert unbatched.max_batch_size == 0 and not unbatched.HasField("dynamic_batching")
    assert _config_tensors(unbatched.input) == _graph_tensors(r20_dynamic_hw, "input")  # full shapes, batch -1
    assert _config_tensors(unbatched.output) == _graph_tensors(r20_dynamic_hw, "output")
    assert unbatched.input[0].format == 0  # FORMAT_NCHW describes three dims only: left out without batching


def test_tensorrt_repository(r20, tmp_path):
    engine = _fake_tensorrt(r20, tmp_path)
    written = write_model(engine, tmp_path / "repo", TritonOptions(max_batch=16))
    config = _parse(written.config)
    assert config.platform == "tensorrt_plan" and written.model_file.name == "model.plan"
    assert _names(config.instance_group[0], "kind", config.instance_group[0].kind) == "KIND_GPU"
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert "TensorRT 10.13.0" in written.notes[0]
    with pytest.raises(TritonError, match="--max-batch 32 exceeds the engine's profile maximum batch 16"):
        write_model(engine, tmp_path / "repo2")
    with pytest.raises(TritonError, match="runs on the GPU only"):
        write_model(engine, tmp_path / "repo2", TritonOptions(max_batch=16, kind="cpu"))


def test_refusals_are_clear(r20, tmp_path):
    repo = tmp_path / "repo"
    for backend, suffix in (("aoti", ".pt2"), ("eager", ".safetensors")):
        other = _variant(r20, tmp_path / f"m{suffix}", b"stand-in bytes", backend=backend, device="cpu")
        with pytest.raises(TritonError, match=f"a {backend} artifact; Triton would need its PyTorch backend"):
            write_model(other, repo)

    def fixed_batch(data):
        for tensor in data["inputs"] + data["outputs"]:
            tensor["shape"][0] = 1
        data["dynamic_axes"] = {}

    fixed = _variant(r20, tmp_path / "fixed.onnx", fixed_batch=fixed_batch)
    with pytest.raises(
        TritonError,
        match=r"--max-batch 32 needs a dynamic batch axis, but tensor 'images' has "
        r"the fixed shape \[1, 3, 32, 32\]",
    ):
        write_model(fixed, repo)
    assert list(_parse(write_model(fixed, repo, TritonOptions(max_batch=0)).config).input[0].dims) == [1, 3, 32, 32]

    def rename_output(data):
        data["outputs"][0]["name"] = data["postprocessing"]["output"] = "scores"
        data["dynamic_axes"]["scores"] = data["dynamic_axes"].pop("logits")

    renamed = _variant(r20, tmp_path / "renamed.onnx", rename_output=rename_output)
    with pytest.raises(
        TritonError, match=r"the sidecar lists outputs \[\('scores', 2\)\].*the ONNX graph has \[\('logits', 2\)\]"
    ):
        write_model(renamed, repo)
    with pytest.raises(TritonError, match=r"--preferred-batch sizes must lie in 1..32 \(the max batch\), got \[64\]"):
        write_model(r20, repo, TritonOptions(preferred_batch=[8, 64]))
    with pytest.raises(TritonError, match="model name '../up'"):
        write_model(r20, repo, TritonOptions(name="../up"))
    lonely = tmp_path / "lonely" / "m.onnx"
    lonely.parent.mkdir()
    shutil.copy(r20, lonely)
    with pytest.raises(SidecarError, match=f"no sidecar found; expected {lonely}.json"):
        write_model(lonely, repo)
    with pytest.raises(FileNotFoundError, match="artifact not found"):
        write_model(tmp_path / "nothing.onnx", repo)
    with pytest.raises(SystemExit, match="error: .*no sidecar found"):
        triton_main([str(lonely), "--repository", str(repo)])


def test_existing_model_folder_needs_force(r20, tmp_path):
    model = tmp_path / "resnet20"
    model.mkdir()  # an empty folder is fine
    write_model(r20, tmp_path)
    (model / "stale.txt").write_text("old")
    with pytest.raises(TritonError, match="resnet20 already exists and is not empty; pass --force"):
        write_model(r20, tmp_path, TritonOptions(max_batch=4))
    assert _parse(model / "config.pbtxt").max_batch_size == 32  # untouched
    write_model(r20, tmp_path, TritonOptions(max_batch=4, force=True))
    assert _parse(model / "config.pbtxt").max_batch_size == 4 and not (model / "stale.txt").exists()
    assert list(_parse(model / "config.pbtxt").dynamic_batching.preferred_batch_size) == [4]  # 8 and 16 do not fit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20"]


# ---------------------------------------------------------------- deploy.bench
@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_rounds_interleave_backends():
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    samples = time_interleaved(calls, warmup=1, iters=5, rounds=3)
    assert {k: len(v) for k, v in samples.items()} == {"a": 5, "b": 5, "c": 5}
    assert round_sizes(5, 3) == [2, 2, 1] and round_sizes(2, 5) == [1, 1]
    warmup, timed = order[:3], order[3:]
    assert warmup == ["a", "b", "c"]
    # each visit: one untimed settling call, then the round's timed calls; the order rotates per round
    assert (
        timed
        == ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"] * 3 + ["c"] * 2 + ["a"] * 2 + ["b"] * 2
    )


def test_bench_onnx_vs_eager(r20, tmp_path, capsys, keep_threads):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert bench_main([str(r20), "--eager", "resnet20", "--batch", "1,2", "--iters", "2", "--warmup", "1",
                       "--threads", "1", "--json", str(out_json), "--png", str(out_png)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "p50/eager" in printed and "goal cpu: onnxruntime fp32 batch-1" in printed
    report = json.loads(out_json.read_text())
    assert report["baseline"] == "eager-fp32" and report["device"] == "cpu"
    assert report["threads"]["torch_intra_op"] == report["threads"]["onnxruntime_intra_op"] == 1
    backends = {b["label"]: b for b in report["backends"]}
    assert set(backends) == {"eager-fp32", "onnx-fp32"}
    assert backends["onnx-fp32"]["onnxruntime_intra_op_threads"] == 1
    assert backends["onnx-fp32"]["providers"] == ["CPUExecutionProvider"]
    assert report["settings"]["input"] == [3, 32, 32] and report["settings"]["batches"] == [1, 2]
    cells = {(r["backend"], r["batch"]): r for r in report["results"]}
    assert set(cells) == {(label, batch) for label in backends for batch in (1, 2)}
    for (label, batch), row in cells.items():
        assert row["calls"] == 2 and 0 < row["min_ms"] <= row["p50_ms"] <= row["p99_ms"]
        assert row["throughput_ips"] > 0
        assert row["latency_ratio"] > 0 and row["p99_ratio"] > 0 and row["throughput_ratio"] > 0
        if label == "eager-fp32":
            assert row["latency_ratio"] == row["throughput_ratio"] == 1.0
        else:
            assert row["latency_ratio"] == pytest.approx(row["p50_ms"] / cells[("eager-fp32", batch)]["p50_ms"])
    assert [(r["backend"], r["batch"]) for r in report["predict"]] == [("eager-fp32", 1), ("onnx-fp32", 1)]
    assert all(r["p50_ms"] <= r["p99_ms"] for r in report["predict"])
    (goal,) = report["goals"]
    assert goal["backend"] == "onnx-fp32" and goal["measured"] == cells[("onnx-fp32", 1)]["latency_ratio"]
    assert isinstance(goal["passed"], bool)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000


def test_bench_errors(r20, tmp_path, keep_threads, capsys):
    with pytest.raises(SystemExit, match="error: artifact not found: .*nothing.onnx"):
        bench_main([str(tmp_path / "nothing.onnx"), "--eager", "resnet20"])
    lonely = tmp_path / "m.onnx"
    shutil.copy(r20, lonely)
    with pytest.raises(SystemExit, match=f"error: {lonely}: no sidecar found; expected {lonely}.json"):
        bench_main([str(lonely), "--eager", "resnet20"])
    with pytest.raises(SystemExit, match="error: no PyTorch eager baseline: pass --eager"):
        bench_main([str(r20)])
    with pytest.raises(
        SystemExit, match=r"error: the backends take different inputs \(eager-fp32: 3x224, onnx-fp32: 3x32\)"
    ):
        with pytest.warns(
            UserWarning, match="is a resnet20, the eager baseline a resnet18: the ratios compare different"
        ):
            bench_main([str(r20), "--eager", "resnet18"])
    with pytest.raises(SystemExit) as exit_info:
        bench_main([str(r20), "--eager", "resnet20", "--batch", "0"])
    assert exit_info.value.code == 2
    assert (
        "argument --batch: expected comma-separated positive integers like 1,8,32, got '0'" in capsys.readouterr().err
    )
    with pytest.raises(BenchError, match="--batch needs positive batch sizes"):  # the API checks too
        run_bench(BenchOptions(artifacts=[r20], batches=[0]))
    with pytest.raises(SystemExit, match="error: --providers chooses onnxruntime's execution providers on --device"):
        bench_main([str(r20), "--eager", "resnet20", "--providers", "CUDAExecutionProvider"])


def test_bench_labels_tell_every_artifact_apart():
    from deploy.bench import Target, _unique_labels

    def target(label, source):
        return Target(label, source, None, "fp32", "resnet50", label.startswith("eager"))

    targets = [target("eager-fp32", "--eager resnet50"), target("onnx-fp32", "a/resnet50.onnx"),
               target("onnx-fp32", "b/resnet50.onnx"), target("onnx-fp32", "c/other.onnx"),
               target("onnx-fp32", "b/resnet50.onnx"), target("onnx-fp16", "a/resnet50_fp16.onnx")]  # fmt: skip
    _unique_labels(targets)
    assert [t.label for t in targets] == [
        "eager-fp32",
        "onnx-fp32:a/resnet50.onnx",  # the same file name: the path tells them apart
        "onnx-fp32:b/resnet50.onnx",
        "onnx-fp32:other.onnx",
        "onnx-fp32:b/resnet50.onnx #2",  # the same file twice: a count
        "onnx-fp16",
    ]
