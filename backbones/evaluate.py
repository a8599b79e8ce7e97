"""``python -m backbones.evaluate ARCH --weights W --dataset D``: top-1/top-5 error with the paper's
test protocols.

* ImageNet (``--data`` with ``val/<class>/*``): ``center`` (224 crop of the 256 resize), ``10crop``
  (Table 3's protocol) or ``multiscale`` (fully-convolutional, shorter side {224, 256, 384, 480,
  640}, scores averaged; Table 4-5's protocol).
* CIFAR-10 / Fashion-MNIST / synthetic: the test split at native size, as §4.2 tests.

Several ``--weights`` average their softmax scores (Table 5's ensembles). ``W`` is a zoo id, a run
directory of ``backbones.train`` (or its ``final.safetensors``: the run's ``config.json`` supplies
the preprocessing and classes), or a torchvision-format ``.pth`` (ImageNet preprocessing).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .augment import Preprocess
from .classification import topk_errors
from .cliargs import POSITIVE_INT
from .datasets import ArrayDataset, load_cifar10, load_fashion_mnist, make_synthetic
from .distributed import pick_device
from .fileio import atomic_write_json, read_json_object
from .registry import create_model
from .resnet import ResNet
from .weights import read_zoo

DATASETS = ("imagenet", "cifar10", "fashion-mnist", "synthetic")
PROTOCOLS = ("center", "10crop", "multiscale")


@dataclass
class LoadedModel:
    model: ResNet
    source: str
    class_names: list[str] | None
    preprocessing: dict[str, Any] | None
    seed: int = 0


def load_model(arch: str, weights: str) -> LoadedModel:
    """A model with its weights and, where known, its classes and preprocessing."""
    path = Path(weights)
    run_dir = path if path.is_dir() else path.parent
    config_path = run_dir / "config.json"
    if path.is_dir() or (path.is_file() and config_path.is_file()):
        if not config_path.is_file():
            raise ValueError(f"{path} is a directory without config.json; pass a weights file or a run directory")
        config = _read_run_config(config_path)
        if config.get("arch") != arch:
            raise ValueError(f"{config_path}: the run trained {config.get('arch')}, not {arch}")
        file = path / "final.safetensors" if path.is_dir() else path
        model = create_model(arch, num_classes=len(config["class_names"]), weights=file, **config["constructor"])
        return LoadedModel(model, str(file), config["class_names"], config.get("preprocessing"), config.get("seed", 0))
    if path.exists() or path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        return LoadedModel(create_model(arch, weights=path), str(path), None, None)
    record = read_zoo().get(weights)
    model = create_model(arch, weights=weights)
    if record is None:
        return LoadedModel(model, weights, None, None)
    return LoadedModel(model, weights, record.class_names, record.preprocessing, record.recipe.get("seed", 0))


def _read_run_config(path: Path) -> dict[str, Any]:
    """A run's config.json, with the fields a model is rebuilt from; else ValueError naming the file and field."""
    config = read_json_object(path)
    for key, kind in (("class_names", list), ("constructor", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{path}: field {key!r} must be a JSON {'array' if kind is list else 'object'} "
                             f"(written by backbones.train), got {config.get(key)!r:.60}")  # fmt: skip
    return config


def _difference(a: LoadedModel, b: LoadedModel) -> str:
    first, second = a.preprocessing or {}, b.preprocessing or {}
    keys = [k for k in sorted(set(first) | set(second)) if first.get(k) != second.get(k)]
    return ", ".join(f"{k} {first.get(k)} vs {second.get(k)}" for k in keys) or f"seed {a.seed} vs {b.seed}"


def load_test_split(dataset: str, data: Path | None, seed: int = 0) -> ArrayDataset:
    if dataset == "fashion-mnist":
        return load_fashion_mnist(data, "test")
    if dataset == "cifar10":
        if data is None:
            raise ValueError("CIFAR-10 needs --data DIR (cifar-10-batches-py)")
        return load_cifar10(data, "test")
    return make_synthetic("test", seed=seed)


def array_batches(
    dataset: ArrayDataset, preprocess: Preprocess, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(dataset), batch_size):
        yield preprocess(dataset.images[start : start + batch_size]), dataset.labels[start : start + batch_size]


def imagenet_scores(models: list[nn.Module], data: Path, protocol: str, device: torch.device,
                    class_names: list[str] | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(averaged softmax scores, labels) image by image over ImageNet's val split; with the models'
    ``class_names`` the val folders must be exactly those classes (else every label after a gap shifts)."""
    from .imagenet import ImageFolderDataset, average_softmax, protocol_views

    dataset = ImageFolderDataset(data, "val", class_names=class_names)
    heads = [getattr(model, "fc", None) for model in models]
    outputs = {head.out_features for head in heads if isinstance(head, nn.Linear)}
    if outputs and outputs != {len(dataset.class_names)}:  # else label i would be scored against output i
        raise ValueError(f"{dataset.directory}: {len(dataset.class_names)} class folders, but the model predicts "
                         f"{' / '.join(map(str, sorted(outputs)))} classes")  # fmt: skip
    for index in range(len(dataset)):
        sample = dataset[index]
        if sample is None:  # unreadable: already warned about, by name
            continue
        image, label = sample
        views = protocol_views(image, protocol)
        views = [v.to(device) for v in views] if isinstance(views, (list, tuple)) else views.to(device)
        scores = torch.stack([average_softmax(model, views) for model in models]).mean(0)
        yield scores.view(1, -1), torch.tensor([label], device=device)


@torch.no_grad()
def evaluate(arch: str, weights: list[str], dataset: str, data: Path | None = None, protocol: str = "center",
             batch_size: int = 500, device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Top-1/top-5 error (percent) of one model or an ensemble (softmax scores averaged)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    target = pick_device(device)
    loaded = [load_model(arch, w) for w in weights]
    models: list[nn.Module] = [item.model.to(target).eval() for item in loaded]
    named = [item for item in loaded if item.class_names is not None]
    for item in named[1:]:
        if item.class_names != named[0].class_names:
            raise ValueError(f"{item.source} and {named[0].source} predict different classes: an ensemble averages "
                             "scores class by class, so its members must share the class list")  # fmt: skip
    class_names = named[0].class_names if named else None
    if dataset == "imagenet":
        if data is None:
            raise ValueError("ImageNet evaluation needs --data DIR with val/<class>/*.JPEG")
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = imagenet_scores(
            models, data, protocol, target, class_names
        )
        scored = True
    else:
        if protocol != "center":
            raise ValueError(f"{dataset} is tested at its native size (§4.2): use --protocol center")
        missing = [item.source for item in loaded if item.preprocessing is None]
        if missing:
            raise ValueError(f"{missing[0]} carries no preprocessing record (use a zoo id or a run directory)")
        for item in loaded[1:]:  # one input feeds every member (and the synthetic test set depends on the seed)
            same_seed = dataset != "synthetic" or item.seed == loaded[0].seed
            if item.preprocessing != loaded[0].preprocessing or not same_seed:
                difference = _difference(item, loaded[0])
                raise ValueError(f"{item.source} and {loaded[0].source} preprocess differently ({difference}): "
                                 "an ensemble feeds one input to every member")  # fmt: skip
        test_set = load_test_split(dataset, data, loaded[0].seed)
        if class_names is not None and list(class_names) != list(test_set.class_names):
            raise ValueError(f"{named[0].source} was trained on the classes {class_names[:4]}... ({len(class_names)}), "
                             f"{dataset}'s test split has {list(test_set.class_names)[:4]}... "
                             f"({len(test_set.class_names)}): not the same task")  # fmt: skip
        preprocess = Preprocess.from_dict(loaded[0].preprocessing or {})
        batches = array_batches(test_set, preprocess, batch_size)
        scored = False
    wrong1 = wrong5 = count = 0
    for inputs, labels in batches:
        inputs, labels = inputs.to(target), labels.to(target)
        scores = inputs if scored else torch.stack([m(inputs).float().softmax(1) for m in models]).mean(0)
        wrong = topk_errors(scores, labels)
        wrong1, wrong5, count = wrong1 + int(wrong[1]), wrong5 + int(wrong[5]), count + len(labels)
    if count == 0:
        raise ValueError(f"no readable test images in {dataset}")
    return {"arch": arch, "weights": weights, "dataset": dataset, "protocol": protocol, "images": count,
            "top1_err": round(100 * wrong1 / count, 2), "top5_err": round(100 * wrong5 / count, 2)}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backbones.evaluate", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("arch", help="zoo model name")
    parser.add_argument("--weights", action="append", required=True,
                        help="zoo id, run directory, .safetensors or .pth; repeat to average an ensemble")  # fmt: skip
    parser.add_argument("--dataset", choices=DATASETS, required=True, help="test set: ImageNet val/, CIFAR-10 or "
                        "Fashion-MNIST test (10k), or the generated set")  # fmt: skip
    parser.add_argument(
        "--data", type=Path, help="dataset directory (ImageNet root, cifar-10-batches-py, Fashion-MNIST IDX)"
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="center", help="test protocol (ImageNet)")
    parser.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        default=500,
        help="images per forward pass of the in-memory test sets (default: 500); ImageNet's "
        "protocols score one image's views at a time",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args.arch, args.weights, args.dataset, args.data, args.protocol, args.batch_size, args.device)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    result["command"] = "python -m backbones.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
    ensemble = f" (ensemble of {len(args.weights)})" if len(args.weights) > 1 else ""
    print(f"{args.arch}{ensemble} on {args.dataset} test, {result['images']} images, protocol {args.protocol}: "
          f"top-1 error {result['top1_err']:.2f}% (accuracy {100 - result['top1_err']:.2f}%), "
          f"top-5 error {result['top5_err']:.2f}%")  # fmt: skip
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
