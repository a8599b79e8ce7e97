"""What every exporter shares: its options, its result, its error, and the last step that moves a
checked artifact into place. Classifier and detector exporters import this; nothing here imports them."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones.fileio import atomic_path

from ..sidecar import write_sidecar

FORMATS = ("onnx", "openvino", "tensorrt", "aoti", "eager")
SUFFIXES = {"onnx": (".onnx",), "openvino": (".xml",), "tensorrt": (".engine", ".plan"), "aoti": (".pt2",),
            "eager": (".safetensors",)}  # fmt: skip
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_SCHEMES = ("symmetric", "asymmetric")
OPENVINO_INT8 = ("qdq", "nncf")
DEFAULT_MAX_ACCURACY_DROP = 0.5  # percentage points of top-1 accuracy (classifiers) or mAP (detectors)


class ExportError(RuntimeError):
    """An export that failed its check; nothing was written."""


@dataclass
class ExportOptions:
    format: str = "onnx"
    precision: str = "fp32"
    dynamic_hw: bool = False
    opset: int = 17
    device: str | None = None  # aoti: cpu (default) or cuda
    tolerance: float | None = None  # synthetic-image parity; default by precision
    top_k: int = 5
    opt_batch: int = 8  # tensorrt profile
    max_batch: int = 32
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # default <output>.timing.cache
    command: str | None = None
    # reduced precision (deploy.exporters.precision): calibration data and the check on real images
    calibration_dir: Path | None = None  # int8: representative images, any layout, searched recursively
    calibration_dataset: str | None = None  # int8: a dataset the trainer knows (training split only)
    calibration_images: int = 512
    calibration_method: str = "percentile"
    int8_scheme: str = "symmetric"  # symmetric: zero points 0 (TensorRT); asymmetric: uint8 activations
    int8_reduce_range: bool = False  # 7-bit weights: no int16 saturation in u8 x s8 kernels of CPUs without VNNI
    openvino_int8: str = "qdq"  # openvino int8: from the checked Q/DQ graph, or NNCF on the IR
    eval_dataset: str | None = None  # labelled held-out images: a dataset name (its test split) or a class-folder tree
    eval_images: int | None = None  # at most this many of them (default: all)
    data_root: Path | None = None  # where --calibration-dataset / --eval-dataset live (default: their usual place)
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    bf16: bool = False  # openvino fp32 IR run with the bf16 inference hint (an explicit, recorded choice)
    # detectors (deploy.exporters.detector): a detection.train run directory as weights
    detector: str | None = None  # "c4" or "fpn": export the run's Faster R-CNN
    score_thresh: float | None = None  # default: the detector's own (torchvision: 0.05)
    detections_per_image: int | None = None  # default: the detector's own (torchvision: 100)
    max_image_side: int = 2048  # detector TensorRT engines: largest height or width of the profile


DETECTOR_ONLY = ("score_thresh", "detections_per_image")


@dataclass
class ExportResult:
    artifact: Path
    sidecar: Path
    parity: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, Any] | None = None  # the reduced-precision check on real images, where one ran


@contextmanager
def exporter_failures(label: str, fmt: str, *passthrough: type[BaseException]) -> Iterator[None]:
    """Turn the exporter's own failure into an ExportError that says which step failed (cause chained);
    ExportError and the ``passthrough`` types already say what is wrong and pass unchanged."""
    try:
        yield
    except ExportError:
        raise
    except passthrough:
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise ExportError(f"{label}: the {fmt} export itself failed ({type(error).__name__}: {first})") from error


def check_output_suffix(output: Path, fmt: str, what: str = "") -> None:
    if output.suffix not in SUFFIXES[fmt]:
        raise ValueError(f"{output}: a {what}{fmt} artifact must end in {' or '.join(SUFFIXES[fmt])}")


def install_artifact(staged: Path, output: Path) -> None:
    """Move a checked artifact into place atomically, with the usual permissions (some writers make 0600 files)."""
    with atomic_path(output) as tmp:
        shutil.copymode(tmp, staged)
        os.replace(staged, tmp)


def companion_files(staged: Path) -> list[Path]:
    """Files an artifact needs beside it (OpenVINO's .bin next to the .xml)."""
    weights = staged.with_suffix(".bin")
    return [weights] if staged.suffix == ".xml" and weights.is_file() else []


def publish(staged: Path, output: Path, data: dict[str, Any], seconds: dict[str, float], start: float,
            accuracy: dict[str, Any] | None = None) -> ExportResult:  # fmt: skip
    """Move a checked artifact (and its companions) into place, write its sidecar, and report."""
    companions = companion_files(staged)
    for companion in companions:
        install_artifact(companion, output.with_suffix(companion.suffix))
    install_artifact(staged, output)
    sidecar = write_sidecar(output, data)
    seconds["total"] = time.perf_counter() - start
    files = [output, *(output.with_suffix(c.suffix) for c in companions)]
    size = sum(f.stat().st_size for f in files) / 2**20
    names = " + ".join(f.name for f in files[1:])
    print(f"wrote {output}{' + ' + names if names else ''} ({size:.1f} MiB) and {sidecar.name} in "
          f"{seconds['total']:.1f} s (export {seconds['export']:.1f} s, check {seconds['check']:.1f} s)")  # fmt: skip
    return ExportResult(output, sidecar, data["parity"], seconds, accuracy)
