"""``python -m backbones.train ARCH``: train a zoo model with the paper's recipe for its family.

ImageNet nets default to §3.4 (batch 256, lr 0.1 divided by 10 on plateaus, wd 1e-4, momentum 0.9,
up to 600k iterations); CIFAR nets to §4.2 (batch 128, lr 0.1, /10 at 32k and 48k, stop at 64k,
45k/5k split on CIFAR-10, pad-4 crop + flip; depth >= 110 warms up at lr 0.01 until the training
error is below 80 %). Every hyper-parameter can be overridden. Multi-GPU / multi-node: run the same
command under ``torchrun --nproc-per-node N``; ``--batch-size`` is always the global batch.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .augment import ERASING_FILLS, ArrayBatches, Chain, CropFlip, Preprocess, RandomErasing
from .classification import classification_step, evaluate_classifier
from .cliargs import COUNT, MOMENTUM, NON_NEGATIVE, POSITIVE, POSITIVE_INT, DefaultsWhereTheyExist, number_in
from .datasets import ArrayDataset, channel_stats, load_cifar10, load_fashion_mnist, make_synthetic, train_val_split
from .distributed import DistContext, cleanup, init_distributed
from .engine import EngineConfig, Trainer, engine_config_dict, refuse_finished_or_running
from .fileio import atomic_write_json
from .registry import create_model, get_model_entry
from .schedule import SCHEDULES, LRSchedule
from .stopping import TrainingStopped
from .weights import save_weights

log = logging.getLogger("backbones.train")

DATASETS = ("imagenet", "cifar10", "fashion-mnist", "synthetic")

# The paper's recipes. Milestones are fractions of max_iters so that a shortened run keeps their shape.
RECIPES: dict[str, dict[str, Any]] = {
    "imagenet": dict(dataset="imagenet", batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="plateau",
                     max_iters=600_000, milestone_fractions=(), eval_every=5000, val_split=0),
    "cifar": dict(dataset="cifar10", batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step",
                  max_iters=64_000, milestone_fractions=(0.5, 0.75), eval_every=0, val_split=5000),
}  # fmt: skip
# Per-dataset changes to the recipe: Fashion-MNIST keeps its official 60k/10k split, and the
# generated set trains for a minute on a CPU (the README quickstart).
DATASET_OVERRIDES: dict[str, dict[str, Any]] = {
    "cifar10": dict(val_split=5000),  # §4.2's 45k/5k split, whatever the net's family
    "fashion-mnist": dict(val_split=0),
    "synthetic": dict(val_split=0, max_iters=240, batch_size=64, eval_every=80),
}


FAMILY_NAMES = {"imagenet": "ImageNet nets", "cifar": "CIFAR nets"}


def _recipe(key: str) -> str:
    """'recipe: X for ImageNet nets, Y for CIFAR nets', read from RECIPES so that --help cannot drift."""
    values = {FAMILY_NAMES[family]: recipe[key] for family, recipe in RECIPES.items()}
    if len(set(values.values())) == 1:
        return f"recipe: {next(iter(values.values()))}"
    return "recipe: " + ", ".join(f"{value} for {name}" for name, value in values.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backbones.train",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=DefaultsWhereTheyExist,
    )
    parser.add_argument("arch", help="zoo model name (python -m backbones.summary lists them)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="default: imagenet for ImageNet nets, cifar10 for CIFAR nets")
    data.add_argument("--data", type=Path, help="dataset directory (ImageNet train/ and val/, cifar-10-batches-py, "
                      "or Fashion-MNIST IDX files; default for Fashion-MNIST: "
                      "/usr/share/datasets/fashion-mnist)")  # fmt: skip
    data.add_argument("--val-split", type=COUNT, help="hold out this many training images for validation; 0 = "
                      "validate on the test split (recipe: 5000 on CIFAR-10, as §4.2's 45k/5k)")  # fmt: skip
    data.add_argument("--native-size", action="store_true", help="train and evaluate at the dataset's own image "
                      "size (Fashion-MNIST: 28x28, 7x7 before the pooling) instead of zero-padding it to the CIFAR "
                      "nets' 32x32 (§4.2); as the Random Erasing authors' Fashion-MNIST script, with 1.31x fewer "
                      "multiply-adds")  # fmt: skip
    data.add_argument("--workers", type=COUNT, default=8, help="DataLoader workers (ImageNet)")
    data.add_argument("--gpu-decode", action="store_true", help="decode ImageNet JPEGs on the GPU (torchvision.io)")
    data.add_argument("--data-on-device", choices=("auto", "yes", "no"), default="auto",
                      help="keep small in-memory datasets (CIFAR, Fashion-MNIST) and their augmentation "
                      "on the GPU")  # fmt: skip
    optim = parser.add_argument_group("optimisation (defaults: the paper's recipe for the model's family)")
    optim.add_argument(
        "--batch-size",
        type=POSITIVE_INT,
        help=f"global mini-batch size, split over processes ({_recipe('batch_size')})",
    )
    optim.add_argument("--lr", type=POSITIVE, help=f"initial learning rate ({_recipe('lr')})")
    optim.add_argument("--momentum", type=MOMENTUM, help=f"SGD momentum ({_recipe('momentum')})")
    optim.add_argument("--weight-decay", type=NON_NEGATIVE, help=f"L2 weight decay ({_recipe('weight_decay')})")
    optim.add_argument("--schedule", choices=SCHEDULES, help="step (÷10 at --milestones), plateau (÷10 when "
                       f"validation error stops improving, §3.4) or cosine ({_recipe('schedule')})")  # fmt: skip
    optim.add_argument("--milestones", type=POSITIVE_INT, nargs="*", help="iterations where the step schedule divides "
                       "lr by 10 (recipe: 50 %% and 75 %% of the run for CIFAR nets, "
                       "i.e. 32k and 48k of 64k)")  # fmt: skip
    optim.add_argument(
        "--patience", type=POSITIVE_INT, default=3, help="plateau: evaluations without improvement before ÷10"
    )
    length = optim.add_mutually_exclusive_group()
    length.add_argument(
        "--max-iters", type=POSITIVE_INT, help=f"training length in iterations ({_recipe('max_iters')})"
    )
    length.add_argument("--epochs", type=POSITIVE, help="training length in epochs (instead of --max-iters)")
    optim.add_argument("--warmup-lr", type=POSITIVE, help="learning rate during warm-up (recipe: 0.01, §4.2)")
    optim.add_argument("--warmup-iters", type=COUNT, default=0, help="fixed warm-up length: N iterations at "
                       "--warmup-lr before the schedule starts, or without --warmup-lr a linear ramp from lr/N to "
                       "lr")  # fmt: skip
    error_fraction = number_in(float, 0, 1, high_open=True, hint=" (a fraction: 0.8 = 80 %)")
    optim.add_argument("--warmup-until-error", type=error_fraction, help="warm up until the training error (a "
                       "fraction: 0.8 = 80 %%) is below this; recipe: 0.8 with lr 0.01 for CIFAR nets of 110+ layers "
                       "(§4.2); 0: no warm-up")  # fmt: skip
    probability = number_in(float, 0, 1)
    optim.add_argument("--random-erasing", type=probability, default=0.0, metavar="P",
                       help="Random Erasing (Zhong et al. 2017) after crop + flip: erase one box (area 2-40 %% of the "
                       "image, aspect 0.3-3.33) with probability P; 0: off, as the paper; "
                       "the authors use 0.5")  # fmt: skip
    optim.add_argument("--erasing-fill", choices=ERASING_FILLS, default="random",
                       help="erased pixels: random values (the Random Erasing paper) or the dataset mean (the "
                       "authors' Fashion-MNIST script)")  # fmt: skip
    optim.add_argument("--label-smoothing", type=number_in(float, 0, 1, high_open=True), default=0.0, metavar="E",
                       help="train against labels smoothed by E (Szegedy et al. 2016: 1-E on the class, E spread "
                       "over all classes; the timm and torchvision recipes use 0.1); 0: off, as the paper. The "
                       "evaluation loss stays plain cross-entropy")  # fmt: skip
    model = parser.add_argument_group("model")
    model.add_argument("--shortcut", choices=("A", "B", "C", "none"), help="override the shortcut option: "
                       "A zero-padded identity, B projections where dimensions change, C projections everywhere, "
                       "none a plain net")  # fmt: skip
    model.add_argument("--zero-init-residual", action="store_true", help="start each residual branch's last BN at "
                       "gamma 0 (Goyal et al. 2017; not in the paper)")  # fmt: skip
    model.add_argument("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across processes")
    run = parser.add_argument_group("run")
    run.add_argument("--output", type=Path, help="run directory (default: runs/ARCH-DATASET)")
    run.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    run.add_argument("--device", default="auto", help="auto (cuda when there is a GPU), cpu, cuda, cuda:N")
    run.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision autocast; "
                     "fp16 adds a grad scaler. On a CPU, bf16 needs AVX512-BF16 or AMX and still may not pay (measured "
                     "2.2x fp32 with AMX, 1.6x on a Zen 5 EPYC, 0.8x on an AVX512-BF16 Xeon without AMX): "
                     "benchmarks/train_throughput.py compares")  # fmt: skip
    run.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster with tensor cores "
                     "and on most CPUs: benchmarks/train_throughput.py compares)")  # fmt: skip
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--seed", type=COUNT, default=0, help="seeds the initial weights, the data order and the "
                     "augmentation")  # fmt: skip
    run.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    run.add_argument("--log-every", type=POSITIVE_INT, default=50, help="iterations between logged training metrics")
    run.add_argument("--eval-every", type=COUNT, help="iterations between evaluations (0: every epoch; "
                     "recipe: 5000 for ImageNet nets, every epoch for CIFAR nets)")  # fmt: skip
    run.add_argument("--checkpoint-every", type=POSITIVE_INT, default=1000, help="iterations between checkpoints")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return parser


@dataclass
class Data:
    train: Any  # a BatchSource
    val: Any
    test: Any | None
    class_names: list[str]
    preprocess: Preprocess | None  # for in-memory datasets
    channels: int


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """The run's full configuration: the family's recipe, dataset changes, then the user's flags."""
    entry = get_model_entry(args.arch)
    config = dict(RECIPES[entry.family])
    dataset = args.dataset or config["dataset"]
    config.update(DATASET_OVERRIDES.get(dataset, {}))
    config["dataset"] = dataset
    for key in ("batch_size", "lr", "momentum", "weight_decay", "schedule", "val_split", "eval_every"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if dataset == "imagenet" and args.val_split:
        raise SystemExit("--val-split applies to the in-memory datasets; ImageNet has its own val/ folder")
    if config["schedule"] == "plateau" and dataset not in ("imagenet", "synthetic") and not config["val_split"]:
        raise SystemExit(f"--schedule plateau lowers the lr when the validation error stalls; on {dataset} with "
                         "--val-split 0 that would be the test split. Hold out images with --val-split N, or use "
                         "--schedule step or cosine")  # fmt: skip
    config["max_iters_from_epochs"] = args.epochs
    if args.max_iters is not None:
        config["max_iters"] = args.max_iters
    config["milestones"] = args.milestones
    config["warmup_iters"] = args.warmup_iters
    depth = int("".join(ch for ch in args.arch.split("_")[0] if ch.isdigit()) or 0)
    until = args.warmup_until_error
    if until and args.warmup_iters:
        raise SystemExit("--warmup-iters and --warmup-until-error are two kinds of warm-up: give one")
    if until is None and not args.warmup_iters and entry.family == "cifar" and depth >= 110:
        until = 0.8  # §4.2: ResNet-110 (and 1202)
    config["warmup_until_error"] = until or None  # 0: off
    if args.warmup_lr is not None and not args.warmup_iters and not config["warmup_until_error"]:
        raise SystemExit("--warmup-lr is the lr of a warm-up, and this run has none: give --warmup-iters N or "
                         "--warmup-until-error E too")  # fmt: skip
    config["warmup_lr"] = (
        args.warmup_lr if args.warmup_lr is not None else (0.01 if config["warmup_until_error"] else None)
    )
    if args.milestones is not None and config["schedule"] != "step":
        raise SystemExit(f"--milestones: only the step schedule lowers the lr at milestones; this run's schedule "
                         f"is {config['schedule']} (add --schedule step, or drop --milestones)")  # fmt: skip
    if args.erasing_fill != "random" and not args.random_erasing:
        raise SystemExit("--erasing-fill applies to Random Erasing: give --random-erasing P (> 0) too")
    if args.random_erasing and dataset == "imagenet":
        raise SystemExit("--random-erasing is a batch augmentation of the in-memory datasets (CIFAR-10, "
                         "Fashion-MNIST); the ImageNet pipeline does not apply it")  # fmt: skip
    if args.native_size and dataset == "imagenet":
        raise SystemExit("--native-size applies to the in-memory datasets (CIFAR-10, Fashion-MNIST); ImageNet nets "
                         "take their crops at 224x224")  # fmt: skip
    config.update(arch=args.arch, family=entry.family, seed=args.seed, amp=args.amp, patience=args.patience,
                  data=str(args.data) if args.data else None, random_erasing=args.random_erasing,
                  erasing_fill=args.erasing_fill if args.random_erasing else None,
                  native_size=args.native_size, label_smoothing=args.label_smoothing)  # fmt: skip
    constructor: dict[str, Any] = {}
    if args.shortcut:
        constructor["shortcut"] = args.shortcut
    if args.zero_init_residual:
        constructor["zero_init_residual"] = True
    config["constructor"] = constructor
    return config


def load_array_data(config: dict[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    name, root = config["dataset"], config["data"]
    if name == "fashion-mnist":
        return load_fashion_mnist(root, "train"), load_fashion_mnist(root, "test")
    if name == "cifar10":
        if root is None:
            raise SystemExit("CIFAR-10 needs --data DIR (the cifar-10-batches-py directory or its parent)")
        return load_cifar10(root, "train"), load_cifar10(root, "test")
    return make_synthetic("train", seed=config["seed"]), make_synthetic("test", seed=config["seed"])


def train_augmentation(config: dict[str, Any], preprocess: Preprocess) -> CropFlip | Chain:
    """§4.2's pad-4 crop + flip, then Random Erasing where the run asks for it."""
    crop_flip = CropFlip(4)
    if not config.get("random_erasing"):
        return crop_flip
    erasing = RandomErasing(config["random_erasing"], fill=config["erasing_fill"], mean=preprocess.mean,
                            std=preprocess.std)  # fmt: skip
    return Chain((crop_flip, erasing))


def build_data(config: dict[str, Any], ctx: DistContext, data_on_device: str, workers: int, gpu_decode: bool) -> Data:
    seed, batch = config["seed"], config["batch_size"]
    if config["dataset"] == "imagenet":
        from .imagenet import ImageFolderBatches, ImageFolderDataset

        if config["data"] is None:
            raise SystemExit("ImageNet needs --data DIR with train/<class>/*.JPEG and val/<class>/*.JPEG")
        train_folder = ImageFolderDataset(config["data"], "train")
        val_folder = ImageFolderDataset(config["data"], "val", class_names=train_folder.class_names)

        def folder_batches(dataset: ImageFolderDataset, train: bool) -> ImageFolderBatches:
            return ImageFolderBatches(dataset, batch, train=train, seed=seed, rank=ctx.rank, world_size=ctx.world_size,
                                      num_workers=workers, gpu_decode=gpu_decode, device=ctx.device)  # fmt: skip

        return Data(folder_batches(train_folder, True), folder_batches(val_folder, False),
                    None, train_folder.class_names, None, 3)  # fmt: skip
    train_set, test_set = load_array_data(config)
    if config["val_split"]:
        train_set, val_set = train_val_split(train_set, config["val_split"], seed=seed)
    else:
        val_set = test_set
    on_device = data_on_device == "yes" or (data_on_device == "auto" and ctx.device.type == "cuda")
    if on_device:
        train_set, val_set, test_set = (d.to(ctx.device) for d in (train_set, val_set, test_set))
    mean, std = channel_stats(train_set)
    size = train_set.images.shape[-1] if config.get("native_size") else max(32, train_set.images.shape[-1])
    preprocess = Preprocess(size, train_set.channels, tuple(mean), tuple(std), pad_to=size)

    augment = train_augmentation(config, preprocess)

    def source(dataset: ArrayDataset, train: bool) -> ArrayBatches:
        return ArrayBatches(dataset, batch, preprocess, augment if train else None, shuffle=train,
                            drop_last=train, seed=seed, rank=ctx.rank, world_size=ctx.world_size)  # fmt: skip

    test = source(test_set, False) if config["val_split"] else None
    return Data(
        source(train_set, True), source(val_set, False), test, train_set.class_names, preprocess, train_set.channels
    )


def finish_schedule(config: dict[str, Any], batches_per_epoch: int) -> LRSchedule:
    if config["max_iters_from_epochs"] is not None:
        config["max_iters"] = max(1, math.ceil(config["max_iters_from_epochs"] * batches_per_epoch))
    given = config["milestones"] is not None
    if not given:
        config["milestones"] = [round(f * config["max_iters"]) for f in config["milestone_fractions"]]
    outside = [m for m in config["milestones"] if m >= config["max_iters"]]
    if config["schedule"] == "step" and given and outside:
        raise SystemExit(f"--milestones {' '.join(map(str, outside))}: at or past the run's end (iteration "
                         f"{config['max_iters']}), the lr would never drop there")  # fmt: skip
    if config["schedule"] == "step" and not config["milestones"]:
        raise SystemExit(f"--schedule step needs --milestones for {config['arch']} (its recipe lowers the lr on "
                         "validation plateaus: --schedule plateau); "
                         "a step schedule without steps never lowers it")  # fmt: skip
    return LRSchedule(config["lr"], config["schedule"], config["max_iters"], config["milestones"],
                      patience=config["patience"], warmup_iters=config["warmup_iters"], warmup_lr=config["warmup_lr"],
                      warmup_until_error=config["warmup_until_error"])  # fmt: skip


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on all weights, as the paper (and torchvision's ResNet recipe) does."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        get_model_entry(args.arch)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    config = resolve_config(args)
    try:
        ctx = init_distributed(args.device)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    torch.manual_seed(config["seed"])
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)  # CUDA avg-pool backward has no deterministic kernel
        torch.backends.cudnn.benchmark = False
    elif ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        ctx.per_process_batch(config["batch_size"])
    except ValueError as error:
        raise SystemExit(str(error)) from None
    output = args.output or Path("runs") / f"{args.arch}-{config['dataset']}"
    if not args.resume:
        try:
            refuse_finished_or_running(output)  # before config.json is written
        except FileExistsError as error:
            raise SystemExit(str(error)) from None
    try:
        data = build_data(config, ctx, args.data_on_device, args.workers, args.gpu_decode)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"cannot load {config['dataset']}: {error}") from None
    schedule = finish_schedule(config, len(data.train))
    constructor = dict(config["constructor"], in_chans=data.channels)
    config["constructor"] = constructor
    model = create_model(args.arch, num_classes=len(data.class_names), **constructor)
    if args.sync_bn and ctx.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(parameter_groups(model, config["weight_decay"]), lr=config["lr"],
                                momentum=config["momentum"])  # fmt: skip
    engine_config = EngineConfig(output, config["max_iters"], log_every=args.log_every,
                                 eval_every=config["eval_every"], checkpoint_every=args.checkpoint_every,
                                 amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                                 progress=not args.no_progress)  # fmt: skip
    config.update(engine=engine_config_dict(engine_config), class_names=data.class_names,
                  preprocessing=data.preprocess.to_dict() if data.preprocess else None,
                  world_size=ctx.world_size)  # fmt: skip
    step = partial(classification_step, label_smoothing=config["label_smoothing"])
    trainer = Trainer(model, optimizer, schedule, data.train, step, engine_config,
                      evaluate_fn=lambda m: evaluate_classifier(m, data.val.batches(0), ctx), ctx=ctx,
                      run_config=config)  # fmt: skip
    if ctx.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            atomic_write_json(output / "config.json", config, default=str)
        log.info("training %s on %s for %d iterations (%d per epoch), global batch %d, %d process(es) on %s -> %s",
                 args.arch, config["dataset"], config["max_iters"], len(data.train), config["batch_size"],
                 ctx.world_size, ctx.device, output)  # fmt: skip
    try:
        final = trainer.fit(resume=args.resume)
    except (FileExistsError, ValueError) as error:
        raise SystemExit(str(error)) from None
    except TrainingStopped as stopped:
        log.warning("%s", stopped)
        cleanup(ctx)
        return stopped.exit_code
    test = final  # without a validation split the evaluations are on the test split
    if data.test is not None:  # with one they were on the validation split: the test split is measured once, here
        test = evaluate_classifier(trainer.model, data.test.batches(0), ctx)
        trainer.record("test", test)
    if ctx.is_main:
        save_weights(
            trainer.model, output / "final.safetensors", metadata={"arch": args.arch, "dataset": config["dataset"]}
        )
        from .analysis import plot_runs

        plot_runs({args.arch: output}, output / "curves.png", title=f"{args.arch} on {config['dataset']}")
        split = "test" if data.test is not None or config["val_split"] == 0 else "validation"
        print(f"{args.arch} on {config['dataset']}: {split} top-1 error {test['top1_err']:.2f}% "
              f"(accuracy {100 - test['top1_err']:.2f}%, chance {100 / len(data.class_names):.0f}%) "
              f"on {int(test['images'])} images after {trainer.iteration} iterations")  # fmt: skip
        print(f"run directory: {output} (final.safetensors, curves.png, metrics.jsonl, tensorboard/)")
    cleanup(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
