"""The one training engine, shared by classification (``backbones.train``) and detection.

A task supplies a ``step_fn(model, batch) -> {"loss": tensor, other scalars...}`` and optionally an
``evaluate_fn(model) -> {metric: float}``; the engine owns everything else: the iteration loop over a
BatchSource (``len``, ``batches(epoch, start)``, ``skipped``), the learning-rate schedule, AMP,
channels_last, torch.compile, DistributedDataParallel, atomic checkpoints with exact resume, the
progress bar, JSON-lines and TensorBoard logs, and the training-curve picture.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn

from .cpu_memory import cpu_allocator, keep_freed_memory
from .distributed import DistContext, all_reduce_sum, barrier
from .fileio import atomic_path, atomic_write_text
from .schedule import LRSchedule
from .stopping import StopRequests, TrainingStopped

log = logging.getLogger("backbones.engine")

CHECKPOINT_FORMAT = "backbones-checkpoint"
CHECKPOINT_VERSION = 1
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

StepFn = Callable[[nn.Module, Any], dict[str, torch.Tensor]]
EvalFn = Callable[[nn.Module], dict[str, float]]


def cpu_description() -> str:
    """The CPU's vector ISA as PyTorch dispatches to it, plus the int8 (VNNI) and bf16 units when present:
    e.g. 'AVX2' or 'AVX512 + VNNI + AVX512-BF16 + AMX'. Logged with every run segment and benchmark."""
    parts = [torch.backends.cpu.get_cpu_capability()]
    if _cpu_flag("_is_vnni_supported"):
        parts.append("VNNI")
    if _cpu_flag("_is_avx512_bf16_supported"):
        parts.append("AVX512-BF16")
    if _cpu_flag("_is_amx_tile_supported"):
        parts.append("AMX")
    return " + ".join(parts)


def cpu_has_native_bf16() -> bool:
    return _cpu_flag("_is_avx512_bf16_supported") or _cpu_flag("_is_amx_tile_supported")


def _cpu_flag(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private probes; absent in some releases -> unknown = False
    return bool(probe()) if callable(probe) else False


def amp_warning(device: torch.device, amp: str, native_bf16: bool | None = None) -> str | None:
    """Why the requested mixed precision will be slow here, or None. bf16 autocast on a CPU without
    AVX512-BF16 or AMX falls back to emulation: benchmarks/train_throughput.py measured the plain-56
    training step 12x slower than fp32 on an AVX2 EPYC, while AMX CPUs run it about 2x faster."""
    if device.type != "cpu" or amp != "bf16":
        return None
    if native_bf16 is None:
        native_bf16 = cpu_has_native_bf16()
    if native_bf16:
        return None
    return (f"--amp bf16 on this CPU ({cpu_description()}: no AVX512-BF16 or AMX) is emulated and "
            "usually several times slower than fp32; use --amp none here")  # fmt: skip


class BatchSource(Protocol):
    skipped: int

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterable[Any]: ...


@dataclass
class EngineConfig:
    output_dir: Path
    max_iters: int
    log_every: int = 50
    eval_every: int = 0  # iterations between evaluations; 0 = once per epoch
    checkpoint_every: int = 1000
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    progress: bool = True
    images_per_batch: int = 0  # for the images/s figure; 0 = read from the batch
    monitor: str = "top1_err"  # evaluation metric (lower is better) that the plateau schedule watches

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {list(AMP_DTYPES)}, got {self.amp!r}")
        if self.max_iters < 1 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("max_iters, log_every and checkpoint_every must be positive")


CHECKPOINT_NAME = "checkpoint.pt"
# Run-config keys a resumed run may change: where the data lives, how many processes share the global
# batch, how often it evaluates, and how it executes (EngineConfig: logging, compile, channels_last, and
# the autocast precision, which must follow the hardware: a run started in bf16 on a CPU with bf16 units
# would crawl at ~0.08x on one that emulates it). Each start's settings are a 'segment' record in
# metrics.jsonl. Everything else is the recipe, and a resumed run must keep it to stay the same run.
FREE_ON_RESUME = frozenset({"engine", "world_size", "data", "data_root", "eval_every", "amp"})
# Run-config keys added after runs were already checkpointed, with the value an older run trained with:
# a checkpoint without the key resumes only where the current value equals it.
KEYS_ADDED_LATER: dict[str, Any] = {
    "random_erasing": 0.0,
    "erasing_fill": None,
    "native_size": False,
    "label_smoothing": 0.0,
}


def refuse_finished_or_running(output_dir: Path) -> None:
    """A fresh run must not overwrite another run's checkpoint (or its config.json: call this first)."""
    checkpoint = Path(output_dir) / CHECKPOINT_NAME
    if checkpoint.exists():
        raise FileExistsError(f"{checkpoint} exists: pass --resume to continue that run, or choose another --output")


