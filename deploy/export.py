"""``python -m deploy.export --model ARCH --weights W --format onnx|openvino|tensorrt|aoti|eager
[--precision fp32|fp16|int8|bf16] --output PATH``

Exports a zoo classifier (or, with ``--detector``, a trained Faster R-CNN) and checks it before
anything is written: the artifact runs in its own runtime and is compared with PyTorch eager fp32 on
natural-looking images; a reduced-precision artifact is also compared on real held-out images, and
fails when it loses more than ``--max-accuracy-drop`` points. A failed check leaves nothing behind.

Precision lives in the ONNX graph, decided and checked here on the CPU (deploy.exporters.precision):

* fp16: fp16 tensors with fp32 inputs/outputs (onnxconverter-common), ops that need fp32 kept fp32;
* int8: Q/DQ nodes, calibrated on ``--calibration-dir DIR`` (any layout, searched recursively) or
  ``--calibration-dataset fashion-mnist`` (its training split, never the test split);
  ``--int8-scheme symmetric`` (default: zero points 0, what TensorRT needs, fast in OpenVINO) or
  ``asymmetric`` (uint8 activations, fast in onnxruntime's CPU kernels).

Formats: ``onnx`` (that graph); ``openvino`` (IR ``.xml`` + ``.bin`` from it; int8 from the Q/DQ
graph or ``--openvino-int8 nncf``; ``bf16`` is the fp32 IR with OpenVINO's bf16 hint, an explicit
choice); ``tensorrt`` (a strongly typed engine built from it, TensorRT 10.x or 11.x, needs a GPU);
``aoti`` (torch.export + AOTInductor, ``.pt2``); ``eager`` (safetensors + sidecar).

W is a zoo id, a backbones.train run directory or a weights file; without --weights the model is
randomly initialised (a warning; for testing pipelines only). Detectors: ``--detector c4|fpn
--weights RUN`` (a detection.train run directory) exports the whole detector as one graph (resize,
normalise, RPN, RoI heads, box decoding, NMS): one float image (C, H, W) in [0, 1] in, boxes / labels
/ scores out; see deploy.exporters.detector.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from backbones.cliargs import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT

from .exporters.common import (
    CALIBRATION_METHODS,
    DEFAULT_MAX_ACCURACY_DROP,
    DETECTOR_ONLY,
    FORMATS,
    INT8_SCHEMES,
    OPENVINO_INT8,
    ExportError,
    ExportOptions,
    ExportResult,
)
from .exporters.images import KNOWN_DATASETS
from .tensorrt import EngineCompatibilityError, TensorRTUnavailable

__all__ = ["ExportError", "ExportOptions", "ExportResult", "build_parser", "export_model", "main"]


def export_model(arch: str, weights: str | Path | None, output: str | Path, options: ExportOptions | None = None,
                 **overrides: Any) -> ExportResult:  # fmt: skip
    """Export ``arch`` (with ``weights``) to ``output``, check it, then write ``output`` and its sidecar.

    ``overrides`` set :class:`ExportOptions` fields (``format="openvino"``, ``precision="int8"``, ...).
    """
    options = dataclasses.replace(options or ExportOptions(), **overrides)
    output = Path(output)
    if options.detector is not None:
        from .exporters.detector import export_detector

        return export_detector(arch, weights, output, options)
    given = [f"--{name.replace('_', '-')}" for name in DETECTOR_ONLY if getattr(options, name) is not None]
    if given:
        raise ValueError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to detector exports "
                         "(--detector c4|fpn with a "
                         f"detection.train run as --weights); {arch} is exported as a classifier")  # fmt: skip
    from .exporters.classifier import export_classifier

    return export_classifier(arch, weights, output, options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.export", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", required=True, help="zoo architecture, e.g. resnet50 (backbones.list_models())")
    parser.add_argument(
        "--weights", help="zoo id, run directory, .safetensors or .pth (omit: random init, testing only)"
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="artifact kind (default: onnx)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8", "bf16"], default="fp32",
                        help="fp16 / int8 graphs for onnx, openvino and tensorrt (int8 needs calibration images); fp16 "
                        "for aoti on cuda; bf16: openvino's bf16 hint on the fp32 IR (default: fp32)")  # fmt: skip
    parser.add_argument("--dynamic-hw", action="store_true", help="also make height and width dynamic")
    parser.add_argument("--opset", type=POSITIVE_INT, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--output", type=Path, required=True,
                        help="artifact path (.onnx, .xml, .engine/.plan, .pt2, .safetensors)")  # fmt: skip
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="aoti: device to compile for; eager: device of the parity check (default cpu)",
    )
    parser.add_argument("--tolerance", type=POSITIVE, help="synthetic-image parity: relative logits error allowed "
                        "(default: fp32 1e-4, fp16 2e-2, bf16 5e-2; int8 recorded only); "
                        "detectors: box error in pixels "
                        "(default fp32 1, fp16 4, int8 8)")  # fmt: skip
    parser.add_argument("--top-k", type=POSITIVE_INT, default=5, help="default top-k in the sidecar's postprocessing")
    real = parser.add_argument_group("reduced precision: calibration and the check on real images")
    real.add_argument("--calibration-dir", type=Path, help="int8: folder of representative images (any layout, "
                      "searched recursively; the first N sorted by path)")  # fmt: skip
    real.add_argument("--calibration-dataset", choices=KNOWN_DATASETS,
                      help="int8: calibrate on this dataset's training split "
                      "(a seeded draw; never the test split)")  # fmt: skip
    real.add_argument("--calibration-images", type=POSITIVE_INT, default=512, help="int8: images to calibrate on")
    real.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="percentile",
                      help="int8: how activation ranges are chosen (percentile: 99.999th of |x|)")  # fmt: skip
    real.add_argument("--int8-scheme", choices=INT8_SCHEMES, default="symmetric", help="symmetric: int8 activations, "
                      "zero points 0 (TensorRT, OpenVINO); "
                      "asymmetric: uint8 activations (onnxruntime CPU)")  # fmt: skip
    real.add_argument("--int8-reduce-range", action="store_true", help="int8: 7-bit weights, for CPUs without VNNI "
                      "(AVX2, AVX-512F), whose u8 x s8 kernels saturate in int16 "
                      "(README: measured accuracy)")  # fmt: skip
    real.add_argument("--openvino-int8", choices=OPENVINO_INT8, default="qdq",
                      help="openvino int8: from the checked Q/DQ graph, or NNCF on the IR")  # fmt: skip
    real.add_argument("--eval-dataset", metavar="NAME|DIR",
                      help=f"labelled held-out images: {', '.join(KNOWN_DATASETS)} "
                      "(test split), fashion-det (detectors, with --data-root), or a folder of class subfolders; the "
                      "sidecar records the artifact's and fp32's accuracy side by side")  # fmt: skip
    real.add_argument(
        "--eval-images", type=POSITIVE_INT, help="check on at most this many held-out images (default: all)"
    )
    real.add_argument("--data-root", type=Path, help="where --calibration-dataset / --eval-dataset live (default: "
                      "their usual place, e.g. /usr/share/datasets/fashion-mnist)")  # fmt: skip
    real.add_argument("--max-accuracy-drop", type=NON_NEGATIVE, default=DEFAULT_MAX_ACCURACY_DROP,
                      help="fail the export when the artifact loses more top-1 accuracy (detectors: mAP) points "
                      "than this on the held-out images")  # fmt: skip
    det = parser.add_argument_group("detectors (--weights: a detection.train run directory)")
    det.add_argument(
        "--detector", choices=["c4", "fpn"], help="export the run's Faster R-CNN (its design) instead of a classifier"
    )
    det.add_argument(
        "--score-thresh",
        type=FRACTION,
        help="drop detections scoring below this in the graph (default: the run's, 0.05)",
    )
    det.add_argument(
        "--detections-per-image", type=POSITIVE_INT, help="keep at most this many per image (default: the run's, 100)"
    )
    det.add_argument(
        "--max-image-side",
        type=POSITIVE_INT,
        default=2048,
        help="tensorrt: largest image height or width the engine accepts (its optimisation profile)",
    )
    trt = parser.add_argument_group("tensorrt")
    trt.add_argument("--opt-batch", type=POSITIVE_INT, default=8, help="profile batch TensorRT tunes for")
    trt.add_argument("--max-batch", type=POSITIVE_INT, default=32, help="largest batch of the profile")
    trt.add_argument(
        "--workspace-gib", type=POSITIVE, default=4.0, help="builder workspace memory limit in GiB (default: 4)"
    )
    trt.add_argument("--timing-cache", type=Path, help="default <output>.timing.cache (reused when present)")
    return parser


def options_from_args(args: argparse.Namespace, argv: list[str] | None) -> ExportOptions:
    return ExportOptions(
        format=args.format, precision=args.precision, dynamic_hw=args.dynamic_hw, opset=args.opset, device=args.device,
        tolerance=args.tolerance, top_k=args.top_k, opt_batch=args.opt_batch, max_batch=args.max_batch,
        workspace_gib=args.workspace_gib, timing_cache=args.timing_cache, calibration_dir=args.calibration_dir,
        calibration_dataset=args.calibration_dataset, calibration_images=args.calibration_images,
        calibration_method=args.calibration_method, int8_scheme=args.int8_scheme,
        int8_reduce_range=args.int8_reduce_range, openvino_int8=args.openvino_int8,
        eval_dataset=args.eval_dataset, eval_images=args.eval_images, data_root=args.data_root,
        max_accuracy_drop=args.max_accuracy_drop, detector=args.detector, score_thresh=args.score_thresh,
        detections_per_image=args.detections_per_image, max_image_side=args.max_image_side,
        command="python -m deploy.export " + shlex.join(sys.argv[1:] if argv is None else argv),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        export_model(args.model, args.weights, args.output, options_from_args(args, argv))
    except (ExportError, ValueError, FileNotFoundError, TensorRTUnavailable, EngineCompatibilityError) as error:
        raise SystemExit(f"error: {error}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
