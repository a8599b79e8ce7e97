"""Accuracy of reduced-precision artifacts beside fp32, measured by ``deploy.export``'s own check.

    python benchmarks/precision_accuracy.py --weights resnet56_fashion_mnist --out runs/precision

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
from pathlib import Path
from typing import Any

from backbones.cliargs import NON_NEGATIVE, POSITIVE_INT
from backbones.engine import cpu_description
from backbones.fileio import atomic_write_text

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


def run(arch: str, weights: str, out: Path, names: list[str], eval_images: int | None, max_drop: float) -> list[dict[str, Any]]:
    from deploy.export import ExportError, export_model

    rows = []
    for name, fmt, precision, extra in VARIANTS:
        if names and name not in names:
            continue
        artifact = out / f"{weights}-{name}{SUFFIX[fmt]}"
        try:
            result = export_model(arch, weights, artifact, format=fmt, precision=precision, eval_dataset="fashion-mnist",
                                  eval_images=eval_images, calibration_dataset="fashion-mnist" if precision == "int8" else None,
                                  max_accuracy_drop=max_drop, **extra)  # fmt: skip
        except ExportError as error:
            rows.append({"variant": name, "failed": str(error)})
            continue
        sidecar = json.loads(result.sidecar.read_text())
        rows.append({"variant": name, "artifact": str(artifact), "accuracy": sidecar["accuracy"],
                     "quantization": sidecar["quantization"], "openvino": sidecar.get("openvino")})  # fmt: skip
    return rows


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
    parser.add_argument("--weights", default="resnet56_fashion_mnist", help="zoo id or run of a Fashion-MNIST classifier")
    parser.add_argument("--out", type=Path, required=True, help="folder for the artifacts")
    parser.add_argument("--variants", default="", help=f"comma-separated subset of {[v[0] for v in VARIANTS]}")
    parser.add_argument("--eval-images", type=POSITIVE_INT, help="test images to check on (default: all 10,000)")
    parser.add_argument("--max-accuracy-drop", type=NON_NEGATIVE, default=100.0,
                        help="passed to the export (default 100: record every variant, fail none)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - {v[0] for v in VARIANTS})
    if unknown:
        parser.error(f"unknown variant(s) {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.arch, args.weights, args.out, names, args.eval_images, args.max_accuracy_drop)
    print(f"{args.weights} on the Fashion-MNIST test split, CPU {cpu_description()}")
    print(table(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"weights": args.weights, "cpu_isa": cpu_description(), "rows": rows},
                                                indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
