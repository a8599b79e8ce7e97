"""``python -m deploy.bench ARTIFACT... [--eager ARCH[:WEIGHTS] | --eager RUN_DIR] [--batch 1,8,32]
[--device cpu|cuda] [--threads N] [--warmup 5] [--iters 30] [--rounds 5] [--json OUT] [--png OUT]``

Latency (p50, p99, ms) and throughput (images/s) of exported artifacts side by side with PyTorch eager,
in one process, on one synthetic batch (natural-looking images through the artifacts' preprocessing).

Every artifact kind runs: onnxruntime (``.onnx``), OpenVINO (``.xml``), TensorRT (``.engine``), AOTInductor
(``.pt2``), eager, in every precision they were exported in (labels such as ``onnx-int8-sym``,
``openvino-int8-nncf``, ``openvino-bf16``). Detectors (detector ``.onnx`` / ``.xml`` / ``.engine`` artifacts; \
the eager baseline is the ``detection.train``
run directory, ``--eager RUN_DIR``) are timed one image per call, as their graphs take one image:
a natural-looking image at the detector's own scale (shorter side min_size, 4:3), float in [0, 1],
to boxes, labels and scores on the host. ``--batch`` does not apply to them.

What is timed: one backend call on a batch already preprocessed and placed on the backend's device in
its input dtype, until the logits are on the host (the GPU is synchronised). Preprocessing is not
timed; ``predict()`` end to end (raw uint8 image -> top-k) is timed separately at batch 1.

Fairness: every backend is warmed up on each batch size, then the timed calls run in rounds that
visit the backends in turn (the order rotating per round), each visit starting with one untimed
call that absorbs the switch (caches, the previous library's spinning threads). Slow drift of the
machine thus reaches every backend alike. torch, onnxruntime and OpenVINO get the same thread count
(``--threads``, default torch's current count), and the report records it and the CPU's ISA.

Throughput is images per second of timed calls (batch x calls / their total time). Ratios are to
the eager baseline (``--eager``, else the first eager artifact) at the same batch size: latency
ratio < 1 and throughput ratio > 1 mean faster than eager.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbones.cliargs import COUNT, POSITIVE_INT
from backbones.engine import cpu_description
from backbones.fileio import atomic_path, atomic_write_json

from .backends import (
    ArtifactLoadError,
    OnnxBackend,
    OnnxDetectionBackend,
    OpenVINOBackend,
    OpenVINODetectionBackend,
    default_providers,
)
from .runtime import DetectionPredictor, Predictor, load, load_eager
from .samples import natural_images
from .sidecar import SidecarError, read_sidecar, sidecar_path, tool_versions
from .tensorrt import EngineCompatibilityError, TensorRTUnavailable

REPORT_FORMAT = "resnet-zoo-bench"
CPU_GOAL = {"batch": 1, "max_latency_ratio": 0.7}  # onnxruntime fp32 vs eager, p50
CPU_INT8_GOALS = {
    "latency": {"batch": 1, "max_ratio": 0.15},  # best int8 artifact vs eager fp32, p50
    "throughput": {"batch": 32, "min_ratio": 6.0},
}  # best int8 artifact vs eager fp32, images/s
GPU_GOAL = {"batch": 256, "min_throughput_ratio": 4.0}  # best fp16 backend vs eager fp32
UNIQUE_IMAGES = 8  # distinct images in the synthetic batch (repeated to the largest batch size)


class BenchError(ValueError):
    """A benchmark that cannot run as asked; the message says why."""


@dataclass
class BenchOptions:
    artifacts: list[Path] = field(default_factory=list)
    eager: str | None = None  # "ARCH" or "ARCH:WEIGHTS"
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    device: str = "cpu"
    threads: int | None = None  # default: torch.get_num_threads()
    warmup: int = 5
    iters: int = 30
    rounds: int = 5
    providers: list[str] | None = None  # onnxruntime on cuda (default: TensorRT EP, CUDA EP, CPU)
    predict: bool = True  # also time predict() end to end at batch 1
    command: str | None = None


@dataclass
class Target:
    """One backend under test."""

    label: str
    source: str
    predictor: Predictor | DetectionPredictor
    precision: str
    arch: str
    is_eager: bool

    @property
    def backend(self) -> Any:
        return self.predictor.backend

    def describe(self) -> dict[str, Any]:
        backend = self.backend
        info = {"label": self.label, "source": self.source, "backend": backend.name, "device": backend.device,
                "precision": self.precision, "arch": self.arch, "task": self.predictor.task,
                "max_batch": getattr(backend, "max_batch", 1)}  # fmt: skip
        if isinstance(backend, (OnnxBackend, OnnxDetectionBackend)):
            info["providers"] = backend.providers
            info["onnxruntime_intra_op_threads"] = backend.session.get_session_options().intra_op_num_threads
        if isinstance(backend, (OpenVINOBackend, OpenVINODetectionBackend)):
            info["openvino_threads"] = int(backend.compiled.get_property("INFERENCE_NUM_THREADS"))
            info["openvino_inference_precision"] = backend.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        return info


def precision_label(sidecar: dict[str, Any]) -> str:
    """``int8-sym`` / ``int8-asym`` / ``int8-sym7`` (7-bit weights) / ``int8-nncf`` for the INT8 kinds, else the
    precision."""
    precision = sidecar["precision"]
    if precision != "int8":
        return precision
    quantization = sidecar.get("quantization") or {}
    if quantization.get("tool") == "nncf.quantize":
        return "int8-nncf"
    label = {"symmetric": "int8-sym", "asymmetric": "int8-asym"}.get(str(quantization.get("scheme")), "int8")
    return label + ("7" if quantization.get("weight_bits") == 7 else "")


# ---------------------------------------------------------------- loading
def _onnx_providers(device: str, providers: list[str] | None) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return providers if providers is not None else default_providers()


def load_detection_run(path: Path, device: str) -> Target:
    """The eager baseline for detectors: a ``detection.train`` run directory (deploy.load tells the kinds apart)."""
    try:
        predictor = load(path, device=device)
    except FileNotFoundError as error:
        raise BenchError(f"{path}: not a detection.train run directory ({error})") from None
    if not isinstance(predictor, DetectionPredictor):
        raise BenchError(f"{path}: a backbones.train run, not a detection.train run directory; a classifier's eager "
                         f"baseline is --eager ARCH:{path}")  # fmt: skip
    return Target("eager-fp32", str(path), predictor, "fp32", predictor.sidecar["model"]["arch"], True)


def load_artifact(path: Path, options: BenchOptions, threads: int) -> Target:
    """A target for an exported artifact; onnxruntime gets exactly ``threads`` intra-op threads."""
    if path.is_dir():
        return load_detection_run(path, options.device)
    if not path.is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    if not sidecar_path(path).is_file():
        raise SidecarError(f"{path}: no sidecar found; expected {sidecar_path(path)} (written by python -m "
                           "deploy.export next to the artifact)")  # fmt: skip
    sidecar = read_sidecar(path)
    predictor: Predictor | DetectionPredictor
    name, post = sidecar["inputs"][0]["name"], sidecar["postprocessing"]
    detector = sidecar["task"] == "detection"
    if sidecar["backend"] == "onnx":
        providers = _onnx_providers(options.device, options.providers)
        predictor = (DetectionPredictor(OnnxDetectionBackend(path, name,
                                                             [post["boxes"], post["labels"], post["scores"]],
                                                             providers, threads=threads), sidecar, str(path))
                     if detector else
                     Predictor(OnnxBackend(path, name, post["output"], providers, threads=threads), sidecar,
                               str(path)))  # fmt: skip
    elif sidecar["backend"] == "openvino":
        hint = sidecar["openvino"]["inference_precision"]
        predictor = (DetectionPredictor(OpenVINODetectionBackend(path, name,
                                                                 [post["boxes"], post["labels"], post["scores"]],
                                                                 hint, threads=threads), sidecar, str(path))
                     if detector else
                     Predictor(OpenVINOBackend(path, name, post["output"], hint, threads=threads), sidecar,
                               str(path)))  # fmt: skip
    else:
        predictor = load(path, device=options.device, verify_sha256=False)  # verified just above
    precision = precision_label(sidecar)
    return Target(f"{sidecar['backend']}-{precision}", str(path), predictor, sidecar["precision"],
                  sidecar["model"]["arch"], sidecar["backend"] == "eager")  # fmt: skip


def load_eager_spec(spec: str, device: str) -> Target:
    """``ARCH`` (random init, fine for timing) or ``ARCH:WEIGHTS`` (zoo id, run directory or weights file);
    for detectors a ``detection.train`` run directory."""
    if Path(spec).is_dir():
        return load_detection_run(Path(spec), device)
    arch, _, weights = spec.partition(":")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*randomly initialised model")  # weights do not change timings
        predictor = load_eager(arch, weights or None, device)
    return Target("eager-fp32", f"--eager {spec}", predictor, "fp32", arch, True)


def _unique_labels(targets: list[Target]) -> None:
    """Labels that tell the targets apart (timings are keyed by them): the kind, then the file name, then the
    whole path, then a count."""
    kinds = [target.label for target in targets]
    for name in (lambda t: Path(t.source).name, lambda t: t.source):
        counts = Counter(target.label for target in targets)
        for target, kind in zip(targets, kinds):
            if counts[target.label] > 1 and not target.source.startswith("--eager"):
                target.label = f"{kind}:{name(target)}"
    seen: Counter[str] = Counter()
    for target in targets:
        seen[target.label] += 1
        if seen[target.label] > 1:
            target.label = f"{target.label} #{seen[target.label]}"


def load_targets(options: BenchOptions, threads: int) -> list[Target]:
    """The baseline first (``--eager``, else the first eager artifact), then the artifacts in order."""
    targets = [load_artifact(Path(p), options, threads) for p in options.artifacts]
    if options.eager:
        targets.insert(0, load_eager_spec(options.eager, options.device))
    eager = [t for t in targets if t.is_eager]
    if not eager:
        raise BenchError("no PyTorch eager baseline: pass --eager ARCH[:WEIGHTS] or an eager artifact (.safetensors)")
    targets.remove(eager[0])
    targets.insert(0, eager[0])
    tasks = {t.predictor.task for t in targets}
    if len(tasks) > 1:
        listing = ", ".join(f"{t.source}: {t.predictor.task}" for t in targets)
        raise BenchError(f"classifiers and detectors cannot be compared in one run ({listing})")
    _unique_labels(targets)
    for target in targets[1:]:
        if target.arch != targets[0].arch:
            warnings.warn(f"{target.source} is a {target.arch}, the eager baseline a {targets[0].arch}: the ratios "
                          "compare different networks", stacklevel=2)  # fmt: skip
        if target.backend.device != options.device:
            warnings.warn(f"{target.source} runs on {target.backend.device}, not the asked-for {options.device}",
                          stacklevel=2)  # fmt: skip
    return targets


# ---------------------------------------------------------------- inputs and calls
def _geometry(target: Target) -> tuple[int, ...]:
    """Classifiers: (channels, input size); detectors: (channels, min_size, max_size)."""
    predictor = target.predictor
    if isinstance(predictor, DetectionPredictor):
        pre = predictor.sidecar["preprocessing"]
        return predictor.channels, int(pre["min_size"]), int(pre["max_size"])
    return predictor.preprocess.channels, predictor.preprocess.input_size


def input_geometry(targets: list[Target]) -> tuple[int, ...]:
    """The input geometry every target shares; different inputs cannot be compared on one batch."""
    shapes = {_geometry(t) for t in targets}
    if len(shapes) != 1:
        listing = ", ".join(f"{t.label}: {'x'.join(map(str, _geometry(t)))}" for t in targets)
        raise BenchError(f"the backends take different inputs ({listing}); benchmark one network at a time")
    return shapes.pop()


def detection_image(target: Target) -> torch.Tensor:
    """One uint8 (C, H, W) image at the detector's own scale: shorter side min_size, 4:3."""
    channels, min_size, max_size = _geometry(target)
    return natural_images(1, (min_size, min(max_size, round(min_size * 4 / 3))), channels, seed=0)[0]


