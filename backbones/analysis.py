"""Pictures of training runs and of trained nets, in the style of the paper's figures.

* ``python -m backbones.analysis RUN_DIR [RUN_DIR ...] --output curves.png``: error against
  iterations (Fig. 4 and 6: thin/dashed lines for training error, bold lines for test error), several
  runs on one chart (e.g. plain-20/56 against ResNet-20/56 for the degradation result). A run is a
  directory with a metrics.jsonl or a zoo id whose record kept its run's log. Prints a table of each
  run's final training error (mean over its last ``--train-window`` iterations) and test error.
* ``python -m backbones.analysis responses NET=WEIGHTS [...] --dataset D --output responses.png``:
  layer responses (Fig. 7): the std of every 3×3 layer's output after BN, before the nonlinearity
  or the addition, over the test images with the net in eval mode; top: by layer index, bottom:
  sorted by magnitude. ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .augment import Preprocess
from .cliargs import POSITIVE, POSITIVE_INT
from .distributed import pick_device
from .engine import metric_records
from .evaluate import array_batches, load_model, load_test_split
from .fileio import atomic_path, atomic_write_json
from .weights import zoo_run_log

RESPONSES = "responses"  # the first positional argument that selects Fig. 7 instead of training curves
RESPONSE_DATASETS = ("fashion-mnist", "cifar10", "synthetic")
RESPONSE_DEFINITION = ("std over all elements (images x channels x positions) of each 3x3 conv's BatchNorm output, "
                       "before the nonlinearity or the addition (He et al. 2015, §4.2, Fig. 7); eval mode, "
                       "test split")  # fmt: skip
# flags of `responses` only; None in the parser (defaults applied in _main_responses) so a stray one is noticed
RESPONSE_FLAGS = ("dataset", "data", "images", "batch_size", "device", "json")


# a run to draw or tabulate: its directory, its metrics.jsonl, a zoo id that kept its log, or its records already read
RunLog = str | Path | list[dict]


def _records(run: RunLog) -> list[dict]:
    return run if isinstance(run, list) else read_metrics(run)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl: a run directory, the file itself, or a zoo id whose record kept it.
    A torn line (the one a running run is writing) is dropped with a warning, as the trainer does."""
    source = str(path)
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        log = zoo_run_log(source) if not path.exists() else None  # a zoo id without a log says so
        if log is None:
            raise FileNotFoundError(f"{source}: neither a run directory with a metrics.jsonl, a metrics.jsonl, nor "
                                    "a zoo id whose record kept its training log")  # fmt: skip
        path = log
    records = []
    for number, _, record in metric_records(path):
        _check_record(record, f"{path}, line {number}")
        records.append(record)
    return records


# the fields the curves and the table read, by record kind
_PLOTTED_FIELDS = {"train": ("error",), "eval": ("top1_err",), "test": ("top1_err",)}


def _check_record(record: dict, where: str) -> None:
    fields = _PLOTTED_FIELDS.get(str(record.get("kind")))
    if fields is None:
        return
    iteration = record.get("iteration")
    if type(iteration) is not int or iteration < 0:
        raise ValueError(f"{where}: field 'iteration' ({record['kind']} record) must be a non-negative integer, "
                         f"got {iteration!r}")  # fmt: skip
    for field in fields:
        value = record.get(field)
        if field in record and (not isinstance(value, (int, float)) or type(value) is bool or not math.isfinite(value)):
            raise ValueError(f"{where}: field {field!r} must be a finite number, got {value!r}")