def format_metrics(metrics: dict[str, float]) -> str:
    """``loss 0.1310, error 0.0463, lr 0.01, epoch 58.3, 875 img/s`` for a log line."""
    parts = []
    for key, value in metrics.items():
        if key == "images_per_s":
            parts.append(f"{value:.0f} img/s")
        elif isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4g}")
    return ", ".join(parts)


def format_duration(seconds: float) -> str:
    """``2h05m``, ``4m10s`` or ``12s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def metric_records(path: str | Path) -> list[tuple[int, str, dict[str, Any]]]:
    """(line number, line, record) of each readable record of a metrics.jsonl; a torn line (a crash mid-write,
    or the line a running run is writing) is dropped with a warning."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s, line %d: not a JSON record (torn by a crash?); dropped", path, number)
            continue
        if isinstance(record, dict):
            records.append((number, line, record))
    return records


def run_segments(metrics_path: str | Path) -> list[dict[str, Any]]:
    """How a run was executed, stretch by stretch, from the ``segment`` records of its metrics.jsonl:
    ``[{"from_iteration": 0, "amp": "none", "compile": False, "device": "cpu", "cpu": "AVX2", "world_size": 1,
    "threads": 1}, {"from_iteration": 11000, "amp": "bf16", ...}]``. A resume that changed none of these continues
    the stretch; a resume that failed before its first checkpoint is replaced by the next one from the same
    iteration. ``threads`` (intra-op threads per process) is None for records older than it. Empty when the file
    is missing or has no segment records (runs older than them)."""
    path = Path(metrics_path)
    if not path.is_file():
        return []
    segments: list[dict[str, Any]] = []
    for _, _, record in metric_records(path):
        if record.get("kind") != "segment":
            continue
        engine = record.get("engine", {})
        how = {"amp": engine.get("amp"), "compile": engine.get("compile"), "device": record.get("device"),
               "cpu": record.get("cpu"), "world_size": record.get("world_size"),
               "threads": record.get("threads")}  # fmt: skip
        iteration = int(record.get("iteration", 0))
        if segments and segments[-1]["from_iteration"] == iteration:
            segments.pop()  # that start trained nothing
        if not segments or {k: v for k, v in segments[-1].items() if k != "from_iteration"} != how:
            segments.append({"from_iteration": iteration, **how})
    return segments


def describe_amp(segments: list[dict[str, Any]], configured: str) -> str:
    """The precision a run trained in, for a zoo record: ``bf16``, or ``none to iteration 11000, then bf16``
    when a resume changed it. ``configured`` (the first start's, from config.json) covers what no segment
    record does: all of a run older than them, or its start when they begin later."""
    changes: list[tuple[int, str]] = []
    if segments and segments[0]["from_iteration"] > 0:
        changes.append((0, configured))
    for segment in segments:
        if not changes or segment["amp"] != changes[-1][1]:
            changes.append((segment["from_iteration"], segment["amp"]))
    if len(changes) <= 1:
        return changes[0][1] if changes else configured
    text = changes[0][1]
    for iteration, amp in changes[1:]:
        text += f" to iteration {iteration}, then {amp}"
    return text


