"""``python -m detection.eval --backbone ARCH --weights RUN --dataset D --data-root R``: run a trained
detector and print the paper's Table 7 (VOC mAP) or Table 8 (COCO mAP@.5, mAP@[.5,.95]) layout
with the paper's numbers beside the measured ones.

* ``--weights``: a ``detection.train`` run directory (or its ``final.safetensors``), a zoo detector id
  (``python -m detection.zoo list``; its sha256 is checked), or a torchvision
  Faster R-CNN checkpoint (``fasterrcnn_resnet50_fpn`` / ``_v2`` .pth state dict, recognised by its
  keys; a file with a config.json beside it is taken as a run's), run with torchvision's sizes
  (800/1333) and thresholds; its labels are COCO category ids, so it is scored on ``--dataset coco``
  and the results JSON carries those ids.
* ``--detections PATH`` scores precomputed results with no model, like the devkit and the COCO
  evaluation server: a directory of ``comp4_det_<split>_<class>.txt`` files (VOC) or a COCO
  results JSON.
* When a model runs, the same files are written under ``--output`` so other tools can score them.
* ``--json OUT`` writes the numbers (percent) as in the project's contract; ``--visualize N``
  writes N PNGs with predicted (red) and ground-truth (green) boxes and class names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from backbones.cliargs import COUNT, POSITIVE_INT
from backbones.distributed import pick_device
from backbones.fileio import atomic_path, atomic_write_json, read_json_object

from .catalog import TEST_DATASETS, default_metric, evaluation_sets
from .coco_eval import evaluate_coco
from .inference import Prediction, evaluate_test_set
from .voc_eval import METRICS, Metric, devkit_result_path, evaluate_detections, read_devkit_results

# The paper's Tables 7 and 8 (Faster R-CNN baselines), for the layout.
PAPER_VOC = {"voc07-test": [("VGG-16", "07+12", 73.2), ("ResNet-101", "07+12", 76.4)],
             "voc12-test": [("VGG-16", "07++12", 70.4), ("ResNet-101", "07++12", 73.8)]}  # fmt: skip
PAPER_COCO = [("VGG-16", 41.5, 21.2), ("ResNet-101", 48.4, 27.2)]


def load_run(weights: Path) -> tuple[dict[str, Any], Path]:
    run = weights if weights.is_dir() else weights.parent
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: --weights must be a detection.train run directory")
    config = read_json_object(config_path)
    if "design" not in config or "class_names" not in config:
        raise ValueError(f"{config_path} is not a detection.train config (no 'design' / 'class_names')")
    return config, weights if weights.is_file() else run / "final.safetensors"


def is_run_weights(weights: Path) -> bool:
    """A run directory, or a file with a run's config.json beside it (else: a torchvision checkpoint?)."""
    return weights.is_dir() or (weights.parent / "config.json").is_file()


def run_or_zoo(weights: Path) -> tuple[dict[str, Any], Path] | None:
    """(config, weights file) of a zoo detector id (verified) or a detection.train run; None for other files."""
    from .zoo import zoo_detector

    if not weights.exists():
        found = zoo_detector(str(weights))
        if found is None:
            raise FileNotFoundError(f"{weights}: no such run directory, checkpoint file or zoo detector id "
                                    "(python -m detection.zoo list)")  # fmt: skip
        return found
    return load_run(weights) if is_run_weights(weights) else None