def error_series(records: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    """(iterations, errors in percent) of one metric; training errors are stored as fractions."""
    points = [(r["iteration"], r[key]) for r in records if r.get("kind") == kind and key in r]
    scale = 100.0 if kind == "train" else 1.0
    return [p[0] for p in points], [p[1] * scale for p in points]


def final_errors(records: list[dict], train_window: int) -> dict[str, Any]:
    """A run's end in numbers: its last iteration; the training error (percent) over its last ``train_window``
    iterations, each log record weighted by the iterations it covers; the final test error (the ``test``
    record of a run that evaluated on a validation split, else its last evaluation); and the lowest
    evaluation error with its iteration (information only: on the test split, picking it would select on
    the test set)."""
    train_iters, train_errors = error_series(records, "train", "error")
    eval_iters, eval_errors = error_series(records, "eval", "top1_err")
    _, tested = error_series(records, "test", "top1_err")
    last = max(train_iters + eval_iters, default=0)
    covered = 0.0
    weighted = 0.0
    for previous, iteration, error in zip([0, *train_iters], train_iters, train_errors):
        span = iteration - max(previous, last - train_window)  # a record averages the iterations since the last one
        if span > 0:
            covered += span
            weighted += span * error
    best = min(range(len(eval_errors)), key=eval_errors.__getitem__) if eval_errors else None
    final_test = tested[-1] if tested else eval_errors[-1] if eval_errors else None
    return {"iterations": last, "train_err": weighted / covered if covered else None, "test_err": final_test,
            "best_eval_err": eval_errors[best] if best is not None else None,
            "best_eval_iteration": eval_iters[best] if best is not None else None}  # fmt: skip


def final_errors_table(runs: Sequence[tuple[str, RunLog]], train_window: int) -> str:
    """Markdown table of ``final_errors`` for each (label, run), in order."""

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    lines = [f"| run | iterations | training error (last {train_window} it) | final test error "
             "| lowest evaluation error (at) |", "|---|---|---|---|---|"]  # fmt: skip
    for label, run in runs:
        end = final_errors(_records(run), train_window)
        best = "–" if end["best_eval_err"] is None else f"{cell(end['best_eval_err'])} ({end['best_eval_iteration']})"
        lines.append(f"| {label} | {end['iterations']} | {cell(end['train_err'])} | {cell(end['test_err'])} | {best} |")
    return "\n".join(lines)


def _draw(axis, runs: Mapping[str, RunLog], colors: list[str]) -> None:
    for index, (label, run) in enumerate(runs.items()):
        records = _records(run)
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


def _save(figure: Any, output: str | Path) -> Path:
    import matplotlib.pyplot as plt

    output = Path(output)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return output


PANEL_TITLE_CHARS = 60  # what fits across one 6.5-inch panel at matplotlib's default title size


def panel_title(title: str) -> str:
    """The title broken into lines that fit its panel (matplotlib clips a long one at the figure edge)."""
    return textwrap.fill(title, PANEL_TITLE_CHARS, break_on_hyphens=False)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels_figure(panels: Mapping[str, Mapping[str, RunLog]], ylim: tuple[float, float] | None = None) -> Any:
    """The matplotlib figure of side-by-side charts (e.g. plain nets | ResNets, as Fig. 6), laid out,
    not saved; each run: train dashed, test bold."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), dpi=110, sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (title, runs) in zip(axes[0], panels.items()):
        _draw(axis, runs, colors)
        axis.set_title(panel_title(title))
        if ylim:
            axis.set_ylim(*ylim)
    figure.tight_layout()
    return figure


def plot_panels(panels: Mapping[str, Mapping[str, RunLog]], output: str | Path,
                ylim: tuple[float, float] | None = None) -> Path:  # fmt: skip
    """Side-by-side charts (e.g. plain nets | ResNets, as Fig. 6) saved as a PNG at output."""
    return _save(panels_figure(panels, ylim), output)


def plot_runs(runs: Mapping[str, RunLog], output: str | Path, title: str = "",
              ylim: tuple[float, float] | None = None) -> Path:  # fmt: skip
    """One chart: for every run, training error (dashed) and test error (bold)."""
    return plot_panels({title: runs}, output, ylim)


# ---------------------------------------------------------------- layer responses (Fig. 7)
def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(conv name, the BatchNorm after it) for every 3×3 conv, in forward order.

    Modules are registered in execution order and each ``convK`` is followed by its ``bnK``
    (torchvision's layout): the CIFAR stem's 3×3 conv counts, the ImageNet stem's 7×7 and the 1×1
    convs (bottleneck ends, projection shortcuts) do not.
    """
    modules = dict(model.named_modules())
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            parent, _, conv = name.rpartition(".")
            bn_name = f"{parent}.{conv.replace('conv', 'bn', 1)}" if parent else conv.replace("conv", "bn", 1)
            bn = modules.get(bn_name)
            if not isinstance(bn, nn.BatchNorm2d):
                raise ValueError(f"3x3 conv {name} has no BatchNorm {bn_name} after it")
            layers.append((name, bn))
    return layers


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations of one layer's responses, merged batch by batch
    (Chan et al.'s pairwise update, in float64), for their std over all elements."""

    count: int = 0
    mean: float = 0.0
    squares: float = 0.0  # sum of squared deviations from the mean

    def add(self, response: torch.Tensor) -> None:
        variance, mean = torch.var_mean(response.detach().float(), correction=0)  # one pass over the batch
        count = response.numel()
        total = self.count + count
        delta = float(mean) - self.mean
        self.squares += float(variance) * count + delta * delta * self.count * count / total
        self.mean += delta * count / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.squares / self.count)


@torch.no_grad()
def layer_response_stds(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """{3×3 conv name: std of its BN output} over all images, channels and positions of ``batches``
    (population std), with the model in eval mode (BN uses its running statistics)."""
    layers = response_layers(model)
    if not layers:
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)} has no 3x3 conv followed by BatchNorm")
    moments = {name: _Moments() for name, _ in layers}

    def recorder(sums: _Moments) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            sums.add(output)  # here and now: the in-place ReLU after the BN overwrites this very tensor

        return hook

    handles = [bn.register_forward_hook(recorder(moments[name])) for name, bn in layers]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not moments[layers[0][0]].count:
        raise ValueError("no images to measure the layer responses on")
    return {name: sums.std for name, sums in moments.items()}


