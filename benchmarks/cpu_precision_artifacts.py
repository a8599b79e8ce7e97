"""The ResNet-50 artifacts README's CPU speed table compares, one per runtime and precision:

    python benchmarks/cpu_precision_artifacts.py --out runs/r50-cpu
    python -m deploy.bench runs/r50-cpu/*.onnx runs/r50-cpu/*.xml --eager resnet50 --batch 1 --threads 1 --no-predict
    python -m deploy.bench runs/r50-cpu/*.onnx runs/r50-cpu/*.xml --eager resnet50 --batch 32 --threads 2 --no-predict

The weights are a seeded random initialisation (speed does not depend on them; ImageNet weights do
not ship), INT8 is calibrated on 64 natural-looking generated 320x256 images (deploy.samples) and
checked on 16 more (agreement only: no labels, so --max-accuracy-drop is lifted). Existing
artifacts are kept: delete the folder to rebuild.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("r50-fp32.onnx", {}),
    ("r50-int8-sym.onnx", {"precision": "int8", "int8_scheme": "symmetric"}),
    ("r50-int8-asym.onnx", {"precision": "int8", "int8_scheme": "asymmetric"}),
    ("r50-fp32.xml", {"format": "openvino"}),
    ("r50-bf16.xml", {"format": "openvino", "precision": "bf16"}),
    ("r50-int8-asym.xml", {"format": "openvino", "precision": "int8", "int8_scheme": "asymmetric"}),
    ("r50-int8-sym7.xml", {"format": "openvino", "precision": "int8", "int8_reduce_range": True}),
    ("r50-int8-nncf.xml", {"format": "openvino", "precision": "int8", "openvino_int8": "nncf"}),
]


def main(argv: list[str] | None = None) -> int:
    from deploy.export import export_model
    from deploy.samples import natural_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the artifacts")
    parser.add_argument("--arch", default="resnet50", help="zoo architecture (default: resnet50)")
    args = parser.parse_args(argv)
    photos = args.out / "calibration"
    photos.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(natural_images(80, (256, 320), 3, seed=5).permute(0, 2, 3, 1).numpy()):
        if not (photos / f"{index:03d}.jpg").exists():
            Image.fromarray(image).save(photos / f"{index:03d}.jpg", quality=95)
    for name, options in VARIANTS:
        out = args.out / name
        if out.exists():
            print(f"kept {out}")
            continue
        torch.manual_seed(0)
        reduced = options.get("precision", "fp32") != "fp32"
        export_model(args.arch, None, out, calibration_dir=photos if reduced else None, calibration_images=64,
                     max_accuracy_drop=100.0, **options)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
