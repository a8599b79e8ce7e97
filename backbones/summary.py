"""``python -m backbones.summary [--json]``: layers, parameters and multiply-add GFLOPs of every model.

Multiply-adds are counted by PyTorch's own operator-level counter (``torch.utils.flop_counter``,
which counts 2 FLOPs per multiply-add in convolutions and matrix products) on a meta-device forward
pass at the model's native input size, so the figures come from the real graph, not a table.
Like the paper and torchvision, only convolutions and the fc layer count; BN, ReLU, pooling and the
shortcut additions do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model, get_model_entry, list_models
from .resnet import count_weighted_layers

# Published figures each model is checked against: (figure, source).
TABLE1_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet18_a": 1.8, "resnet34_a": 3.6, "plain34": 3.6,
                 "resnet50_paper": 3.8, "resnet101_paper": 7.6, "resnet152_paper": 11.3}  # fmt: skip
TORCHVISION_GFLOPS = {"resnet50": 4.09, "resnet101": 7.80, "resnet152": 11.51}
TABLE6_PARAMS_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                   "resnet1202": 19.4}  # fmt: skip


def count_multiply_adds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on a meta tensor of ``input_shape`` (model on meta too)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(input_shape, device=device))
    return counter.get_total_flops() // 2


@dataclass
class ModelSummary:
    name: str
    family: str
    input_size: int
    weighted_layers: int
    params: int
    gflops: float  # multiply-add GFLOPs, the paper's "FLOPs"
    reference: str | None = None  # what the figure is checked against
    reference_value: float | None = None
    deviation_pct: float | None = None


def summarize(name: str) -> ModelSummary:
    entry = get_model_entry(name)
    with torch.device("meta"):
        model = create_model(name).eval()
    size = entry.input_size
    gflops = count_multiply_adds(model, (1, model.in_chans, size, size)) / 1e9
    params = sum(p.numel() for p in model.parameters())
    summary = ModelSummary(name, entry.family, size, count_weighted_layers(model), params, round(gflops, 4))
    if name in TABLE1_GFLOPS:
        summary.reference, summary.reference_value = "paper Table 1 GFLOPs", TABLE1_GFLOPS[name]
        measured = gflops
    elif name in TORCHVISION_GFLOPS:
        summary.reference, summary.reference_value = "torchvision GFLOPS", TORCHVISION_GFLOPS[name]
        measured = gflops
    elif name in TABLE6_PARAMS_M:
        summary.reference, summary.reference_value = "paper Table 6 params (M)", TABLE6_PARAMS_M[name]
        measured = params / 1e6
    if summary.reference_value is not None:
        summary.deviation_pct = round(100 * (measured - summary.reference_value) / summary.reference_value, 2)
    return summary


def format_table(rows: list[ModelSummary]) -> str:
    header = f"{'model':<16} {'family':<8} {'input':>5} {'layers':>6} {'params':>9} {'GFLOPs':>8}  reference"
    lines = [header, "-" * len(header)]
    for row in rows:
        ref = ""
        if row.reference:
            ref = f"{row.reference_value} ({row.reference}, {row.deviation_pct:+.1f}%)"
        lines.append(
            f"{row.name:<16} {row.family:<8} {row.input_size:>5} {row.weighted_layers:>6} "
            f"{row.params / 1e6:>8.2f}M {row.gflops:>8.3f}  {ref}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backbones.summary",
        description="Weighted layers, parameters and multiply-add GFLOPs of every zoo model at its native "
        "input (224x224 ImageNet nets, 32x32 CIFAR nets), counted on the real graph by "
        "torch.utils.flop_counter, with the paper's (or torchvision's) published figure and the deviation.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--models", default="*", help="glob of model names (default: all), e.g. 'resnet*'")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = list_models(args.models)
    if not names:
        parser.error(f"no model matches {args.models!r}")
    rows = [summarize(name) for name in names]
    if args.json:
        json.dump([asdict(row) for row in rows], sys.stdout, indent=1)
        print()
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
