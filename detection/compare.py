"""``python -m detection.compare RUN [RUN ...] --dataset D --data-root R --output PNG [--images 6]
[--threshold 0.5] [--scale 3]``

Detectors side by side in one picture: a row per ``detection.train`` run, a column per test image
(the first ``--images`` of the test set), ground truth in green and the detections scoring at least
``--threshold`` in red with their class names and scores. Each row is titled with the run's
backbone and, when the run was evaluated at its end, its VOC mAP and COCO AP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from backbones.cliargs import FRACTION, POSITIVE_INT
from backbones.fileio import atomic_path

from .batches import to_model_input
from .catalog import TEST_DATASETS, evaluation_sets
from .eval import load_detector, run_or_zoo


def run_title(run: Path, config: dict[str, Any]) -> str:
    """Backbone, design and the run's final test-set scores (from metrics.jsonl or its zoo record), where recorded."""
    from .zoo import read_detectors

    title = f"{config['backbone']} {config['design'].upper()}"
    if config.get("backbone_weights"):
        title += f" (backbone {config['backbone_weights']})"
    record = read_detectors().get(str(run)) if not run.exists() else None
    if record is not None:
        scores = record.metrics
        # as the record stores them (two decimals): 69.85 is a binary fraction below it, so '.1f' printed 69.8
        return (f"{title}, zoo {record.id}: VOC07 mAP {scores.get('voc_mAP', float('nan')):.2f}, COCO AP50 "
                f"{scores.get('coco_AP50', float('nan')):.2f}, "
                f"AP {scores.get('coco_AP', float('nan')):.2f}")  # fmt: skip
    metrics = run / "metrics.jsonl"
    records = (
        [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    )
    evals = [r for r in records if r.get("kind") == "eval"]
    if evals and "voc_mAP" in evals[-1]:
        last = evals[-1]
        title += f": VOC07 mAP {last['voc_mAP']:.1f}, COCO AP50 {last['coco_AP50']:.1f}, AP {last['coco_AP']:.1f}"
    return title


def draw(image: torch.Tensor, target: dict[str, Any], found: dict[str, torch.Tensor], names: list[str],
         threshold: float, scale: int) -> torch.Tensor:  # fmt: skip
    """uint8 (3, H*scale, W*scale): ground truth green, detections >= threshold red (labels on a
    filled background in matplotlib's DejaVu Sans, readable at any scale)."""
    from matplotlib import font_manager
    from torchvision.utils import draw_bounding_boxes

    text = dict(font=font_manager.findfont("DejaVu Sans"), font_size=6 * scale, fill_labels=True, label_colors="black")
    canvas = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # nearest-neighbour: keeps pixels visible
    if len(target["boxes"]):  # images without objects are valid
        canvas = draw_bounding_boxes(canvas, target["boxes"] * scale,
                                     [names[int(label) - 1] for label in target["labels"]],
                                     colors="lime", width=2, **text)  # fmt: skip
    keep = found["scores"] >= threshold
    labels = [
        f"{names[int(label) - 1]} {float(score):.2f}"
        for label, score in zip(found["labels"][keep], found["scores"][keep])
    ]
    if labels:
        canvas = draw_bounding_boxes(canvas, found["boxes"][keep] * scale, labels, colors="red", width=2, **text)
    return canvas


@torch.no_grad()
def compare(runs: list[Path], dataset: str, root: Path, output: Path, images: int = 6, threshold: float = 0.5,
            scale: int = 3, titles: list[str] | None = None) -> Path:  # fmt: skip
    """Write the comparison PNG to ``output`` (atomically) and return its path. ``titles``: one per run
    (default: :func:`run_title`, the scores its run or zoo record holds)."""
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("give at least one detection.train run directory")
    if titles is not None and len(titles) != len(runs):
        raise ValueError(f"give one title per run: {len(titles)} titles for {len(runs)} runs")
    if images < 1 or scale < 1 or not 0 <= threshold <= 1:
        raise ValueError(
            f"need --images >= 1, --scale >= 1 and --threshold in [0, 1]; got {images}, {scale}, {threshold}"
        )
    test_set = next(iter(evaluation_sets(dataset, root).values()))
    count = min(images, len(test_set))
    samples = [test_set[index] for index in range(count)]
    names = list(test_set.class_names)
    figure = Figure(figsize=(2.2 * count, 2.5 * len(runs)), layout="constrained")
    rows = figure.subfigures(len(runs), 1, squeeze=False)[:, 0]  # a row title must not widen one column
    for index, (row, run) in enumerate(zip(rows, runs)):
        found = run_or_zoo(run)
        if found is None:
            raise ValueError(f"{run}: not a detection.train run directory nor a zoo detector id")
        model, config = load_detector(found[0]["backbone"], run)
        axes = row.subplots(1, count, squeeze=False)[0]
        for ax, (image, target) in zip(axes, samples):
            found = model([to_model_input(image, config["channels"])])[0]
            ax.imshow(draw(image, target, found, names, threshold, scale).permute(1, 2, 0).numpy())
            ax.set_axis_off()
        row.suptitle(titles[index] if titles else run_title(run, config), x=0.01, ha="left", fontsize=10)
    figure.suptitle(f"{dataset} test images: ground truth green, detections >= {threshold:g} red", fontsize=11)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detection.compare", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "runs", nargs="+", type=Path, help="detection.train run directories or zoo detector ids, one row each"
    )
    parser.add_argument("--dataset", choices=TEST_DATASETS, required=True, help="test set the images come from")
    parser.add_argument(
        "--data-root", type=Path, required=True, help="its root (VOCdevkit, COCO root or fashion_det output)"
    )
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--images", type=POSITIVE_INT, default=6, help="test images (columns), from the first")
    parser.add_argument("--threshold", type=FRACTION, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--scale", type=POSITIVE_INT, default=3, help="enlarge images this many times (small canvases)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = compare(args.runs, args.dataset, args.data_root, args.output, args.images, args.threshold, args.scale)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