def pretty_arch(arch: str) -> str:
    """``resnet56`` -> ``ResNet-56``, ``plain20`` -> ``plain-20`` (the paper's names); others as they are."""
    match = re.fullmatch(r"(resnet|plain)(\d+)(.*)", arch)
    if not match:
        return arch
    family, depth, rest = match.groups()
    return f"{'ResNet' if family == 'resnet' else 'plain'}-{depth}{rest}"


@dataclass(frozen=True)
class NetSpec:
    """One ``[LABEL=]NET=WEIGHTS`` item of the command line."""

    arch: str
    weights: str
    label: str = ""

    @classmethod
    def parse(cls, item: str) -> NetSpec:
        parts = item.split("=")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"{item!r}: expected NET=WEIGHTS or LABEL=NET=WEIGHTS "
                             "(e.g. plain20=plain20_fashion_mnist_6ep)")  # fmt: skip
        return cls(parts[-2], parts[-1], parts[0] if len(parts) == 3 else "")


@dataclass
class NetResponses:
    arch: str
    weights: str
    residual: bool
    stds: dict[str, float]  # 3×3 conv name -> std, in forward order
    images: int
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        values = list(self.stds.values())
        return {"label": self.label, "arch": self.arch, "weights": self.weights, "residual": self.residual,
                "layers": list(self.stds), "std": [round(v, 5) for v in values],
                "mean_std": round(sum(values) / len(values), 5)}  # fmt: skip


def measure_responses(spec: NetSpec, dataset: str, data: Path | None = None, images: int | None = None,
                      batch_size: int = 500, device: str = "auto") -> NetResponses:  # fmt: skip
    """Load ``spec``'s net with its record's preprocessing and measure its responses on ``dataset``'s test
    split (its first ``images`` images; default: all)."""
    target = pick_device(device)
    loaded = load_model(spec.arch, spec.weights)
    if loaded.preprocessing is None:
        raise ValueError(f"{spec.weights} carries no preprocessing record (use a zoo id or a run directory)")
    test_set = load_test_split(dataset, data, loaded.seed)
    if loaded.class_names is not None and list(loaded.class_names) != list(test_set.class_names):
        raise ValueError(f"{spec.weights} was trained on the classes {loaded.class_names[:3]}..., {dataset}'s "
                         f"test split has {test_set.class_names[:3]}...: not the same task")  # fmt: skip
    if images is not None:
        if images > len(test_set):
            raise ValueError(f"--images {images}: {dataset}'s test split has {len(test_set)} images")
        test_set = test_set.subset(torch.arange(images), f"{test_set.name}[:{images}]")
    preprocess = Preprocess.from_dict(loaded.preprocessing)
    model = loaded.model.to(target)
    batches = (inputs.to(target) for inputs, _ in array_batches(test_set, preprocess, batch_size))
    stds = layer_response_stds(model, batches)
    return NetResponses(spec.arch, spec.weights, model.config["shortcut"] != "none", stds, len(test_set), spec.label)


