"""Pictures of training runs: error against iterations, in the style of the paper's Fig. 4 and 6
(thin/dashed lines for training error, bold lines for validation/test error).

``python -m backbones.analysis RUN_DIR [RUN_DIR ...] --output curves.png`` draws several runs on
one chart (e.g. plain-20/56 against ResNet-20/56 for the degradation result).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from .cliargs import POSITIVE
from .fileio import atomic_path


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON record ({error})") from None
    return records


def error_series(records: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    """(iterations, errors in percent) of one metric; training errors are stored as fractions."""
    points = [(r["iteration"], r[key]) for r in records if r.get("kind") == kind and key in r]
    scale = 100.0 if kind == "train" else 1.0
    return [p[0] for p in points], [p[1] * scale for p in points]


def _draw(axis, runs: Mapping[str, str | Path], colors: list[str]) -> None:
    for index, (label, run) in enumerate(runs.items()):
        records = read_metrics(run)
        color = colors[index % len(colors)]
        iters, errors = error_series(records, "train", "error")
        axis.plot(iters, errors, "--", color=color, linewidth=1, label=f"{label} train")
        iters, errors = error_series(records, "eval", "top1_err")
        if iters:
            axis.plot(iters, errors, "-", color=color, linewidth=2.2, label=f"{label} test")
    axis.set_xlabel("iteration")
    axis.set_ylabel("error (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def plot_panels(panels: Mapping[str, Mapping[str, str | Path]], output: str | Path,
                ylim: tuple[float, float] | None = None) -> Path:  # fmt: skip
    """Side-by-side charts (e.g. plain nets | ResNets, as Fig. 6); each run: train dashed, test bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), dpi=110, sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (title, runs) in zip(axes[0], panels.items()):
        _draw(axis, runs, colors)
        axis.set_title(title)
        if ylim:
            axis.set_ylim(*ylim)
    figure.tight_layout()
    output = Path(output)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return output


def plot_runs(runs: dict[str, str | Path], output: str | Path, title: str = "", ylim: tuple[float, float] | None = None) -> Path:
    """One chart: for every run, training error (dashed) and test error (bold)."""
    return plot_panels({title: runs}, output, ylim)


def _runs(items: list[str]) -> dict[str, str]:
    runs = {}
    for item in items:
        label, _, directory = item.rpartition("=")
        runs[label or Path(directory).name] = directory
    return runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backbones.analysis",
                                     description="Plot training (dashed) and test (bold) error of runs against iterations.")  # fmt: skip
    parser.add_argument("runs", nargs="*", help="run directories (with metrics.jsonl), optionally LABEL=DIR")
    parser.add_argument("--panel", nargs="+", action="append", metavar=("TITLE", "LABEL=DIR"),
                        help="a chart of its own: a title then runs; repeat for side-by-side charts (Fig. 6)")  # fmt: skip
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="", help="chart title (one chart; --panel titles its own)")
    parser.add_argument("--ymax", type=POSITIVE, default=None, help="upper limit of the error axis (percent)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    panels = {title: _runs(items) for title, *items in (args.panel or [])}
    if args.runs:
        panels[args.title] = _runs(args.runs)
    if not panels or not all(panels.values()):
        parser.error("give run directories, or --panel TITLE LABEL=DIR ...")
    plot_panels(panels, args.output, (0, args.ymax) if args.ymax else None)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
