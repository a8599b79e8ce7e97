"""``python -m detection.zoo``: the zoo's detectors, trained by this project, beside its backbones.

Detector records live in ``weights/zoo.json`` under ``"detectors"`` (the backbones' records are under
``"weights"``); each holds what rebuilds the detector (the training run's model settings, channels and
normalisation), its recipe, the metrics ``detection.eval`` measured with the command that
reproduces them, and the weights file's name, sha256 and size. A zoo id works wherever a run
directory does: ``detection.eval --weights ID``, ``deploy.export --detector c4 --weights ID``,
``deploy.load_eager_detector(ID)``; the file's size and sha256 are checked first.

``add RUN_DIR --id ID --data-root DIR`` evaluates a finished ``detection.train`` run on its dataset's
test set, copies ``final.safetensors`` to ``weights/ID.safetensors`` and writes the record (both
atomically), then loads the record back to prove it works. ``list`` prints the detectors.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones.engine import recipe_and_segments
from backbones.weights import (
    add_verified_record,
    check_zoo_id,
    manifest_entries,
    publish_run,
    read_finished_run,
    verify_zoo_file,
    zoo_path,
)

SECTION = "detectors"
CONFIG_KEYS = ("backbone", "backbone_weights", "design", "freeze_at", "dataset", "model", "class_names", "channels",
               "image_mean", "image_std")  # fmt: skip
RECIPE_KEYS = ("images_per_batch", "lr", "steps", "max_iters", "warmup_iters", "momentum", "weight_decay", "seed",
               "amp", "world_size")  # fmt: skip
_REQUIRED = (
    "id",
    "backbone",
    "design",
    "dataset",
    "class_names",
    "config",
    "recipe",
    "metrics",
    "file",
    "sha256",
    "size",
)


@dataclass(frozen=True)
class DetectorRecord:
    id: str
    backbone: str
    design: str
    dataset: str
    class_names: list[str]
    config: dict[str, Any]  # what detection.train.build_detector needs, as a run's config.json has it
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    file: str
    sha256: str
    size: int
    path: Path = field(compare=False)


def read_detectors(path: str | Path | None = None) -> dict[str, DetectorRecord]:
    """The manifest's detector records by id; a malformed one raises ValueError naming the field."""
    path = Path(path) if path is not None else zoo_path()
    if not path.exists():
        return {}
    records: dict[str, DetectorRecord] = {}
    for where, entry in manifest_entries(path, SECTION, _REQUIRED, optional_section=True):
        if not isinstance(entry["config"], dict) or not {"design", "model", "class_names"} <= set(entry["config"]):
            raise ValueError(
                f"{where} ({entry['id']}): field 'config' must hold the run's design, model and class_names"
            )
        records[entry["id"]] = DetectorRecord(
            **{key: entry[key] for key in _REQUIRED}, path=path.parent / entry["file"]
        )
    return records


def zoo_detector(zoo_id: str, path: str | Path | None = None) -> tuple[dict[str, Any], Path] | None:
    """(run-like config, verified weights file) of a zoo detector id (in the manifest at ``path``, default the
    zoo's); None if ``zoo_id`` is not one."""
    record = read_detectors(path).get(str(zoo_id))
    if record is None:
        return None
    verify_zoo_file(record.id, record.path, record.size, record.sha256)
    return dict(record.config), record.path


def add_run(
    run_dir: Path, zoo_id: str, data_root: Path, zoo: Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Evaluate a finished detection.train run on its test set and add it to the zoo."""
    from backbones.distributed import pick_device

    from .catalog import TEST_FOR_TRAIN
    from .eval import detector_from, load_detector
    from .inference import evaluate_test_set

    run_dir, zoo = Path(run_dir), Path(zoo) if zoo is not None else zoo_path()
    check_zoo_id(zoo_id)
    config, weights_path = read_finished_run(run_dir, "detection.train")
    if zoo_id in read_detectors(zoo):
        raise ValueError(f"{zoo}: detector id {zoo_id!r} already exists")
    test_set = TEST_FOR_TRAIN.get(config.get("dataset", ""))
    if test_set is None:
        raise ValueError(
            f"{run_dir}: trained on {config.get('dataset')!r}, which has no public test set to measure it on"
        )
    model, config = load_detector(config["backbone"], run_dir)
    device_ = pick_device(device)
    results, _, _ = evaluate_test_set(
        model.to(device_),
        test_set,
        data_root,
        channels=config["channels"],
        device=device_,
        class_names=config["class_names"],
    )
    metrics: dict[str, Any] = {"split": "test", "dataset": test_set,
                               "command": f"python -m detection.eval --backbone {config['backbone']} "
                                          f"--weights {zoo_id} --dataset {test_set} "
                                          f"--data-root {shlex.quote(str(data_root))}"}  # fmt: skip
    if "voc" in results:
        metrics.update(voc_metric=results["voc"]["metric"], voc_mAP=round(results["voc"]["mAP"], 2))
    if "coco" in results:
        metrics.update({f"coco_{key}": round(value, 2) for key, value in results["coco"].items()})
    record = {"id": zoo_id, "backbone": config["backbone"], "design": config["design"], "dataset": config["dataset"],
              "class_names": config["class_names"], "config": {key: config.get(key) for key in CONFIG_KEYS},
              **recipe_and_segments(run_dir, config, RECIPE_KEYS), "metrics": metrics,
              **publish_run(run_dir, weights_path, zoo, zoo_id)}  # fmt: skip

    def load_back() -> None:  # from this manifest: the record must parse, verify and load before we say it is there
        found = zoo_detector(zoo_id, zoo)
        if found is None:
            raise ValueError(f"{zoo}: detector {zoo_id!r} is not there after it was written")
        detector_from(*found)

    add_verified_record(zoo, SECTION, record, load_back)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detection.zoo", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the zoo's detectors and their measured metrics")
    add = commands.add_parser("add", help="evaluate a finished detection.train run and add it to the zoo")
    add.add_argument("run_dir", type=Path, help="a finished detection.train output directory (config.json and "
                     "final.safetensors)")  # fmt: skip
    add.add_argument(
        "--id", required=True, help="zoo id, e.g. det_resnet20_c4_fashion_det; becomes weights/ID.safetensors"
    )
    add.add_argument("--data-root", type=Path, required=True, help="where the run's test set lives (e.g. the "
                     "fashion_det output, a VOCdevkit, the COCO root)")  # fmt: skip
    add.add_argument("--device", default="auto", help="where the evaluation runs: auto (cuda if present), cpu, cuda, "
                     "cuda:N (default: auto)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            for record in read_detectors().values():
                scores = ", ".join(
                    f"{k} {v}" for k, v in record.metrics.items() if k in ("voc_mAP", "coco_AP", "coco_AP50")
                )
                print(f"{record.id:<32} {record.backbone} {record.design.upper():<4} {record.dataset:<12} {scores}  "
                      f"({record.metrics.get('command')})")  # fmt: skip
            return 0
        added = add_run(args.run_dir, args.id, args.data_root, device=args.device)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"added {added['id']}: {added['backbone']} {added['design']} on {added['dataset']}, {added['metrics']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
