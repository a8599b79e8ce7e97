"""``python -m backbones.zoo``: list the zoo, or add a trained run to it.

``add RUN_DIR --id ID`` evaluates the run's ``final.safetensors`` with ``backbones.evaluate`` on the
dataset's test split, copies the weights to ``weights/ID.safetensors`` and writes the record
(architecture, constructor options, classes, preprocessing, recipe, the measured metrics with the
command that reproduces them, sha256, size, and how each stretch of the run was executed: precision,
compile, device, CPU ISA) into ``weights/zoo.json``; the run's metrics.jsonl is kept beside the
weights as ``weights/ID.metrics.jsonl`` for its training curves. Both files are written
atomically; the new record is then loaded back through ``create_model`` to prove it works.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from .engine import recipe_and_segments
from .evaluate import evaluate
from .registry import create_model
from .weights import (
    add_verified_record,
    check_zoo_id,
    publish_run,
    read_finished_run,
    read_zoo,
    verify_zoo_file,
    zoo_path,
)

RECIPE_KEYS = ("batch_size", "lr", "momentum", "weight_decay", "schedule", "milestones", "max_iters", "val_split",
               "warmup_lr", "warmup_until_error", "random_erasing", "erasing_fill", "native_size", "label_smoothing",
               "seed", "amp", "world_size")  # fmt: skip


def add_run(run_dir: Path, zoo_id: str, zoo: Path | None = None, device: str = "auto") -> dict[str, Any]:
    run_dir, zoo = Path(run_dir), Path(zoo) if zoo is not None else zoo_path()
    check_zoo_id(zoo_id)
    config, weights_path = read_finished_run(run_dir, "backbones.train")
    if zoo_id in read_zoo(zoo):
        raise ValueError(f"{zoo}: id {zoo_id!r} already exists")
    metrics = evaluate(config["arch"], [str(weights_path)], config["dataset"],
                       Path(config["data"]) if config.get("data") else None, device=device)  # fmt: skip
    data_flag = f" --data {shlex.quote(str(config['data']))}" if config.get("data") else ""
    record = {
        "id": zoo_id,
        "arch": config["arch"],
        "constructor": config["constructor"],
        "dataset": config["dataset"],
        "class_names": config["class_names"],
        "preprocessing": config["preprocessing"],
        **recipe_and_segments(run_dir, config, RECIPE_KEYS),
        "metrics": {
            "top1_err": metrics["top1_err"],
            "top5_err": metrics["top5_err"],
            "images": metrics["images"],
            "split": "test",
            "protocol": metrics["protocol"],
            "command": f"python -m backbones.evaluate {config['arch']} --weights {zoo_id} "
            f"--dataset {config['dataset']}{data_flag}",
        },  # fmt: skip
        **publish_run(run_dir, weights_path, zoo, zoo_id),
    }
    add_verified_record(zoo, "weights", record, lambda: _load_back(zoo, zoo_id))
    return record


def _load_back(zoo: Path, zoo_id: str) -> None:
    """The record must parse, its file verify and its weights load before we say it is there."""
    record = read_zoo(zoo)[zoo_id]
    verify_zoo_file(record.id, record.path, record.size, record.sha256)
    create_model(record.arch, num_classes=len(record.class_names), weights=record.path, **record.constructor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backbones.zoo", description=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the zoo's weights and their measured metrics")
    add = commands.add_parser("add", help="evaluate a finished run and add its weights to the zoo")
    add.add_argument(
        "run_dir", type=Path, help="a finished backbones.train output directory (config.json and final.safetensors)"
    )
    add.add_argument("--id", required=True, help="zoo id, e.g. resnet20_fashion_mnist; becomes weights/ID.safetensors")
    add.add_argument(
        "--device",
        default="auto",
        help="where the test-set evaluation runs: auto (cuda if present), cpu, cuda, cuda:N (default: auto)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            for record in read_zoo().values():
                print(f"{record.id:<28} {record.arch:<10} {record.dataset:<14} "
                      f"top-1 err {record.metrics.get('top1_err')}%  "
                      f"({record.metrics.get('command')})")  # fmt: skip
            return 0
        added = add_run(args.run_dir, args.id, device=args.device)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"added {added['id']}: {added['arch']} on {added['dataset']}, top-1 error {added['metrics']['top1_err']}% "
          f"({added['metrics']['command']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
