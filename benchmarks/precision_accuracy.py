"""Accuracy of reduced-precision artifacts beside fp32, measured by ``deploy.export``'s own check.

    python benchmarks/precision_accuracy.py --weights resnet56_fashion_mnist --out runs/precision
    python benchmarks/precision_accuracy.py --detector det_resnet20_c4_fashion_det --data-root data/fashion_det \\
        --out runs/precision-det

exports the classifier once per (format, precision, int8 variant) with ``--eval-dataset
fashion-mnist`` (the official 10k test split) and ``--calibration-dataset fashion-mnist`` (512
training images), and prints one table: top-1 error of fp32 (PyTorch) and of each artifact in its
own runtime, the difference, top-1 agreement and the logits error, with the CPU's ISA. The JSON
(``--json``) keeps every sidecar's ``accuracy`` and ``quantization`` records. An artifact that
loses more than ``--max-accuracy-drop`` fails its export; the table says so instead of stopping.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backbones.cliargs import NON_NEGATIVE, POSITIVE_INT
from backbones.engine import cpu_description
from backbones.fileio import atomic_write_json

# (name, format, precision, options): the variants README compares
VARIANTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("onnx-fp16", "onnx", "fp16", {}),
    ("openvino-fp16", "openvino", "fp16", {}),
    ("onnx-int8-sym", "onnx", "int8", {"int8_scheme": "symmetric"}),
    ("onnx-int8-sym-7bit", "onnx", "int8", {"int8_scheme": "symmetric", "int8_reduce_range": True}),
    ("onnx-int8-asym", "onnx", "int8", {"int8_scheme": "asymmetric"}),
    ("openvino-int8-sym", "openvino", "int8", {"int8_scheme": "symmetric"}),
    ("openvino-int8-sym-7bit", "openvino", "int8", {"int8_scheme": "symmetric", "int8_reduce_range": True}),
    ("openvino-int8-asym", "openvino", "int8", {"int8_scheme": "asymmetric"}),
    ("openvino-int8-nncf", "openvino", "int8", {"openvino_int8": "nncf"}),
]
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
DETECTOR_VARIANTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("onnx-fp16", "onnx", "fp16", {}),
    ("openvino-fp16", "openvino", "fp16", {}),
    ("onnx-int8-sym", "onnx", "int8", {"int8_scheme": "symmetric"}),
    ("onnx-int8-asym", "onnx", "int8", {"int8_scheme": "asymmetric"}),
    ("openvino-int8-asym", "openvino", "int8", {"int8_scheme": "asymmetric"}),
]


def export_each(variants: list[tuple[str, str, str, dict[str, Any]]], names: list[str], out: Path, arch: str,
                weights: str, row: Callable[[dict[str, Any]], dict[str, Any]], calibration: str,
                **common: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Export every chosen variant with ``common`` options (int8: calibrated on ``calibration``); one row
    each, ``row(sidecar)``'s fields, or the export check's failure."""
    from deploy.export import ExportError, export_model

    rows = []
    for name, fmt, precision, extra in variants:
        if names and name not in names:
            continue
        artifact = out / f"{weights}-{name}{SUFFIX[fmt]}"
        try:
            result = export_model(arch, weights, artifact, format=fmt, precision=precision,
                                  calibration_dataset=calibration if precision == "int8" else None,
                                  **common, **extra)  # fmt: skip
        except ExportError as error:
            rows.append({"variant": name, "failed": str(error)})
            continue
        rows.append({"variant": name, "artifact": str(artifact), **row(json.loads(result.sidecar.read_text()))})
    return rows


def detector_row(sidecar: dict[str, Any]) -> dict[str, Any]:
    accuracy = sidecar["accuracy"]
    return {"metric": accuracy["metric"], "fp32": accuracy["fp32"], "artifact_mAP": accuracy["artifact"],
            "drop": accuracy["accuracy_drop"],
            "coco_AP": {"fp32": accuracy["results"]["fp32"]["coco"]["AP"],
                        "artifact": accuracy["results"]["artifact"]["coco"]["AP"]},
            "confident_detections": accuracy["confident_detections"]}  # fmt: skip