def _labels(nets: Sequence[NetResponses]) -> list[str]:
    """Each net's label: given, or the paper's name of its arch (with the weights where two share one)."""
    names = [pretty_arch(net.arch) for net in nets]
    return [net.label or (f"{name} ({Path(net.weights).name})" if names.count(name) > 1 else name)
            for net, name in zip(nets, names)]  # fmt: skip


def plot_responses(panels: Mapping[str, Sequence[NetResponses]], output: str | Path, ymax: float | None = None) -> Path:
    """Fig. 7: per panel (a column), the std of each 3×3 layer's response by layer index (top) and
    sorted in descending order (bottom); plain nets dashed, ResNets solid."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 7.5), dpi=110, sharey="col",
                                squeeze=False)  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, (title, nets) in enumerate(panels.items()):
        by_layer, ranked = axes[0, column], axes[1, column]
        for index, (net, label) in enumerate(zip(nets, _labels(nets))):
            stds = list(net.stds.values())
            style = {"color": colors[index % len(colors)], "linestyle": "-" if net.residual else "--",
                     "linewidth": 1.8 if net.residual else 1.4, "label": label}  # fmt: skip
            layers = range(1, len(stds) + 1)
            by_layer.plot(layers, stds, **style)
            ranked.plot(layers, sorted(stds, reverse=True), **style)
        by_layer.set_title(panel_title(title))
        by_layer.set_xlabel("layer index (original order)")
        ranked.set_xlabel("layer index (sorted by magnitude)")
        for axis in (by_layer, ranked):
            axis.set_ylabel("std")
            axis.set_ylim(0, ymax)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, output)


def responses_report(nets: Sequence[NetResponses], dataset: str, command: str) -> dict[str, Any]:
    """The numbers behind the figure: per net, the std of each 3×3 layer in forward order."""
    entries = [dict(net.to_dict(), label=label) for net, label in zip(nets, _labels(nets))]
    return {"figure": "He et al. 2015, Fig. 7", "definition": RESPONSE_DEFINITION, "dataset": dataset, "split": "test",
            "images": nets[0].images, "command": command, "nets": entries}  # fmt: skip


# ---------------------------------------------------------------- command line
def _runs(items: list[str]) -> dict[str, str]:
    runs: dict[str, str] = {}
    for item in items:
        label, _, directory = item.rpartition("=")
        label = label or Path(directory).name
        if label in runs:
            raise ValueError(f"two runs labelled {label!r} ({runs[label]} and {directory}): name them LABEL=DIR")
        runs[label] = directory
    return runs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backbones.analysis",
        description="Plot training (dashed) and test (bold) error of runs against iterations (Fig. 4/6); or, with "
        f"'{RESPONSES}' first, the std of every 3x3 layer's response after BN of trained nets (Fig. 7).",
        usage="%(prog)s [RUN ...] [--panel TITLE LABEL=DIR ...] --output PNG [--title T] "
        "[--ymax Y] [--train-window N]\n"
        f"       %(prog)s {RESPONSES} [LABEL=]NET=WEIGHTS ... --dataset D --output PNG [--json OUT] [--images N]",
    )  # fmt: skip
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run directories (with metrics.jsonl) or zoo ids whose "
                        f"record kept the run's log, optionally LABEL=RUN; or '{RESPONSES}' then nets as "
                        "[LABEL=]NET=WEIGHTS: NET an architecture (plain20), WEIGHTS a zoo id, a run directory or a "
                        f"weights file (a run directory named '{RESPONSES}': write ./{RESPONSES})")  # fmt: skip
    parser.add_argument("--panel", nargs="+", action="append", metavar=("TITLE", "ITEM"),
                        help="a chart of its own: a title then runs (LABEL=DIR) or, for responses, nets "
                        "([LABEL=]NET=WEIGHTS); repeat for side-by-side charts (Fig. 6)")  # fmt: skip
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="", help="chart title (one chart; --panel titles its own)")
    parser.add_argument("--ymax", type=POSITIVE, default=None, help="upper limit of the y axis (error in percent; "
                        "std for responses)")  # fmt: skip
    curves = parser.add_argument_group("training curves only")
    curves.add_argument("--train-window", type=POSITIVE_INT, default=None, help="the printed table's training error is "
                        "the mean over each run's last N iterations (default: 2500, a 25th of §4.2's 64k)")  # fmt: skip
    responses = parser.add_argument_group(f"{RESPONSES} (Fig. 7) only")
    responses.add_argument("--dataset", choices=RESPONSE_DATASETS, help="whose test split to measure on (required)")
    responses.add_argument("--data", type=Path, help="dataset directory (cifar-10-batches-py, Fashion-MNIST IDX; "
                           "default for Fashion-MNIST: /usr/share/datasets/fashion-mnist)")  # fmt: skip
    responses.add_argument("--images", type=POSITIVE_INT, help="measure on the first N test images (default: all, "
                           "10000 for Fashion-MNIST and CIFAR-10)")  # fmt: skip
    responses.add_argument("--batch-size", type=POSITIVE_INT, help="images per forward pass (default: 500)")
    responses.add_argument("--device", help="auto (cuda if present), cpu, cuda, cuda:N (default: auto)")
    responses.add_argument("--json", type=Path, help="also write the stds (per net, in layer order) as JSON")
    return parser


def _one_line(error: Exception) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _main_responses(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    if args.train_window is not None:
        parser.error(f"--train-window: only for training curves, not for '{RESPONSES}'")
    if args.dataset is None:
        parser.error(f"{RESPONSES} needs --dataset ({', '.join(RESPONSE_DATASETS)})")
    items = {title: list(nets) for title, *nets in (args.panel or [])}
    if args.runs[1:]:
        items[args.title] = args.runs[1:]
    if not items or not all(items.values()):
        parser.error(f"{RESPONSES}: give nets as NET=WEIGHTS (e.g. plain20=plain20_fashion_mnist_6ep), or --panel "
                     "TITLE NET=WEIGHTS ...")  # fmt: skip
    try:
        specs = {title: [NetSpec.parse(item) for item in nets] for title, nets in items.items()}
        measured: dict[tuple[str, str], NetResponses] = {}
        for spec in (spec for nets in specs.values() for spec in nets):
            if (spec.arch, spec.weights) not in measured:
                measured[spec.arch, spec.weights] = measure_responses(
                    spec, args.dataset, args.data, args.images, args.batch_size or 500, args.device or "auto"
                )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {_one_line(error)}") from None
    panels = {title: [replace(measured[spec.arch, spec.weights], label=spec.label) for spec in nets]
              for title, nets in specs.items()}  # fmt: skip
    plot_responses(panels, args.output, args.ymax)
    unique = list(measured.values())
    for net, label in zip(unique, _labels(unique)):
        values = list(net.stds.values())
        named = label if Path(net.weights).name in label else f"{label} ({net.weights})"
        print(f"{named}: {len(values)} 3x3 layers, response std mean {sum(values) / len(values):.3f}, "
              f"min {min(values):.3f}, max {max(values):.3f}")  # fmt: skip
    if args.json:
        command = "python -m backbones.analysis " + shlex.join(argv)
        atomic_write_json(args.json, responses_report(unique, args.dataset, command))
        print(f"wrote {args.json}")
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs[:1] == [RESPONSES]:
        return _main_responses(parser, args, argv)
    stray = [f"--{key.replace('_', '-')}" for key in RESPONSE_FLAGS if getattr(args, key) is not None]
    if stray:
        parser.error(f"{', '.join(stray)}: only for '{RESPONSES}' "
                     f"(python -m backbones.analysis {RESPONSES} NET=WEIGHTS ...)")  # fmt: skip
    try:
        panels = {title: _runs(items) for title, *items in (args.panel or [])}
        if args.runs:
            panels[args.title] = _runs(args.runs)
    except ValueError as error:
        parser.error(str(error))
    if not panels or not all(panels.values()):
        parser.error("give run directories, or --panel TITLE LABEL=DIR ...")
    try:  # every log is read once, before anything is drawn: a bad one stops it with no PNG written
        logs: dict[str, Mapping[str, RunLog]] = {
            title: {label: read_metrics(run) for label, run in runs.items()} for title, runs in panels.items()
        }
        labelled = [(f"{title}: {label}" if len(logs) > 1 and title else label, records)
                    for title, runs in logs.items() for label, records in runs.items()]  # fmt: skip
        table = final_errors_table(labelled, args.train_window or 2500)
        plot_panels(logs, args.output, (0, args.ymax) if args.ymax else None)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {_one_line(error)}") from None
    print(table)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
