"""``python -m deploy.triton ARTIFACT --repository DIR [--name NAME] [--max-batch 32] [--instances 1]
[--preferred-batch 8,16]``: a Triton Inference Server model repository for an ONNX, OpenVINO or TensorRT
artifact (classifiers, with dynamic batching; detectors, one image of any size per request).

Writes, all from the artifact's sidecar (tensor names, shapes, data types, classes)::

    DIR/<name>/config.pbtxt     platform, max_batch_size, input/output, dynamic_batching, instance_group
    DIR/<name>/1/model.onnx     (or 1/model.plan, or 1/model.xml + 1/model.bin) the artifact, as version 1
    DIR/<name>/labels.txt       the class names, one per line (Triton's classification extension)
    DIR/<name>/sidecar.json     the sidecar, for the client's pre- and post-processing

Then ``tritonserver --model-repository DIR``. The model folder is built beside its final place and
moved in only when complete; an existing non-empty one is kept unless ``--force``.

OpenVINO IR is served by Triton's OpenVINO backend (``backend: "openvino"``, CPU instances). That
backend takes one precision parameter, ``HINT_BF16: YES``, written for artifacts exported with
``--precision bf16``; it cannot pin f32, so an fp32 IR served on a CPU with AVX512-BF16/AMX may run
in OpenVINO's default bf16 there (the tool says so in a note). ``deploy.load`` always pins it.

AOTInductor and eager artifacts are refused: Triton would run them through its PyTorch backend, which
this tool does not target; export with ``--format onnx``, ``openvino`` or ``tensorrt``.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones.cliargs import COUNT, POSITIVE_INT
from backbones.fileio import atomic_path, atomic_write_json, atomic_write_text

from .sidecar import SidecarError, read_sidecar, sidecar_path, validate

PLATFORMS = {
    "onnx": ("onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
    "openvino": ("openvino", "model.xml"),
}  # the OpenVINO backend is named by "backend", not "platform"
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int8": "TYPE_INT8", "int32": "TYPE_INT32",
              "int64": "TYPE_INT64", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}  # fmt: skip
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DEFAULT_PREFERRED = (8, 16)
DEFAULT_MAX_BATCH = 32
CONFIG, LABELS, SIDECAR, VERSION_DIR = "config.pbtxt", "labels.txt", "sidecar.json", "1"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class TritonError(ValueError):
    """An artifact or request this tool cannot turn into a Triton model; the message says why."""


@dataclass
class TritonOptions:
    name: str | None = None  # default: the artifact's file name without its suffix
    max_batch: int | None = None  # 0: no batching (dims are the full shapes); default 32, detectors 0
    instances: int = 1
    preferred_batch: list[int] | None = None  # default: 8 and 16 where <= max_batch
    max_queue_delay_us: int = 100
    kind: str = "auto"  # auto, cpu, gpu (TensorRT: gpu only)
    force: bool = False


@dataclass
class TritonModel:
    """What was written: the model folder and its files."""

    directory: Path
    config: Path
    model_file: Path
    labels: Path
    sidecar: Path
    config_text: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- protobuf text format
class Enum(str):
    """An enum value: written bare (``TYPE_FP32``), where a plain string is quoted."""


def _quote(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isascii() and char.isprintable():
            out.append(char)
        else:  # octal escapes of the UTF-8 bytes, as protobuf's text format reads them
            out.extend(f"\\{byte:03o}" for byte in char.encode())
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"no protobuf text form for {type(value).__name__} {value!r}")


def render_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """A message (a dict: scalars, Enums, lists of scalars, nested dicts, lists of dicts) as text format."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", render_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            lines.append(f"{pad}{key} [")
            for index, item in enumerate(value):
                comma = "," if index < len(value) - 1 else ""
                lines += [f"{pad}  {{", render_pbtxt(item, indent + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(item) for item in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------- sidecar -> config
def _triton_dims(shape: list[Any], batched: bool) -> list[int]:
    """Sidecar shape -> Triton dims: the batch axis dropped when batching, named (dynamic) axes -1."""
    return [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]


def _tensor(tensor: dict[str, Any], batched: bool, image_format: bool = False, labels: bool = False) -> dict[str, Any]:
    dims = _triton_dims(tensor["shape"], batched)
    entry: dict[str, Any] = {"name": tensor["name"], "data_type": Enum(DATA_TYPES[tensor["dtype"]])}
    if image_format:
        entry["format"] = Enum("FORMAT_NCHW")
    if dims:
        entry["dims"] = dims
    else:  # one value per batch item: Triton's idiom is dims [1] reshaped to a scalar
        entry["dims"], entry["reshape"] = [1], {"shape": []}
    if labels:
        entry["label_filename"] = LABELS
    return entry


def _profile_batch_range(artifact: Path, sidecar: dict[str, Any]) -> tuple[int, int]:
    """The batch sizes the TensorRT engine's first optimisation profile accepts (Triton uses that one)."""
    profile = sidecar["tensorrt"]["profiles"][0]
    name = sidecar["inputs"][0]["name"]
    if name not in profile:
        raise TritonError(f"{sidecar_path(artifact)}: field 'tensorrt.profiles[0]' has no entry for input {name!r}")
    return profile[name]["min"][0], profile[name]["max"][0]


def _max_batch(sidecar: dict[str, Any], options: TritonOptions) -> int:
    """``--max-batch`` as given, else the artifact's default: a detector graph takes one image of any size."""
    if options.max_batch is not None:
        return options.max_batch
    return 0 if sidecar["task"] == "detection" else DEFAULT_MAX_BATCH


def _check_request(artifact: Path, sidecar: dict[str, Any], options: TritonOptions, max_batch: int) -> list[int]:
    """Refuse what Triton would refuse; return the preferred batch sizes to write."""
    backend = sidecar["backend"]
    if backend not in PLATFORMS:
        raise TritonError(f"{artifact}: a {backend} artifact; Triton would need its PyTorch backend to run it, which "
                          "this tool does not target. "
                          "Export with --format onnx, openvino or tensorrt for Triton")  # fmt: skip
    if max_batch < 0:
        raise TritonError(f"--max-batch must be 0 (no batching) or positive, got {max_batch}")
    if options.instances < 1:
        raise TritonError(f"--instances must be at least 1, got {options.instances}")
    if options.max_queue_delay_us < 0:
        raise TritonError(f"--max-queue-delay-us must not be negative, got {options.max_queue_delay_us}")
    if options.kind not in KINDS:
        raise TritonError(f"--kind must be one of {list(KINDS)}, got {options.kind!r}")
    if backend == "tensorrt" and options.kind == "cpu":
        raise TritonError(f"{artifact}: a TensorRT engine runs on the GPU only; use --kind gpu or auto")
    if backend == "openvino" and options.kind == "gpu":
        raise TritonError(f"{artifact}: Triton's OpenVINO backend runs on the CPU only; use --kind cpu or auto")
    for tensor in sidecar["inputs"] + sidecar["outputs"]:
        if max_batch > 0 and isinstance(tensor["shape"][0], int):
            raise TritonError(f"{artifact}: --max-batch {max_batch} needs a dynamic batch axis, but tensor "
                              f"{tensor['name']!r} has the fixed shape {tensor['shape']} "
                              f"(sidecar {sidecar_path(artifact)}); "
                              "export it again (exports have a dynamic batch axis) or pass --max-batch 0")  # fmt: skip
    if backend == "tensorrt":
        low, high = _profile_batch_range(artifact, sidecar)
        if max_batch > high:
            raise TritonError(f"{artifact}: --max-batch {max_batch} exceeds the engine's profile maximum "
                              f"batch {high}; pass --max-batch {high} or build the engine with "
                              f"--max-batch {max_batch}")  # fmt: skip
        if max_batch > 0 and low > 1:
            raise TritonError(f"{artifact}: the engine's profile starts at batch {low}; Triton sends batches from 1")
    return _preferred_batches(options.preferred_batch, max_batch)


def _preferred_batches(requested: list[int] | None, max_batch: int) -> list[int]:
    if max_batch == 0:
        if requested:
            raise TritonError("--preferred-batch needs batching; it cannot be combined with --max-batch 0")
        return []
    if requested is None:
        return [b for b in DEFAULT_PREFERRED if b <= max_batch] or [max_batch]
    sizes = sorted(set(requested))
    bad = [b for b in sizes if b < 1 or b > max_batch]
    if bad:
        raise TritonError(f"--preferred-batch sizes must lie in 1..{max_batch} (the max batch), got {bad}")
    return sizes


def model_config(sidecar: dict[str, Any], name: str, options: TritonOptions, max_batch: int,
                 preferred: list[int]) -> dict[str, Any]:  # fmt: skip
    """The Triton ``ModelConfig`` (as a dict for :func:`render_pbtxt`) of an ONNX or TensorRT artifact."""
    batched = max_batch > 0
    platform, _ = PLATFORMS[sidecar["backend"]]
    first_input = sidecar["inputs"][0]
    # FORMAT_NCHW describes exactly three non-batch dims, so only a batched image input carries it
    image = batched and sidecar["task"] == "classification" and len(first_input["shape"]) == 4
    label_output = sidecar["postprocessing"]["output"] if sidecar["task"] == "classification" else None
    kind = {"tensorrt": "gpu", "openvino": "cpu"}.get(sidecar["backend"], options.kind)
    config: dict[str, Any] = {
        "name": name,
        **({"backend": platform} if sidecar["backend"] == "openvino" else {"platform": platform}),
        "max_batch_size": max_batch,
        "input": [_tensor(t, batched, image_format=image and t is first_input) for t in sidecar["inputs"]],
        "output": [_tensor(t, batched, labels=t["name"] == label_output) for t in sidecar["outputs"]],
        "instance_group": [{"count": options.instances, "kind": Enum(KINDS[kind])}],
    }
    if batched:
        config["dynamic_batching"] = {"preferred_batch_size": preferred,
                                      "max_queue_delay_microseconds": options.max_queue_delay_us}  # fmt: skip
    if sidecar["backend"] == "openvino" and sidecar["openvino"]["inference_precision"] == "bf16":
        config["parameters"] = [{"key": "HINT_BF16", "value": {"string_value": "YES"}}]
    return config


def _check_onnx_graph(artifact: Path, sidecar: dict[str, Any]) -> None:
    """The ONNX graph's real inputs and outputs must be the sidecar's (names, ranks)."""
    try:
        import onnx
    except ImportError:
        return
    graph = onnx.load(str(artifact), load_external_data=False).graph
    initialisers = {init.name for init in graph.initializer}
    real = {"inputs": [(v.name, len(v.type.tensor_type.shape.dim)) for v in graph.input if v.name not in initialisers],
            "outputs": [(v.name, len(v.type.tensor_type.shape.dim)) for v in graph.output]}  # fmt: skip
    for side in ("inputs", "outputs"):
        listed = [(t["name"], len(t["shape"])) for t in sidecar[side]]
        if listed != real[side]:
            raise TritonError(
                f"{artifact}: the sidecar lists {side} {listed} (name, rank), the ONNX graph has {real[side]}"
            )


def _labels_text(class_names: list[str], artifact: Path) -> str:
    for index, label in enumerate(class_names):
        if "\n" in label or "\r" in label:
            raise TritonError(
                f"{artifact}: class_names[{index}] {label!r} holds a line break; labels.txt takes one per line"
            )
    return "".join(label + "\n" for label in class_names)


def _repository_sidecar(sidecar: dict[str, Any], artifact: Path, name: str, model_file: str) -> dict[str, Any]:
    data = copy.deepcopy(sidecar)
    data["artifact"]["file"] = model_file  # same bytes, so the sha256 still holds
    if "weights" in data["artifact"]:
        data["artifact"]["weights"]["file"] = str(Path(model_file).with_suffix(".bin"))
    data["triton"] = {"model_name": name, "version": int(VERSION_DIR), "model_file": f"{VERSION_DIR}/{model_file}",
                      "source": str(artifact)}  # fmt: skip
    return validate(data, f"{name}/{SIDECAR}")


# ---------------------------------------------------------------- writing
def _default_name(artifact: Path) -> str:
    return artifact.name.split(".")[0] or "model"


def _copy_file(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _install(staging: Path, target: Path) -> None:
    """Move the complete ``staging`` folder to ``target``, replacing what was there."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_model(artifact: str | Path, repository: str | Path, options: TritonOptions | None = None) -> TritonModel:
    """Write ``repository/<name>/`` (config.pbtxt, 1/model.*, labels.txt, sidecar.json) for ``artifact``."""
    options = options or TritonOptions()
    artifact, repository = Path(artifact), Path(repository)
    if not artifact.is_file():
        raise FileNotFoundError(f"artifact not found: {artifact}")
    sidecar = read_sidecar(artifact)  # also checks the artifact's sha256: never serve a damaged file
    max_batch = _max_batch(sidecar, options)
    preferred = _check_request(artifact, sidecar, options, max_batch)
    name = options.name or _default_name(artifact)
    if not _MODEL_NAME.fullmatch(name):
        raise TritonError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (it becomes a folder name)")
    if sidecar["backend"] == "onnx":
        _check_onnx_graph(artifact, sidecar)
    target = repository / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not options.force:
        raise TritonError(f"{target} already exists and is not empty; pass --force to replace it")
    _, model_file = PLATFORMS[sidecar["backend"]]
    config_text = render_pbtxt(model_config(sidecar, name, options, max_batch, preferred)) + "\n"
    labels_text = _labels_text(sidecar["class_names"], artifact) if sidecar.get("class_names") else ""
    repo_sidecar = _repository_sidecar(sidecar, artifact, name, model_file)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=repository))
    try:
        atomic_write_text(staging / CONFIG, config_text)
        _copy_file(artifact, staging / VERSION_DIR / model_file)
        if sidecar["backend"] == "openvino":  # the IR's weights, beside it under the name Triton expects
            _copy_file(artifact.with_name(sidecar["artifact"]["weights"]["file"]),
                       staging / VERSION_DIR / Path(model_file).with_suffix(".bin"))  # fmt: skip
        atomic_write_text(staging / LABELS, labels_text)
        atomic_write_json(staging / SIDECAR, repo_sidecar)
        staging.chmod(0o777 & ~_umask())
        _install(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TritonModel(target, target / CONFIG, target / VERSION_DIR / model_file, target / LABELS, target / SIDECAR,
                       config_text, _notes(sidecar))  # fmt: skip


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _notes(sidecar: dict[str, Any]) -> list[str]:
    if sidecar["backend"] == "openvino" and sidecar["openvino"]["inference_precision"] != "bf16":
        return [
            "Triton's OpenVINO backend cannot pin f32 (its only precision parameter is HINT_BF16): on a CPU with "
            "AVX512-BF16 or AMX, OpenVINO may run this IR in bf16 there; deploy.load pins f32"
        ]
    if sidecar["backend"] != "tensorrt":
        return []
    record = sidecar["tensorrt"]
    return [(f"the engine was built by TensorRT {record['version']} for {record['gpu']} (compute capability "
             f"{record['compute_capability']}): serve it with a Triton release that ships TensorRT "
             f"{record['version']}, on the same GPU model")]  # fmt: skip


# ---------------------------------------------------------------- CLI
def _batch_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 8,16, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.triton", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("artifact", type=Path, help="an ONNX (.onnx), OpenVINO (.xml + .bin) "
                        "or TensorRT (.engine/.plan) artifact with its sidecar")  # fmt: skip
    parser.add_argument("--repository", type=Path, required=True, help="the Triton model repository folder")
    parser.add_argument("--name", help="model name (default: the artifact's file name without suffix)")
    parser.add_argument(
        "--max-batch",
        type=COUNT,
        help=f"max_batch_size (0: no batching; default {DEFAULT_MAX_BATCH}, "
        "detectors 0: one image of any size per request)",
    )
    parser.add_argument("--instances", type=POSITIVE_INT, default=1, help="model instances (per GPU for GPU instances)")
    parser.add_argument(
        "--preferred-batch", type=_batch_list, help="dynamic batching sizes (default 8,16 up to --max-batch)"
    )
    parser.add_argument(
        "--max-queue-delay-us", type=COUNT, default=100, help="dynamic batching queue delay (microseconds)"
    )
    parser.add_argument("--kind", choices=list(KINDS), default="auto", help="instance kind (TensorRT: always gpu)")
    parser.add_argument("--force", action="store_true", help="replace an existing model folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = TritonOptions(args.name, args.max_batch, args.instances, args.preferred_batch, args.max_queue_delay_us,
                            args.kind, args.force)  # fmt: skip
    try:
        model = write_model(args.artifact, args.repository, options)
    except (TritonError, SidecarError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {model.directory}/: {CONFIG}, {VERSION_DIR}/{model.model_file.name}, {LABELS}, {SIDECAR}")
    print(model.config_text, end="")
    for note in model.notes:
        print(f"note: {note}")
    print(f"serve: tritonserver --model-repository {args.repository}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