def load_detector(backbone: str, weights: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, config) of a detection.train run, a zoo detector id or a torchvision
    Faster R-CNN checkpoint."""
    found = run_or_zoo(Path(weights))
    if found is None:
        from .torchvision_checkpoints import load_torchvision_detector

        return load_torchvision_detector(weights, backbone=backbone)
    config, file = found
    if config["backbone"] != backbone:
        raise ValueError(f"{weights}: the run trained a {config['backbone']} detector, not {backbone}")
    return detector_from(config, file), config


def detector_from(config: dict[str, Any], file: Path) -> torch.nn.Module:
    """The detector a detection.train config describes, with the weights in ``file``, in eval mode."""
    from backbones.weights import check_state_dict, load_state_dict_file

    from .train import build_detector

    model = build_detector(config, len(config["class_names"]), load_backbone_weights=False)
    state = load_state_dict_file(file)
    check_state_dict(model, state, str(file))
    model.load_state_dict(state)
    return model.eval()


def voc_table(dataset: str, result: dict[str, Any], label: str) -> str:
    lines = [f"Table 7 layout: detection mAP (%) on {dataset}, metric {result['metric']}",
             f"{'method':<34} {'training data':<14} {'mAP':>6}"]  # fmt: skip
    for method, data, value in PAPER_VOC.get(dataset, []):
        lines.append(f"{method + ' (paper)':<34} {data:<14} {value:>6.1f}")
    lines.append(f"{label:<34} {'':<14} {result['mAP']:>6.1f}")
    classes = list(result["AP"].items())
    for start in range(0, len(classes), 7):
        lines.append("  " + "  ".join(f"{name} {ap:.1f}" for name, ap in classes[start : start + 7]))
    return "\n".join(lines)


def coco_table(result: dict[str, float], label: str) -> str:
    lines = ["Table 8 layout: COCO-style detection (%)", f"{'method':<34} {'mAP@.5':>8} {'mAP@[.5,.95]':>13}"]
    for method, ap50, ap in PAPER_COCO:
        lines.append(f"{method + ' (paper, COCO val)':<34} {ap50:>8.1f} {ap:>13.1f}")
    lines.append(f"{label:<34} {result['AP50']:>8.1f} {result['AP']:>13.1f}")
    lines.append(
        f"  AP75 {result['AP75']:.1f}  APs {result['APs']:.1f}  APm {result['APm']:.1f}  APl {result['APl']:.1f}"
    )
    return "\n".join(lines)


def visualize(
    predictions: list[Prediction], dataset: Any, directory: Path, count: int, threshold: float = 0.5
) -> list[Path]:
    """PNGs with ground truth (green) and detections above ``threshold`` (red), labelled."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    names = list(dataset.class_names)
    written = []
    for index, prediction in enumerate(predictions[:count]):
        image, target = dataset[index]
        canvas = draw_bounding_boxes(image, target["boxes"], [names[int(label) - 1] for label in target["labels"]],
                                     colors="lime", width=1)  # fmt: skip
        keep = prediction.scores >= threshold
        if keep.any():
            labels = [
                f"{names[int(label) - 1]} {score:.2f}"
                for label, score in zip(prediction.labels[keep], prediction.scores[keep])
            ]
            canvas = draw_bounding_boxes(canvas, torch.as_tensor(prediction.boxes[keep]), labels, colors="red", width=1)
        path = directory / f"{prediction.image_id}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        written.append(path)
    return written


def score_precomputed(dataset: str, root: Path, detections: Path, metric: Metric) -> dict[str, Any]:
    sets = evaluation_sets(dataset, root)
    if not detections.exists():
        raise FileNotFoundError(f"--detections {detections}: not found (a directory of comp4_det_test_<class>.txt "
                                "files for a VOC layout, a COCO results JSON for COCO)")  # fmt: skip
    if detections.is_dir():
        if "voc" not in sets:
            raise ValueError(
                f"{detections} is a directory of devkit files, but {dataset} is scored with COCO results JSON"
            )
        voc = sets["voc"]
        found = read_devkit_results(detections, "test", list(voc.class_names))
        ground_truth = voc.evaluation_ground_truth()
        for name, class_found in found.items():
            unknown = sorted(set(class_found.image_ids) - set(ground_truth[name]))
            if unknown:
                raise ValueError(f"{devkit_result_path(detections, 'test', name)}: image {unknown[0]!r} is not in "
                                 f"{dataset}'s test set ({len(unknown)} unknown image id(s))")  # fmt: skip
        return {"voc": evaluate_detections(found, ground_truth, list(voc.class_names), metric)}
    if "coco" not in sets:
        raise ValueError(
            f"{detections} is a file; {dataset} is scored from a directory of comp4_det_test_<class>.txt files"
        )
    return {"coco": evaluate_coco(sets["coco"].evaluation_ground_truth(), detections)}