def recipe_and_segments(run_dir: str | Path, config: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A zoo record's ``recipe`` (``keys`` of the run's config.json, ``amp`` as the run really trained) and
    ``segments`` (how each stretch ran), for backbone and detector records alike."""
    segments = run_segments(Path(run_dir) / "metrics.jsonl")
    recipe = {key: config.get(key, KEYS_ADDED_LATER.get(key)) for key in keys}  # a key older runs lack: their value
    recipe["amp"] = describe_amp(segments, config.get("amp", "none"))
    return {"recipe": recipe, "segments": segments}


class CheckpointError(ValueError):
    pass


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=True)  # numpy's stub types the default (legacy=True) call as the dict form
    assert isinstance(np_state, tuple)  # the legacy form of the global MT19937 RandomState is always a tuple
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *(float(v) for v in np_state[2:])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate an engine checkpoint; truncated or foreign files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged zip/pickle data
        raise CheckpointError(f"{path} ({path.stat().st_size} bytes) cannot be read, truncated or corrupt? "
                              f"({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None  # fmt: skip
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a training checkpoint of this project (found {found}); "
                              "a plain state dict can be used as weights, not resumed")  # fmt: skip
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')} is not supported (expected {CHECKPOINT_VERSION})"
        )
    return state


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        train_source: BatchSource,
        step_fn: StepFn,
        config: EngineConfig,
        *,
        evaluate_fn: EvalFn | None = None,
        ctx: DistContext | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.ctx = ctx or DistContext()
        self.config = config
        self.model = model.to(self.ctx.device)  # the plain module: what checkpoints and weights hold
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.schedule = schedule
        self.source = train_source
        self.step_fn = step_fn
        self.evaluate_fn = evaluate_fn
        self.run_config = run_config or {}
        self.iteration = 0
        self.meter_sums: dict[str, torch.Tensor] = {}  # name -> batch-size-weighted sum, on the device
        self.meter_count = 0  # images in the current log window (this process)
        self.samples_seen = 0
        self.last_eval: dict[str, float] = {}
        self.last_eval_iteration = -1  # the iteration last_eval was measured at (-1: none)
        self.train_model = self._wrap(self.model)
        amp_dtype = AMP_DTYPES[config.amp]
        self.autocast = (
            torch.autocast(self.ctx.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        )
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=config.amp == "fp16")
        warning = amp_warning(self.ctx.device, config.amp)
        if warning and self.ctx.is_main:
            log.warning(warning)
        if self.ctx.device.type == "cpu" and keep_freed_memory() and self.ctx.is_main:
            log.info("CPU memory: %s malloc (keeps freed memory in the process; benchmarks/cpu_allocator.py)",
                     cpu_allocator())  # fmt: skip
        self.checkpoint_path = config.output_dir / CHECKPOINT_NAME
        self.metrics_path = config.output_dir / "metrics.jsonl"

    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.ctx.enabled:
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.config.compile:
            wrapped = cast(nn.Module, torch.compile(wrapped))  # an OptimizedModule; typed as a plain Callable
        return wrapped

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "iteration": self.iteration,
            "samples_seen": self.samples_seen,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "meters": {"sums": {k: float(v) for k, v in self.meter_sums.items()}, "count": self.meter_count},
            "last_eval": dict(self.last_eval),
            "last_eval_iteration": self.last_eval_iteration,
            "rng": _rng_state(),
            "run_config": json.dumps(self.run_config, sort_keys=True, default=str),
        }

    def save_checkpoint(self) -> None:
        if self.ctx.is_main:
            with atomic_path(self.checkpoint_path) as tmp:
                torch.save(self.state_dict(), tmp)
        barrier(self.ctx)

    def load_checkpoint(self, path: str | Path) -> None:
        state = read_checkpoint(path)
        saved = json.loads(state["run_config"])
        current = json.loads(json.dumps(self.run_config, default=str))  # the form it was saved in
        saved = {**{k: v for k, v in KEYS_ADDED_LATER.items() if k in current}, **saved}
        changed = [key for key in sorted(set(saved) & set(current))
                   if key not in FREE_ON_RESUME and saved[key] != current[key]]  # fmt: skip
        if changed:
            differences = "; ".join(f"{key}: {saved[key]!r} in the checkpoint, {current[key]!r} now" for key in changed)
            raise CheckpointError(f"{path} was written by a run with another recipe ({differences}). Resume with the "
                                  "same settings (see the run's config.json), "
                                  "or start a new run with --output")  # fmt: skip
        if self.ctx.is_main and saved.get("amp", current.get("amp")) != current.get("amp"):
            log.info(
                "resuming with amp %s; iterations up to %s ran with amp %s (each segment is recorded in "
                "metrics.jsonl and in a zoo record)",
                current.get("amp"),
                state["iteration"],
                saved.get("amp"),
            )
        from .weights import check_state_dict

        check_state_dict(self.model, state["model"], str(path))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state["scaler"]:  # empty unless the checkpoint trained in fp16; a switch to fp16 starts a fresh scale
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.samples_seen = int(state["samples_seen"])
        self.meter_sums = {k: torch.tensor(v, dtype=torch.float64, device=self.ctx.device)
                           for k, v in state["meters"]["sums"].items()}  # fmt: skip
        self.meter_count = int(state["meters"]["count"])
        self.last_eval = dict(state["last_eval"])
        self.last_eval_iteration = int(state.get("last_eval_iteration", -1))
        _set_rng_state(state["rng"])

    # ------------------------------------------------------------------ logging
    def _open_logs(self, resumed: bool) -> None:
        self.tb = None
        if not self.ctx.is_main:
            return
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        if resumed and self.metrics_path.exists():  # drop records the resumed run will write again
            kept = [line for _, line, record in metric_records(self.metrics_path)
                    if record.get("iteration", 0) <= self.iteration]  # fmt: skip
            atomic_write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.config.output_dir / "tensorboard"), purge_step=self.iteration or None)
        except ImportError:  # tensorboard is a dependency, but logging must never stop training
            log.warning("tensorboard is not installed; writing JSON-lines metrics only")

    def _append_record(self, kind: str, values: dict[str, Any]) -> None:
        record = {"kind": kind, "iteration": self.iteration, "time": round(time.time(), 3), **values}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _record_segment(self, resumed: bool) -> None:
        """One ``segment`` record per start or resume: config.json keeps the first start's engine
        settings, so this is where a long run shows how each of its parts was run."""
        if self.ctx.is_main:
            self._append_record("segment", {"resumed": resumed, "world_size": self.ctx.world_size,
                                             "device": str(self.ctx.device), "cpu": cpu_description(),
                                             "allocator": cpu_allocator(), "threads": torch.get_num_threads(),
                                             "torch": torch.__version__,
                                             "engine": engine_config_dict(self.config)})  # fmt: skip

    def record(self, kind: str, values: dict[str, float]) -> None:
        """Append a record to metrics.jsonl (and its scalars to TensorBoard) at the current iteration: the
        engine's own kinds are train, eval, segment, data and stop; a task may add its own (``test``)."""
        if not self.ctx.is_main:
            return
        self._append_record(kind, values)
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"{kind}/{key}", value, self.iteration)

    def _accumulate(self, outputs: dict[str, torch.Tensor], batch_size: int) -> None:
        """Running sums stay on the device: no host synchronisation in the training step."""
        for key, value in outputs.items():
            weighted = value.detach().to(torch.float64) * batch_size
            self.meter_sums[key] = self.meter_sums[key] + weighted if key in self.meter_sums else weighted
        self.meter_count += batch_size

    def _flush_meters(self) -> dict[str, float]:
        """Window averages over all processes; one synchronisation per log interval."""
        if not self.meter_sums:
            return {}
        names = sorted(self.meter_sums)
        sums = torch.stack([self.meter_sums[n].to(self.ctx.device) for n in names])
        count = torch.tensor([float(self.meter_count)], dtype=torch.float64, device=self.ctx.device)
        totals = all_reduce_sum(torch.cat([sums, count]), self.ctx).cpu()
        self.meter_sums, self.meter_count = {}, 0
        averages = {name: totals[i].item() / max(totals[-1].item(), 1) for i, name in enumerate(names)}
        if not math.isfinite(averages.get("loss", 0.0)):
            raise FloatingPointError(f"training loss became {averages['loss']} before iteration {self.iteration}; "
                                     "lower --lr or check the data")  # fmt: skip
        return averages

    def run_evaluation(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self.autocast:
            metrics = self.evaluate_fn(self.model)
        self.model.train()
        self.last_eval, self.last_eval_iteration = dict(metrics), self.iteration
        self.record("eval", metrics)
        if self.ctx.is_main:
            log.info("iteration %d: evaluation: %s", self.iteration, format_metrics(metrics))
        if self.config.monitor in metrics:  # lower is better
            self.schedule.observe_validation(metrics[self.config.monitor])
        return metrics

    # ------------------------------------------------------------------ the loop
    def _loop(self, progress: Any, batches_per_epoch: int, eval_every: int, stop: StopRequests) -> None:
        config = self.config
        self.model.train()
        window_start, window_samples, window_start_iteration = time.perf_counter(), 0, self.iteration
        while self.iteration < config.max_iters:
            epoch, start = divmod(self.iteration, batches_per_epoch)
            for batch in self.source.batches(epoch, start):
                lr = self.schedule.lr(self.iteration)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch_size = self._train_step(batch)
                self.iteration += 1
                self.samples_seen += batch_size * self.ctx.world_size
                window_samples += batch_size * self.ctx.world_size
                if progress is not None:
                    progress.update(1)
                if self.iteration % config.log_every == 0 or self.iteration == config.max_iters:
                    metrics = self._flush_meters()
                    elapsed = time.perf_counter() - window_start
                    metrics.update(lr=lr, epoch=self.iteration / batches_per_epoch,
                                   images_per_s=window_samples / max(elapsed, 1e-9))  # fmt: skip
                    if "error" in metrics:
                        self.schedule.observe_train_error(self.iteration, metrics["error"])
                    self.record("train", metrics)
                    if progress is not None:
                        progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.3f}", lr=f"{lr:.3g}",
                                             img_s=f"{metrics['images_per_s']:.0f}", refresh=False)  # fmt: skip
                    elif self.ctx.is_main:  # background runs: the log file is the progress report
                        seconds_per_iteration = elapsed / (self.iteration - window_start_iteration)
                        eta = format_duration(seconds_per_iteration * (config.max_iters - self.iteration))
                        log.info("iteration %d/%d: %s, ETA %s", self.iteration, config.max_iters,
                                 format_metrics(metrics), eta)  # fmt: skip
                    window_start, window_samples = time.perf_counter(), 0
                    window_start_iteration = self.iteration
                final = self.iteration == config.max_iters
                if (
                    final and self.evaluate_fn is not None
                ):  # the finished training is on disk before the final evaluation
                    self.save_checkpoint()
                if self.iteration % eval_every == 0 or final:
                    self.run_evaluation()
                if self.iteration % config.checkpoint_every == 0 or final:
                    self.save_checkpoint()
                if self.iteration >= config.max_iters:
                    break
                if self._stop_requested(stop):
                    self._stop(stop)
            if self.source.skipped:
                log.warning("epoch %d: %d unreadable image(s) skipped", epoch, self.source.skipped)
                self.record("data", {"skipped_images": self.source.skipped, "epoch": epoch})

    def fit(self, resume: bool = False) -> dict[str, float]:
        config = self.config
        if resume:
            self.load_checkpoint(self.checkpoint_path)
            log.info("resumed from %s at iteration %d", self.checkpoint_path, self.iteration)
        else:
            refuse_finished_or_running(self.config.output_dir)
        self._open_logs(resumed=resume)
        self._record_segment(resumed=resume)
        batches_per_epoch = len(self.source)
        if batches_per_epoch == 0:
            raise ValueError("the training data yields no batches (fewer images than one batch?)")
        eval_every = config.eval_every or batches_per_epoch
        progress = None
        if config.progress and self.ctx.is_main:
            from tqdm import tqdm

            progress = tqdm(total=config.max_iters, initial=self.iteration, unit="it", dynamic_ncols=True)
        try:
            with StopRequests() as stop:
                if progress is None:
                    self._loop(None, batches_per_epoch, eval_every, stop)
                else:  # log lines (evaluations, warnings) print above the bar instead of breaking it
                    from tqdm.contrib.logging import logging_redirect_tqdm

                    with progress, logging_redirect_tqdm(loggers=[logging.getLogger()]):
                        self._loop(progress, batches_per_epoch, eval_every, stop)
            if self.evaluate_fn is not None and self.last_eval_iteration != self.iteration:
                # resumed after the final evaluation failed or was interrupted: run it now
                self.run_evaluation()
                self.save_checkpoint()
        finally:
            if self.tb is not None:
                self.tb.close()
                self.tb = None  # records after fit (a task's test record) go to metrics.jsonl only
        return dict(self.last_eval)

    def _stop_requested(self, stop: StopRequests) -> bool:
        """Whether to stop now. Several processes agree first (all of them or none), at log boundaries only:
        each one may get the signal at another iteration, and a checkpoint needs all of them."""
        requested = stop.received is not None
        if not self.ctx.enabled:
            return requested
        if self.iteration % self.config.log_every:
            return False
        flags = all_reduce_sum(torch.tensor([float(requested)], device=self.ctx.device), self.ctx)
        return bool(flags.item() > 0)

    def _stop(self, stop: StopRequests) -> None:
        if self.iteration % self.config.checkpoint_every:  # not just written
            self.save_checkpoint()
        name = stop.received.name if stop.received is not None else "a signal to another process"
        if self.ctx.is_main:
            self._append_record("stop", {"signal": name})
        raise TrainingStopped(name, self.iteration, self.checkpoint_path)

    def _train_step(self, batch: Any) -> int:
        batch = move_to(batch, self.ctx.device, self.config.channels_last)
        with self.autocast:
            outputs = self.step_fn(self.train_model, batch)
        loss = outputs["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        batch_size = self.config.images_per_batch or _batch_length(batch)
        self._accumulate(outputs, batch_size)
        return batch_size


def _batch_length(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first)


def move_to(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors (nested in lists, tuples, dicts) to ``device``; 4-D float tensors to channels_last."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(item, device, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: move_to(value, device, channels_last) for key, value in batch.items()}
    return batch


def engine_config_dict(config: EngineConfig) -> dict[str, Any]:
    data = asdict(config)
    data["output_dir"] = str(config.output_dir)
    return data