def synthetic_inputs(target: Target, largest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A preprocessed float32 batch of ``largest`` images and one raw uint8 image (for predict())."""
    assert isinstance(target.predictor, Predictor)
    pre = target.predictor.preprocess
    raw_size = (pre.resize * 5 // 4, pre.resize) if pre.resize else (pre.input_size, pre.input_size)
    images = natural_images(min(largest, UNIQUE_IMAGES), raw_size, pre.channels, seed=0)
    batch = pre(images)
    repeats = math.ceil(largest / len(batch))
    return batch.repeat(repeats, 1, 1, 1)[:largest].contiguous(), images[0]


def _input_dtype(backend: Any) -> torch.dtype:
    if backend.name == "tensorrt":
        return backend.dtypes[backend.input_name]
    return getattr(backend, "dtype", torch.float32)  # AOTInductor fp16 packages take float16


def _onnx_cuda_call(backend: OnnxBackend, x: torch.Tensor) -> Callable[[], Any]:
    """onnxruntime on the GPU through IO binding: the input stays in GPU memory, the logits come to the host."""
    binding = backend.session.io_binding()
    binding.bind_input(backend.input_name, "cuda", x.device.index or 0, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output(backend.output_name, "cuda", x.device.index or 0)

    def call() -> Any:
        backend.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu(), x  # x: keep the bound buffer alive

    return call


def forward_call(target: Target, batch: torch.Tensor) -> Callable[[], Any]:
    """One backend call on ``batch``, already on the backend's device in its input dtype; ends synchronised."""
    backend = target.backend
    x = batch.to(backend.device, _input_dtype(backend)).contiguous()
    if isinstance(backend, OnnxBackend) and backend.device == "cuda":
        return _onnx_cuda_call(backend, x)
    if backend.device != "cuda":
        return lambda: backend(x)

    def call() -> Any:
        out = backend(x)  # the backends return host tensors; synchronise anyway for streams they leave running
        torch.cuda.synchronize()
        return out

    return call


# ---------------------------------------------------------------- timing
def round_sizes(iters: int, rounds: int) -> list[int]:
    rounds = max(1, min(rounds, iters))
    return [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]


def time_interleaved(
    calls: dict[str, Callable[[], Any]], warmup: int, iters: int, rounds: int
) -> dict[str, list[float]]:
    """Per-call seconds of every call in ``calls``: warm-up, then rounds visiting them in rotating order."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    labels = list(calls)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    for index, size in enumerate(round_sizes(iters, rounds)):
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            call = calls[label]
            call()  # untimed: absorbs the switch from the previous backend
            for _ in range(size):
                start = time.perf_counter()
                call()
                samples[label].append(time.perf_counter() - start)
    return samples


def summarise(seconds: list[float], batch: int) -> dict[str, Any]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "throughput_ips": batch * len(ms) / float(ms.sum() / 1e3),
            "calls": len(ms)}  # fmt: skip


def add_ratios(rows: list[dict[str, Any]], baseline: str) -> None:
    """Latency and throughput ratios of every row to the baseline's row at the same batch size."""
    base = {row["batch"]: row for row in rows if row["backend"] == baseline and "p50_ms" in row}
    for row in rows:
        ref = base.get(row["batch"])
        if ref is None or "p50_ms" not in row:
            continue
        row["latency_ratio"] = row["p50_ms"] / ref["p50_ms"]
        row["p99_ratio"] = row["p99_ms"] / ref["p99_ms"]
        row["throughput_ratio"] = row["throughput_ips"] / ref["throughput_ips"]


def measure(targets: list[Target], batch: torch.Tensor, options: BenchOptions) -> list[dict[str, Any]]:
    """One row per backend and batch size (a ``skipped`` reason where the artifact cannot take it)."""
    rows = []
    for size in options.batches:
        calls, skipped = {}, {}
        for target in targets:
            limit = target.backend.max_batch
            if limit is not None and size > limit:
                skipped[target.label] = f"batch {size} exceeds the artifact's maximum batch {limit}"
            else:
                calls[target.label] = forward_call(target, batch[:size])
        samples = time_interleaved(calls, options.warmup, options.iters, options.rounds) if calls else {}
        for target in targets:
            if target.label in skipped:
                rows.append({"backend": target.label, "batch": size, "skipped": skipped[target.label]})
            else:
                rows.append({"backend": target.label, "batch": size, **summarise(samples[target.label], size)})
        del calls
        if options.device == "cuda":
            torch.cuda.empty_cache()
    add_ratios(rows, targets[0].label)
    return rows


def measure_detection(targets: list[Target], image: torch.Tensor, options: BenchOptions) -> list[dict[str, Any]]:
    """One row per detector backend: one image per call (float, on the backend's device) -> detections on the host."""
    x = image.float() / 255
    calls = {t.label: forward_call(t, x) for t in targets}
    samples = time_interleaved(calls, options.warmup, options.iters, options.rounds)
    rows = [{"backend": t.label, "batch": 1, **summarise(samples[t.label], 1)} for t in targets]
    add_ratios(rows, targets[0].label)
    return rows


def measure_predict(targets: list[Target], image: torch.Tensor, options: BenchOptions) -> list[dict[str, Any]]:
    """predict() end to end (raw uint8 image -> preprocessing -> backend -> top-k) at batch 1."""
    calls: dict[str, Callable[[], Any]] = {t.label: partial(t.predictor.predict, image) for t in targets}
    samples = time_interleaved(calls, max(1, options.warmup // 2), options.iters, options.rounds)
    rows = [{"backend": label, "batch": 1, **summarise(seconds, 1)} for label, seconds in samples.items()]
    add_ratios(rows, targets[0].label)
    return rows


# ---------------------------------------------------------------- goals
def goal_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's deployment goals, where this run measured what they need."""
    rows, backends = report["results"], {b["label"]: b for b in report["backends"]}
    checks: list[dict[str, Any]] = []
    if report["task"] != "classification":  # the goals are the classifier's (ResNet-50)
        return checks
    if report["device"] == "cpu":
        for row in rows:
            fp32_onnx = (
                backends[row["backend"]]["backend"] == "onnx" and backends[row["backend"]]["precision"] == "fp32"
            )
            if fp32_onnx and row["batch"] == CPU_GOAL["batch"] and "latency_ratio" in row:
                ratio = row["latency_ratio"]
                goal = f"cpu: onnxruntime fp32 batch-1 p50 latency <= {CPU_GOAL['max_latency_ratio']}x eager"
                checks.append({"goal": goal, "backend": row["backend"], "measured": ratio,
                               "passed": ratio <= CPU_GOAL["max_latency_ratio"]})  # fmt: skip
        int8 = [row for row in rows if backends[row["backend"]]["precision"] == "int8" and "latency_ratio" in row]
        latency, throughput = CPU_INT8_GOALS["latency"], CPU_INT8_GOALS["throughput"]
        at_one = [row for row in int8 if row["batch"] == latency["batch"]]
        if at_one:
            best = min(at_one, key=lambda row: row["latency_ratio"])
            checks.append({"goal": f"cpu: best int8 batch-{latency['batch']} p50 latency <= {latency['max_ratio']}x "
                                   "eager fp32",
                           "backend": best["backend"], "measured": best["latency_ratio"],
                           "passed": best["latency_ratio"] <= latency["max_ratio"]})  # fmt: skip
        at_many = [row for row in int8 if row["batch"] == throughput["batch"]]
        if at_many:
            best = max(at_many, key=lambda row: row["throughput_ratio"])
            checks.append({"goal": f"cpu: best int8 batch-{throughput['batch']} throughput "
                                   f">= {throughput['min_ratio']}x "
                                   "eager fp32",
                           "backend": best["backend"], "measured": best["throughput_ratio"],
                           "passed": best["throughput_ratio"] >= throughput["min_ratio"]})  # fmt: skip
    elif any(row["batch"] == GPU_GOAL["batch"] for row in rows):
        fp16 = [row for row in rows if row["batch"] == GPU_GOAL["batch"] and "throughput_ratio" in row
                and backends[row["backend"]]["precision"] == "fp16"]  # fmt: skip
        goal = f"cuda: best fp16 batch-{GPU_GOAL['batch']} throughput >= {GPU_GOAL['min_throughput_ratio']}x eager fp32"
        if fp16:
            best = max(fp16, key=lambda row: row["throughput_ratio"])
            checks.append({"goal": goal, "backend": best["backend"], "measured": best["throughput_ratio"],
                           "passed": best["throughput_ratio"] >= GPU_GOAL["min_throughput_ratio"]})  # fmt: skip
        else:
            checks.append({"goal": goal, "backend": None, "measured": None, "passed": False,
                           "detail": f"no fp16 backend measured at batch {GPU_GOAL['batch']}"})  # fmt: skip
    return checks


# ---------------------------------------------------------------- the run
def _environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(),
                           **{k: v for k, v in tool_versions().items() if k != "python"},
                           "platform": platform.platform(), "cpu": _cpu_name(), "cpu_isa": cpu_description(),
                           "cpu_count": os.cpu_count(),
                           "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}  # fmt: skip
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)  # fmt: skip
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _warn_if_busy() -> None:
    if not hasattr(os, "getloadavg"):
        return
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        print(f"warning: the machine is busy (1-minute load {load:.1f} on {cores} cores); timings will be noisy "
              "and unfair to whoever shares the cores worst", file=sys.stderr)  # fmt: skip


def _check_options(options: BenchOptions) -> None:
    if not options.artifacts and not options.eager:
        raise BenchError("nothing to benchmark: give artifact paths and/or --eager ARCH[:WEIGHTS]")
    if not options.batches or any(b < 1 for b in options.batches):
        raise BenchError(f"--batch needs positive batch sizes, got {options.batches}")
    if options.iters < 1 or options.warmup < 0 or options.rounds < 1:
        raise BenchError("--iters and --rounds must be at least 1, --warmup at least 0")
    if options.threads is not None and options.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {options.threads}")
    if options.device not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda, got {options.device!r}")
    if options.providers is not None and options.device != "cuda":
        raise BenchError("--providers chooses onnxruntime's execution providers on --device cuda; on the CPU "
                         "onnxruntime runs its CPUExecutionProvider")  # fmt: skip
    if options.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda asked for, and torch.cuda.is_available() is False here")


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Load every target, time them side by side, and return the report (see :func:`write_json`)."""
    _check_options(options)
    threads = options.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if options.device == "cuda":
        torch.backends.cudnn.benchmark = True  # eager at its best: cuDNN picks its fastest kernels per shape
    _warn_if_busy()
    environment = _environment(options.device)
    targets = load_targets(options, threads)
    task = targets[0].predictor.task
    geometry = input_geometry(targets)
    started = time.perf_counter()
    if task == "detection":
        image = detection_image(targets[0])
        shape, batches = list(image.shape), [1]
        timed = "backend call on one float image on the backend's device -> boxes, labels, scores on the host"
        results = measure_detection(targets, image, options)
    else:
        batch, image = synthetic_inputs(targets[0], max(options.batches))
        shape, batches = [geometry[0], geometry[1], geometry[1]], options.batches
        timed = "backend call on a ready batch on the backend's device -> logits on the host"
        results = measure(targets, batch, options)
    predict_rows = measure_predict(targets, image, options) if options.predict else []
    if hasattr(os, "getloadavg"):
        environment["loadavg_end"] = list(os.getloadavg())
    report = {
        "format": REPORT_FORMAT, "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": options.command,
        "device": options.device, "task": task,
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    "onnxruntime_intra_op": threads, "openvino": threads},
        "settings": {"batches": batches, "warmup": options.warmup, "iters": options.iters,
                     "rounds": len(round_sizes(options.iters, options.rounds)), "input": shape, "timed": timed,
                     "input_data": "synthetic natural-looking images through the artifacts' preprocessing"},
        "environment": environment,
        "baseline": targets[0].label,
        "backends": [t.describe() for t in targets],
        "results": results,
        "predict": predict_rows,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    report["goals"] = goal_checks(report)
    return report


# ---------------------------------------------------------------- output
def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(report: dict[str, Any]) -> str:
    threads = report["threads"]
    lines = [f"device {report['device']}, torch threads {threads['torch_intra_op']} "
             f"(inter-op {threads['torch_inter_op']}), "
             f"onnxruntime / OpenVINO threads {threads['onnxruntime_intra_op']}; "
             f"CPU {report['environment'].get('cpu_isa')}; "
             f"input {report['settings']['input']}; "
             f"{report['settings']['iters']} timed calls per cell in "
             f"{report['settings']['rounds']} interleaved rounds; "
             f"baseline {report['baseline']}",
             f"{'batch':>5}  {'backend':<24} {'p50 ms':>9} {'p99 ms':>9} {'images/s':>10} {'p50/eager':>10} "
             f"{'img/s/eager':>12}"]  # fmt: skip
    for row in report["results"]:
        if "skipped" in row:
            lines.append(f"{row['batch']:>5}  {row['backend']:<24} skipped: {row['skipped']}")
            continue
        lines.append(f"{row['batch']:>5}  {row['backend']:<24} {row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f} "
                     f"{row['throughput_ips']:>10.1f} {_ratio(row.get('latency_ratio')):>10} "
                     f"{_ratio(row.get('throughput_ratio')):>12}")  # fmt: skip
    if report["predict"]:
        output = "top-k" if report.get("task", "classification") == "classification" else "detections"
        lines.append(f"predict() end to end, batch 1 (raw uint8 image -> preprocessing -> backend -> {output}):")
        for row in report["predict"]:
            lines.append(f"{1:>5}  {row['backend']:<24} {row['p50_ms']:>9.3f} {row['p99_ms']:>9.3f} "
                         f"{row['throughput_ips']:>10.1f} {_ratio(row.get('latency_ratio')):>10}")  # fmt: skip
    for check in report["goals"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        measured = "n/a" if check["measured"] is None else f"{check['measured']:.3f}x"
        lines.append(
            f"goal {check['goal']}: {check['backend']} {measured} -> {verdict} {check.get('detail', '')}".rstrip()
        )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    atomic_write_json(path, report)


def write_png(report: dict[str, Any], path: str | Path) -> None:
    """Grouped bars per batch size: p50 latency (p99 whiskers) and throughput, ratios to eager on top."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no GUI backend (renders with Agg)
    from matplotlib.ticker import LogFormatter

    labels = [b["label"] for b in report["backends"]]
    batches = report["settings"]["batches"]
    cells = {(r["backend"], r["batch"]): r for r in report["results"] if "p50_ms" in r}
    figure = Figure(figsize=(max(8.0, 2.2 * len(batches) + 4), 4.6), layout="constrained")
    axes = figure.subplots(1, 2)
    width = 0.8 / len(labels)
    panels = (("p50_ms", "latency_ratio", "p50 latency, ms (whisker: p99, log scale)"),
              ("throughput_ips", "throughput_ratio", "throughput, images/s"))  # fmt: skip
    for ax, (key, ratio_key, title) in zip(axes, panels):
        for index, label in enumerate(labels):
            xs = [b + (index - (len(labels) - 1) / 2) * width for b in range(len(batches))]
            rows = [cells.get((label, b)) for b in batches]
            values = [r[key] if r else math.nan for r in rows]
            whiskers = None
            if key == "p50_ms":
                whiskers = [[0.0] * len(rows), [(r["p99_ms"] - r["p50_ms"]) if r else 0.0 for r in rows]]
            bars = ax.bar(xs, values, width, label=label, yerr=whiskers, capsize=2)
            if label != report["baseline"]:
                texts = [f"{r[ratio_key]:.2f}x" if r and ratio_key in r else "" for r in rows]
                ax.bar_label(bars, texts, fontsize=7, padding=2)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        if key == "p50_ms":  # latency spans orders of magnitude across batch sizes
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    arch = report["backends"][0]["arch"]
    figure.suptitle(f"{arch} on {report['device']} "
                    f"({report['environment'].get('gpu') or report['environment']['cpu']}), "
                    f"{report['threads']['torch_intra_op']} thread(s); ratios vs {report['baseline']}",
                    fontsize=10)  # fmt: skip
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


# ---------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,8,32, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.bench", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("artifacts", nargs="*", type=Path, help="exported artifacts (with their .json sidecars)")
    parser.add_argument(
        "--eager",
        metavar="ARCH[:WEIGHTS]",
        help="PyTorch eager baseline (no weights: random init); for detectors the detection.train run directory",
    )
    parser.add_argument("--batch", type=_int_list, default=[1, 8, 32], help="batch sizes (default 1,8,32)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where every backend runs (default: cpu)"
    )
    parser.add_argument("--threads", type=POSITIVE_INT, help="torch, onnxruntime and OpenVINO intra-op threads "
                        "(default: torch's current)")  # fmt: skip
    parser.add_argument("--warmup", type=COUNT, default=5, help="untimed calls per backend and batch size")
    parser.add_argument("--iters", type=POSITIVE_INT, default=30, help="timed calls per backend and batch size")
    parser.add_argument(
        "--rounds", type=POSITIVE_INT, default=5, help="interleaved rounds the timed calls are split into"
    )
    parser.add_argument("--providers", help="onnxruntime execution providers on cuda, comma-separated")
    parser.add_argument("--no-predict", action="store_true", help="skip the end-to-end predict() timing")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--png", type=Path, help="write a bar chart here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = BenchOptions(list(args.artifacts), args.eager, args.batch, args.device, args.threads, args.warmup,
                           args.iters, args.rounds, args.providers.split(",") if args.providers else None,
                           not args.no_predict,
                           "python -m deploy.bench "
                           + shlex.join(sys.argv[1:] if argv is None else list(argv)))  # fmt: skip
    try:
        report = run_bench(options)
    except (
        BenchError,
        SidecarError,
        FileNotFoundError,
        ArtifactLoadError,
        TensorRTUnavailable,
        EngineCompatibilityError,
        ValueError,
    ) as error:  # ValueError: e.g. an AOTInductor package for another device
        raise SystemExit(f"error: {error}") from None
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.png:
        write_png(report, args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