def detector_categories(config: dict[str, Any], weights: Path, dataset: str) -> list[tuple[int, str]] | None:
    """(category id, name) per label for a detector whose labels are category ids; None for a run's detector.
    Refuses a test set such a detector cannot be scored on."""
    if "torchvision" not in config:
        return None
    name = config["torchvision"]["checkpoint"]
    if "category_ids" not in config:
        raise ValueError(f"{weights}: a torchvision {name} checkpoint with {config['torchvision']['num_classes']} "
                         "outputs, whose classes are not recorded (a COCO one has 91); a detection.train run needs "
                         "its config.json beside its weights")  # fmt: skip
    if dataset != "coco":
        raise ValueError(f"{weights}: a torchvision {name} COCO detector (its labels are COCO category ids) is scored "
                         f"on --dataset coco, not {dataset}; to detect {dataset}'s classes, fine-tune it: "
                         f"python -m detection.train --init {weights} --dataset {dataset} ...")  # fmt: skip
    return list(zip(config["category_ids"], config["class_names"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detection.eval", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--backbone", help="zoo model name of the detector's backbone, e.g. resnet101 (required with "
                        "--weights; with --detections it only labels the table)")  # fmt: skip
    parser.add_argument("--weights", type=Path, help="detection.train run directory (or its final.safetensors), a zoo "
                        "detector id, or a torchvision Faster R-CNN checkpoint "
                        "(fasterrcnn_resnet50_fpn or _v2 .pth)")  # fmt: skip
    parser.add_argument("--detections", type=Path, help="score these precomputed results instead of running a model")
    parser.add_argument("--dataset", choices=TEST_DATASETS, required=True, help="test set to score on")
    parser.add_argument("--data-root", type=Path, required=True,
                        help="VOCdevkit (VOC), the COCO root (annotations/, val2017/), "
                        "or a fashion_det output")  # fmt: skip
    parser.add_argument("--metric", choices=METRICS, help="VOC metric (default: voc07 on VOC07 test, voc12 otherwise)")
    parser.add_argument("--output", type=Path, help="where result files and pictures go (default: RUN/eval-DATASET; "
                        "for a torchvision checkpoint FILE: STEM-eval-DATASET beside it)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the numbers (percent) as JSON")
    model_only = parser.add_argument_group("running a model (--weights) only")
    model_only.add_argument("--visualize", type=COUNT, metavar="N", help="write N annotated PNGs")
    model_only.add_argument("--device", help="auto (cuda when there is a GPU), cpu, cuda, cuda:N (default: auto)")
    model_only.add_argument("--batch-size", type=POSITIVE_INT, help="images per forward pass (default: 4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.weights is None) == (args.detections is None):
        raise SystemExit("error: give exactly one of --weights (run a model) or --detections (score results)")
    if args.weights is not None and args.backbone is None:
        raise SystemExit("error: --weights runs a model: give its --backbone too (e.g. --backbone resnet50)")
    if args.detections is not None:
        model_flags = {"--visualize": args.visualize, "--device": args.device, "--batch-size": args.batch_size,
                       "--output": args.output}  # fmt: skip
        given = [flag for flag, value in model_flags.items() if value is not None]
        if given:
            raise SystemExit(f"error: {', '.join(given)}: only when running a model (--weights); --detections scores "
                             "files that are already there")  # fmt: skip
    metric = args.metric or default_metric(args.dataset)
    try:
        if args.detections is not None:
            results = score_precomputed(args.dataset, args.data_root, args.detections, metric)
            label = f"{args.backbone} ({args.detections.name})" if args.backbone else args.detections.name
        else:
            model, config = load_detector(args.backbone, args.weights)
            categories = detector_categories(config, args.weights, args.dataset)
            device = pick_device(args.device or "auto")
            model.to(device)
            if not args.weights.exists():  # a zoo id
                output = args.output or Path("runs") / f"{args.weights}-eval-{args.dataset}"
                label = f"{args.backbone} {config['design'].upper()} ({args.weights})"
            elif is_run_weights(args.weights):
                run = args.weights if args.weights.is_dir() else args.weights.parent
                output = args.output or run / f"eval-{args.dataset}"
                label = f"{args.backbone} {config['design'].upper()} ({config['dataset']})"
            else:
                output = args.output or args.weights.with_name(f"{args.weights.stem}-eval-{args.dataset}")
                label = f"torchvision {config['torchvision']['checkpoint']}"
            results, predictions, sets = evaluate_test_set(
                model, args.dataset, args.data_root, channels=config["channels"], device=device, metric=metric,
                results_dir=output, batch_size=args.batch_size or 4, progress=True, categories=categories,
                class_names=config["class_names"])  # fmt: skip
            print(f"result files in {output}")
            if args.visualize:
                pictures = visualize(predictions, next(iter(sets.values())), output / "pictures", args.visualize)
                print(f"wrote {len(pictures)} pictures to {output / 'pictures'}")
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    if "voc" in results:
        print(voc_table(args.dataset, results["voc"], label))
    if "coco" in results:
        print(coco_table(results["coco"], label))
    if args.json:
        payload = (
            results["voc"] if list(results) == ["voc"] else results["coco"] if list(results) == ["coco"] else results
        )
        atomic_write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
