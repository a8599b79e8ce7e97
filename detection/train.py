"""``python -m detection.train --backbone ARCH --dataset D --data-root R``: Faster R-CNN training on
the shared engine (``backbones.engine``): torchrun multi-GPU, AMP, atomic checkpoints and exact
resume, progress bar, JSON-lines and TensorBoard logs.

Defaults follow the Faster R-CNN set-up the paper used: shorter side 600 (longer at most 1000),
SGD momentum 0.9, weight decay 1e-4; VOC: lr 0.001 for 60k iterations then 0.0001 for 20k at one
image per batch; COCO: lr 0.001 for 240k then 0.0001 for 80k at 8 images per batch. With another
``--images-per-batch`` the learning rate scales linearly and the iterations inversely. Everything
can be overridden.

``--init CHECKPOINT`` starts from a torchvision Faster R-CNN (``fasterrcnn_resnet50_fpn`` or ``_v2``):
the detector gets that checkpoint's parts and every weight that fits; the class layers are
re-initialised when the class count differs (on a COCO-layout training set of COCO's categories
they keep the checkpoint's rows of those categories). Image sizes and anchors stay the recipe's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, cast

import torch

from backbones.cliargs import COUNT, MOMENTUM, NON_NEGATIVE, POSITIVE, POSITIVE_INT, DefaultsWhereTheyExist
from backbones.distributed import cleanup, init_distributed, pick_device
from backbones.engine import EngineConfig, Trainer, engine_config_dict, refuse_finished_or_running
from backbones.fileio import atomic_write_json
from backbones.registry import get_model_entry
from backbones.schedule import LRSchedule
from backbones.stopping import TrainingStopped
from backbones.weights import load_state_dict_file, save_weights

from .batches import DetectionBatches, detection_step
from .catalog import TEST_FOR_TRAIN, TRAIN_DATASETS, evaluation_sets, recipe_for, training_set
from .datasets import OnError
from .inference import evaluate_test_set
from .models import DESIGNS, BackboneInfo, backbone_normalisation, build_faster_rcnn
from .torchvision_checkpoints import (
    TorchvisionDetector,
    coco_category_names,
    identify_state_dict,
    load_into_new_detector,
)

log = logging.getLogger("detection.train")
MODEL_OPTIONS = ("min_size", "max_size", "anchor_sizes", "box_batch_size_per_image", "rpn_pre_nms_top_n_train",
                 "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_conv_depth",
                 "fpn_batchnorm", "box_head")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detection.train", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=DefaultsWhereTheyExist)  # fmt: skip
    parser.add_argument("--backbone", required=True, help="zoo model name, e.g. resnet101, plain20")
    parser.add_argument("--backbone-weights", help="zoo id, .safetensors, or a torchvision-format ImageNet .pth")
    parser.add_argument("--design", choices=DESIGNS, help="c4: the paper's (default); fpn: feature pyramid (the "
                        "default with --init)")  # fmt: skip
    parser.add_argument("--init", type=Path, metavar="CHECKPOINT", help="start from a torchvision Faster R-CNN "
                        "checkpoint (fasterrcnn_resnet50_fpn or _v2 .pth): its parts and all weights that fit; class "
                        "layers re-initialised if the class count differs")  # fmt: skip
    parser.add_argument("--freeze-at", type=COUNT, default=2, help="0 nothing, 1 stem, k stem + first k-1 stages")
    parser.add_argument("--dataset", choices=TRAIN_DATASETS, required=True, help="training set; its recipe sets the "
                        "defaults (voc07+12 trains on VOC07+12 trainval and tests on VOC07 test)")  # fmt: skip
    parser.add_argument("--data-root", type=Path, required=True,
                        help="VOCdevkit (VOC), the COCO root (annotations/, train2017/), "
                        "or a fashion_det output")  # fmt: skip
    parser.add_argument("--skip-bad-annotations", action="store_true", help="skip (and count) bad objects/images")
    parser.add_argument("--images-per-batch", type=POSITIVE_INT, help="global batch in images (recipe: VOC 1, COCO 8)")
    parser.add_argument("--lr", type=POSITIVE, help="base learning rate (default: the recipe's, scaled to the batch)")
    parser.add_argument("--steps", type=POSITIVE_INT, nargs="*", help="iterations where lr is divided by 10")
    parser.add_argument("--max-iters", type=POSITIVE_INT, help="training length (default: the recipe's, "
                        "scaled to the batch; "
                        "a shorter run keeps the recipe's lr steps at the same fractions)")  # fmt: skip
    parser.add_argument("--warmup-iters", type=COUNT, help="linear lr warm-up length (default: the recipe's)")
    parser.add_argument("--momentum", type=MOMENTUM, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=NON_NEGATIVE, default=1e-4, help="L2 weight decay")
    parser.add_argument("--min-size", type=POSITIVE_INT, help="shorter image side (paper: 600)")
    parser.add_argument("--max-size", type=POSITIVE_INT, help="longest image side (paper: 1000)")
    parser.add_argument("--output", type=Path, help="run directory (default runs/det-BACKBONE-DESIGN-DATASET)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is a GPU), cpu, cuda, cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="mixed precision autocast; fp16 adds a grad scaler")  # fmt: skip
    parser.add_argument("--workers", type=COUNT, default=2, help="DataLoader workers decoding images")
    parser.add_argument(
        "--seed", type=COUNT, default=0, help="seeds the new layers' initial weights, the data order and the flips"
    )
    parser.add_argument("--log-every", type=POSITIVE_INT, default=20, help="iterations between logged training metrics")
    parser.add_argument("--checkpoint-every", type=POSITIVE_INT, default=500, help="iterations between checkpoints")
    parser.add_argument(
        "--eval-every", type=POSITIVE_INT, help="iterations between test-set evaluations (default: at the end)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return parser


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    recipe = recipe_for(args.dataset)
    images = args.images_per_batch or recipe.images_per_batch
    lr, steps, iters = recipe.scaled(images)
    if args.max_iters is not None and args.steps is None:  # keep the recipe's shape over a shorter run
        steps = [round(s * args.max_iters / iters) for s in steps]
    max_iters = args.max_iters or iters
    late = [step for step in (args.steps or []) if step >= max_iters]
    if late:
        raise ValueError(f"--steps {' '.join(map(str, late))}: at or past the run's end (iteration {max_iters}), "
                         "the lr would never drop there")  # fmt: skip
    model = dict(recipe.model)
    for key in ("min_size", "max_size"):
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    return dict(backbone=args.backbone, backbone_weights=args.backbone_weights,
                design=args.design or ("fpn" if args.init else "c4"),
                freeze_at=args.freeze_at, dataset=args.dataset, data_root=str(args.data_root),
                images_per_batch=images, lr=args.lr if args.lr is not None else lr,
                steps=args.steps if args.steps is not None else steps, max_iters=args.max_iters or iters,
                warmup_iters=args.warmup_iters if args.warmup_iters is not None else recipe.warmup_iters,
                momentum=args.momentum, weight_decay=args.weight_decay, model=model, seed=args.seed,
                amp=args.amp)  # fmt: skip


def read_init_checkpoint(args: argparse.Namespace) -> tuple[TorchvisionDetector, dict[str, torch.Tensor]]:
    """The --init checkpoint, identified and checked against the other flags."""
    state = load_state_dict_file(args.init)
    detector = identify_state_dict(state, str(args.init))
    if detector.backbone != args.backbone:
        raise ValueError(f"--init {args.init}: a torchvision {detector.name} checkpoint, whose backbone is "
                         f"{detector.backbone}, not --backbone {args.backbone}")  # fmt: skip
    if args.design not in (None, "fpn"):
        raise ValueError(f"--init {args.init}: a torchvision {detector.name} checkpoint is an FPN detector, "
                         f"not --design {args.design}")  # fmt: skip
    if args.backbone_weights is not None:
        raise ValueError(f"--init {args.init} holds the backbone's weights too; leave out --backbone-weights")
    return detector, state


def coco_category_ids(train_set: Any, detector: TorchvisionDetector) -> list[int] | None:
    """The COCO category id of each training label when the training set's categories are COCO's (so
    the checkpoint's class rows carry over), else None."""
    if not detector.is_coco or not hasattr(train_set, "label_to_category_id"):
        return None
    coco = coco_category_names()
    ids = [train_set.label_to_category_id[label] for label in range(1, len(train_set.class_names) + 1)]
    same = all(0 < cid < len(coco) and coco[cid] == name for cid, name in zip(ids, train_set.class_names))
    return ids if same else None


def start_from_checkpoint(model: torch.nn.Module, detector: TorchvisionDetector, state: dict[str, torch.Tensor],
                          train_set: Any) -> dict[str, Any]:  # fmt: skip
    """Load the --init checkpoint into the new detector; returns the run's record of it (config "init")."""
    category_ids = coco_category_ids(train_set, detector)
    reinitialised = load_into_new_detector(model, state, detector, category_ids)
    return {"file": detector.source, "checkpoint": detector.name, "version": detector.version,
            "num_classes": detector.num_classes, "class_rows_by_category_id": category_ids is not None,
            "reinitialised": reinitialised}  # fmt: skip


def build_detector(config: dict[str, Any], num_classes: int, load_backbone_weights: bool = True) -> torch.nn.Module:
    """The detector a run's config describes (shared with detection.eval).

    Without the backbone weights (a trained run's weights hold them) the backbone still gets the input
    channels and normalisation the run trained with: recorded in its config (``channels``,
    ``image_mean``/``image_std``), for older runs from the backbone's zoo record."""
    options: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()
                               if k in MODEL_OPTIONS}  # fmt: skip
    if load_backbone_weights:
        options["backbone_weights"] = config["backbone_weights"]
    else:
        channels = config.get("channels")
        options["in_chans"] = channels
        options["normalisation"] = ((config["image_mean"], config["image_std"]) if "image_mean" in config
                                    else backbone_normalisation(config.get("backbone_weights"),
                                                                channels or 3))  # fmt: skip
    return build_faster_rcnn(config["backbone"], num_classes, design=config["design"], freeze_at=config["freeze_at"],
                             **options)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        get_model_entry(args.backbone)
        pick_device(args.device)  # a bad --device fails now, not after the data is read
        config = resolve_config(args)
        if args.eval_every and not TEST_FOR_TRAIN[args.dataset]:
            raise ValueError(f"--eval-every: {args.dataset} has no public test set to evaluate on (score the run "
                             "afterwards with python -m detection.eval)")  # fmt: skip
        init = read_init_checkpoint(args) if args.init is not None else None
        on_error: OnError = "skip" if args.skip_bad_annotations else "raise"
        train_set = training_set(args.dataset, args.data_root, on_error)
        class_names = list(train_set.class_names)
        if init is not None:
            config["model"].update(init[0].parts)
        torch.manual_seed(args.seed)  # the new layers' initial weights
        model = build_detector(config, len(class_names))
        if init is not None:
            config["init"] = start_from_checkpoint(model, *init, train_set)
            init = None  # frees the checkpoint's tensors
        test_name = TEST_FOR_TRAIN[args.dataset]
        if test_name:  # fail now, not after training, if the test set is missing or malformed
            evaluation_sets(test_name, args.data_root)
        output = args.output or Path("runs") / f"det-{args.backbone}-{config['design']}-{args.dataset}"
        if not args.resume:
            refuse_finished_or_running(output)  # before config.json is written
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise SystemExit(f"error: {error}") from None
    try:
        ctx = init_distributed(args.device)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    info = cast(BackboneInfo, model.backbone_info)  # set by build_faster_rcnn; Module.__getattr__ types it loosely
    channels = info.in_chans
    config.update(class_names=class_names, channels=channels, image_mean=list(info.mean), image_std=list(info.std),
                  world_size=ctx.world_size)  # fmt: skip
    try:
        source = DetectionBatches(train_set, config["images_per_batch"], train=True, channels=channels,
                                  seed=args.seed, rank=ctx.rank, world_size=ctx.world_size,
                                  num_workers=args.workers)  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"error: {args.dataset} in {args.data_root}: {error} (--images-per-batch)") from None

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        # fp32 even when training in bf16/fp16: half-precision box coordinates (bf16: 0.5 px steps at 100 px)
        # would cost AP at the strict IoU thresholds of COCO's mAP@[.5,.95]
        assert test_name is not None  # the Trainer gets evaluate_fn only when there is a test set
        with torch.autocast(ctx.device.type, enabled=False):
            results, _, _ = evaluate_test_set(m, test_name, args.data_root, channels=channels, device=ctx.device)
        flat = {f"voc_{k}": v for k, v in results.get("voc", {}).items() if k == "mAP"}
        flat.update({f"coco_{k}": v for k, v in results.get("coco", {}).items() if k in ("AP", "AP50")})
        return flat

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config["lr"], momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = LRSchedule(
        config["lr"], "step", config["max_iters"], config["steps"], warmup_iters=config["warmup_iters"]
    )
    engine_config = EngineConfig(output, config["max_iters"], log_every=args.log_every,
                                 eval_every=args.eval_every or config["max_iters"],
                                 checkpoint_every=args.checkpoint_every,
                                 amp=args.amp, progress=not args.no_progress, monitor="none")  # fmt: skip
    config["engine"] = engine_config_dict(engine_config)
    trainer = Trainer(
        model,
        optimizer,
        schedule,
        source,
        detection_step,
        engine_config,
        evaluate_fn=evaluate_fn if ctx.is_main and test_name else None,
        ctx=ctx,
        run_config=config,
    )
    if ctx.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            atomic_write_json(output / "config.json", config, default=str)
        if "init" in config:
            init_record = config["init"]
            kept = (
                "all weights, the class layers' rows picked by COCO category id"
                if init_record["class_rows_by_category_id"]
                else "all weights"
            )
            if init_record["reinitialised"]:
                kept = (
                    f"all weights but the class layers, re-initialised for {len(class_names) + 1} outputs "
                    f"instead of {init_record['num_classes']}: {', '.join(init_record['reinitialised'])}"
                )
            log.info("initialised from %s (torchvision %s): %s", args.init, init_record["checkpoint"], kept)
        log.info("training %s Faster R-CNN (%s) on %s: %d images, %d classes, %d iterations of %d images, lr %g -> %s",
                 args.backbone, config["design"], args.dataset, len(train_set), len(class_names), config["max_iters"],
                 config["images_per_batch"], config["lr"], output)  # fmt: skip
    try:
        final = trainer.fit(resume=args.resume)
    except (FileExistsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    except TrainingStopped as stopped:
        log.warning("%s", stopped)
        cleanup(ctx)
        return stopped.exit_code
    if ctx.is_main:
        save_weights(
            trainer.model,
            output / "final.safetensors",
            metadata={"backbone": args.backbone, "design": config["design"]},
        )
        scores = ", ".join(f"{k} {v:.1f}" for k, v in final.items())
        print(f"{args.backbone} {config['design']} on {args.dataset} after {trainer.iteration} iterations: "
              f"{test_name or 'no test set'} {scores}")  # fmt: skip
        if test_name:
            print(f"run directory: {output}; score it with: python -m detection.eval --backbone {args.backbone} "
                  f"--weights {output} --dataset {test_name} --data-root {args.data_root}")  # fmt: skip
    cleanup(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