def run_detector(
    arch: str, weights: str, root: Path, out: Path, names: list[str], max_drop: float
) -> list[dict[str, Any]]:
    """The detector variants, each checked by its mAP on fashion-det's 500 test canvases (calibration:
    512 of its training canvases)."""
    return export_each(DETECTOR_VARIANTS, names, out, arch, weights, detector_row, "fashion-det", detector="c4",
                       eval_dataset="fashion-det", data_root=root, max_accuracy_drop=max_drop)  # fmt: skip


def detector_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'variant':<22} {'fp32 VOC07':>10} {'artifact':>9} {'diff':>6} {'COCO AP fp32/art':>17} {'found again':>12}"
    ]
    for row in rows:
        if "failed" in row:
            lines.append(f"{row['variant']:<22} export failed its check: {row['failed']}")
            continue
        found = row["confident_detections"]
        coco = f"{row['coco_AP']['fp32']:.1f}/{row['coco_AP']['artifact']:.1f}"
        lines.append(f"{row['variant']:<22} {row['fp32']:>10.2f} {row['artifact_mAP']:>9.2f} {-row['drop']:>+6.2f} "
                     f"{coco:>17} {found['matched']:>5}/{found['reference_confident']:<6}")  # fmt: skip
    return "\n".join(lines)


def classifier_row(sidecar: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": sidecar["accuracy"],
        "quantization": sidecar["quantization"],
        "openvino": sidecar.get("openvino"),
    }


def run(
    arch: str, weights: str, out: Path, names: list[str], eval_images: int | None, max_drop: float
) -> list[dict[str, Any]]:
    return export_each(VARIANTS, names, out, arch, weights, classifier_row, "fashion-mnist",
                       eval_dataset="fashion-mnist", eval_images=eval_images, max_accuracy_drop=max_drop)  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'variant':<24} {'fp32 err':>9} {'artifact err':>13} {'diff':>7} {'agree':>7} {'logits rel':>11}"]
    for row in rows:
        if "failed" in row:
            lines.append(f"{row['variant']:<24} export failed its check: {row['failed']}")
            continue
        acc = row["accuracy"]
        fp32, art = 100 - acc["top1_accuracy"]["fp32"], 100 - acc["top1_accuracy"]["artifact"]
        lines.append(f"{row['variant']:<24} {fp32:>8.2f}% {art:>12.2f}% {art - fp32:>+7.2f} "
                     f"{100 * acc['top1_agreement']:>6.2f}% {acc['logits_rel_error']:>11.2e}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet56", help="zoo architecture (default: resnet56)")
    parser.add_argument(
        "--weights", default="resnet56_fashion_mnist", help="zoo id or run of a Fashion-MNIST classifier"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the artifacts")
    parser.add_argument("--variants", default="", help=f"comma-separated subset of {[v[0] for v in VARIANTS]}")
    parser.add_argument("--eval-images", type=POSITIVE_INT, help="test images to check on (default: all 10,000)")
    parser.add_argument("--max-accuracy-drop", type=NON_NEGATIVE, default=100.0,
                        help="passed to the export (default 100: record every variant, fail none)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--detector", help="measure this detector (zoo id or run) instead, on fashion-det")
    parser.add_argument("--detector-arch", default="resnet20", help="the detector's backbone (default: resnet20)")
    parser.add_argument("--data-root", type=Path, help="the fashion_det output the detector is checked on")
    args = parser.parse_args(argv)
    if args.detector:
        if args.data_root is None:
            parser.error("--detector needs --data-root (a fashion_det output)")
        args.out.mkdir(parents=True, exist_ok=True)
        names = [n for n in args.variants.split(",") if n]
        rows = run_detector(args.detector_arch, args.detector, args.data_root, args.out, names, args.max_accuracy_drop)
        print(f"{args.detector} on fashion-det's 500 test canvases, CPU {cpu_description()}")
        print(detector_table(rows))
        if args.json:
            atomic_write_json(args.json, {"weights": args.detector, "cpu_isa": cpu_description(), "rows": rows})
        return 0
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - {v[0] for v in VARIANTS})
    if unknown:
        parser.error(f"unknown variant(s) {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.arch, args.weights, args.out, names, args.eval_images, args.max_accuracy_drop)
    print(f"{args.weights} on the Fashion-MNIST test split, CPU {cpu_description()}")
    print(table(rows))
    if args.json:
        atomic_write_json(args.json, {"weights": args.weights, "cpu_isa": cpu_description(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
