"""``python -m deploy.quickstart [--output runs/quickstart]``: the whole system on data that ships with
the repository, in a few minutes on a laptop CPU, every figure measured in this run.

1. **train**: ResNet-20 for a short run on the generated ``synthetic`` set (the trainer, end to end);
2. **classify**: the zoo's full-schedule ``resnet20_fashion_mnist`` on the official Fashion-MNIST test
   split (10,000 real images, shipped in ``backbones/data``), the paper's §4.2 protocol;
3. **detect**: the zoo's C4 Faster R-CNN (``det_resnet20_c4_fashion_det``) on the fashion-det test
   canvases, built from those shipped images, scored with the VOC07 devkit rules and pycocotools;
4. **deploy**: both exported to ONNX with their parity checks, run through ``deploy.load(...).predict``,
   and the classifier's INT8 Q/DQ graph beside fp32 with its accuracy on real images (calibrated on
   Fashion-MNIST's training split where it is installed, else on the test split's second half and
   checked on its first half: the two halves never overlap);
5. a summary table (what ran, accuracy, mAP, parity, latency), and a PNG of detections.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLASSIFIER, CLASSIFIER_ARCH = "resnet20_fashion_mnist", "resnet20"
DETECTOR, DETECTOR_ARCH = "det_resnet20_c4_fashion_det", "resnet20"
TRAIN_ITERATIONS = 120
INT8_CHECK_IMAGES = 5000


@dataclass
class Row:
    step: str
    what: str
    result: str
    seconds: float


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _quietly(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an export with its per-step prints captured (the summary reports them)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def _latencies_ms(calls: dict[str, Any], iters: int = 20) -> dict[str, float]:
    """Median ms per call, measured side by side (deploy.bench's interleaved rounds)."""
    from .bench import time_interleaved

    samples = time_interleaved(calls, warmup=1, iters=iters, rounds=4)
    return {label: 1000 * statistics.median(seconds) for label, seconds in samples.items()}


def train(output: Path) -> Row:
    from backbones.analysis import read_metrics
    from backbones.train import main as train_main

    start = time.perf_counter()
    run = output / "train-resnet20-synthetic"
    shutil.rmtree(run, ignore_errors=True)  # this tour's own run: always a fresh one
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        train_main(["resnet20", "--dataset", "synthetic", "--max-iters", str(TRAIN_ITERATIONS), "--eval-every", "60",
                    "--no-progress", "--output", str(run), "--device", "cpu"])  # fmt: skip
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # the trainer set INFO for the whole process
    print(next(line for line in printed.getvalue().splitlines() if "top-1 error" in line))
    final = [record for record in read_metrics(run) if record.get("kind") == "eval"][-1]  # the run's own record
    return Row("train", f"ResNet-20, {TRAIN_ITERATIONS} iterations on the generated set",
               f"test error {final['top1_err']:.2f} %", time.perf_counter() - start)  # fmt: skip


def classify() -> Row:
    from backbones.evaluate import evaluate

    start = time.perf_counter()
    metrics = evaluate(CLASSIFIER_ARCH, [CLASSIFIER], "fashion-mnist", device="cpu")
    print(f"{CLASSIFIER} on {metrics['images']} Fashion-MNIST test images: top-1 error {metrics['top1_err']:.2f} % "
          f"(accuracy {100 - metrics['top1_err']:.2f} %)")  # fmt: skip
    return Row("classify", f"zoo {CLASSIFIER}, Fashion-MNIST test split ({metrics['images']} images)",
               f"top-1 error {metrics['top1_err']:.2f} %", time.perf_counter() - start)  # fmt: skip


def detect(output: Path) -> tuple[Row, Path, Path]:
    from detection.eval import load_detector
    from detection.fashion_det import generate
    from detection.inference import evaluate_test_set

    start = time.perf_counter()
    data = output / "fashion_det"
    if not (data / "fashion_det.json").is_file():
        generate(data, train_images=0, force=True)  # the test canvases only: from the shipped test split
    model, config = load_detector(DETECTOR_ARCH, Path(DETECTOR))
    results, _, _ = evaluate_test_set(
        model, "fashion-det", data, channels=config["channels"], results_dir=output / "detections"
    )
    voc, coco = results["voc"]["mAP"], results["coco"]
    print(f"{DETECTOR} on the 500 fashion-det test canvases: VOC07 mAP {voc:.1f}, COCO mAP@.5 {coco['AP50']:.1f}, "
          f"mAP@[.5,.95] {coco['AP']:.1f}")  # fmt: skip
    from detection.compare import compare

    measured = (
        f"{DETECTOR}, measured in this run: VOC07 mAP {voc:.1f}, COCO AP50 {coco['AP50']:.1f}, AP {coco['AP']:.1f}"
    )
    picture = compare([Path(DETECTOR)], "fashion-det", data, output / "detections.png", images=6, titles=[measured])
    row = Row("detect", f"zoo {DETECTOR} (C4 Faster R-CNN), fashion-det test (500 canvases)",
              f"VOC07 mAP {voc:.1f}, COCO AP50 {coco['AP50']:.1f}, AP {coco['AP']:.1f}",
              time.perf_counter() - start)  # fmt: skip
    return row, data, picture


def deploy_both(output: Path, data: Path) -> list[Row]:
    import deploy
    from backbones.datasets import load_fashion_mnist
    from deploy.export import export_model

    rows = []
    test = load_fashion_mnist(None, "test")
    sample = test.images[:1].permute(0, 2, 3, 1).numpy()  # one real image, (1, 28, 28, 1) uint8

    start = time.perf_counter()
    fp32 = _quietly(export_model, CLASSIFIER_ARCH, CLASSIFIER, output / "resnet20.onnx")
    predictor = deploy.load(fp32.artifact)
    assert isinstance(predictor, deploy.Predictor)
    top = predictor.predict(sample)[0][0]
    eager = deploy.load_eager(CLASSIFIER_ARCH, CLASSIFIER)
    timed = _latencies_ms({"onnx": lambda: predictor.predict(sample), "eager": lambda: eager.predict(sample)})
    onnx_ms, eager_ms = timed["onnx"], timed["eager"]
    print(f"resnet20.onnx: parity {fp32.parity['rel_error']:.1e} relative vs PyTorch; predict() says {top[0]!r} "
          f"({top[1]:.3f}); batch-1 predict {onnx_ms:.2f} ms vs eager {eager_ms:.2f} ms")  # fmt: skip
    rows.append(Row("deploy", "classifier -> ONNX fp32, deploy.load().predict",
                    f"parity {fp32.parity['rel_error']:.1e}; {onnx_ms:.2f} vs eager {eager_ms:.2f} ms/image",
                    time.perf_counter() - start))  # fmt: skip

    start = time.perf_counter()
    int8 = _quietly(export_model, CLASSIFIER_ARCH, CLASSIFIER, output / "resnet20-int8.onnx", precision="int8",
                    int8_scheme="asymmetric", **int8_images(test, output))  # fmt: skip
    accuracy = int8.accuracy
    assert accuracy is not None, "an int8 export checked on a labelled set records its accuracy"
    fp32_acc, int8_acc = accuracy["top1_accuracy"]["fp32"], accuracy["top1_accuracy"]["artifact"]
    quantized = deploy.load(int8.artifact)
    int8_ms = _latencies_ms({"int8": lambda: quantized.predict(sample)})["int8"]
    print(f"resnet20-int8.onnx: top-1 accuracy {int8_acc:.2f} % vs fp32 {fp32_acc:.2f} % on {accuracy['images']} "
          f"held-out images ({accuracy['source']}); batch-1 predict {int8_ms:.2f} ms")  # fmt: skip
    rows.append(Row("deploy", f"classifier -> ONNX int8 (Q/DQ), {accuracy['images']} held-out test images",
                    f"accuracy {int8_acc:.2f} vs fp32 {fp32_acc:.2f} %; {int8_ms:.2f} ms/image",
                    time.perf_counter() - start))  # fmt: skip

    start = time.perf_counter()
    detector = _quietly(export_model, DETECTOR_ARCH, DETECTOR, output / "detector.onnx", detector="c4")
    canvas = min((data / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))
    onnx_detector, eager_detector = deploy.load(detector.artifact), deploy.load_eager_detector(DETECTOR)
    assert isinstance(onnx_detector, deploy.DetectionPredictor)
    found = onnx_detector.predict(canvas, score_threshold=0.5)[0]
    timed = _latencies_ms({"onnx": lambda: onnx_detector.predict(canvas),
                           "eager": lambda: eager_detector.predict(canvas)}, iters=10)  # fmt: skip
    det_ms, det_eager_ms = timed["onnx"], timed["eager"]
    print(f"detector.onnx: boxes within {detector.parity['max_box_error_px']:.1e} px of PyTorch; {len(found)} "
          f"detection(s) >= 0.5 on {canvas.name}; {det_ms:.1f} ms vs eager {det_eager_ms:.1f} ms "
          "per image")  # fmt: skip
    rows.append(Row("deploy", "detector -> ONNX (resize ... NMS in one graph), deploy.load().predict",
                    f"boxes within {detector.parity['max_box_error_px']:.0e} px; {det_ms:.1f} vs eager "
                    f"{det_eager_ms:.1f} ms/image", time.perf_counter() - start))  # fmt: skip
    return rows


def int8_images(test: Any, output: Path) -> dict[str, Any]:
    """Calibration on the training split where installed; else the test split's second half (files),
    checked on its first half: disjoint either way."""
    from PIL import Image

    try:
        from backbones.datasets import load_fashion_mnist

        load_fashion_mnist(None, "train")
        return {
            "calibration_dataset": "fashion-mnist",
            "eval_dataset": "fashion-mnist",
            "eval_images": INT8_CHECK_IMAGES,
        }
    except FileNotFoundError:
        pass
    folder = output / "calibration-test-second-half"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(INT8_CHECK_IMAGES, INT8_CHECK_IMAGES + 512):
        path = folder / f"{index:05d}.png"
        if not path.exists():
            Image.fromarray(test.images[index, 0].numpy()).save(path)
    return {"calibration_dir": folder, "eval_dataset": "fashion-mnist", "eval_images": INT8_CHECK_IMAGES}


def table(rows: list[Row], total: float) -> str:
    width = max(len(r.what) for r in rows)
    lines = [f"{'step':<9} {'what':<{width}}  {'result':<60} {'s':>6}"]
    lines += [f"{r.step:<9} {r.what:<{width}}  {r.result:<60} {r.seconds:>6.1f}" for r in rows]
    lines.append(f"{'':<9} {'total':<{width}}  {'':<60} {total:>6.1f}")
    return "\n".join(lines)


def run(output: Path) -> list[Row]:
    from backbones.engine import cpu_description

    torch.manual_seed(0)
    np.random.seed(0)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    _step("1. train: ResNet-20 on the generated set (backbones.train)")
    rows.append(train(output))
    _step(f"2. classify: the zoo's {CLASSIFIER} on real Fashion-MNIST test images (backbones.evaluate)")
    rows.append(classify())
    _step(f"3. detect: the zoo's {DETECTOR} on fashion-det test canvases (detection.eval's scoring)")
    detected, data, picture = detect(output)
    rows.append(detected)
    _step("4. deploy: ONNX exports with their checks, deploy.load(...).predict, INT8 beside fp32 (deploy.export)")
    rows += deploy_both(output, data)
    total = time.perf_counter() - start
    print(f"\n== summary (CPU {cpu_description()}, {torch.get_num_threads()} threads, torch {torch.__version__})")
    print(table(rows, total))
    print(f"detections (ground truth green, detections >= 0.5 red): {picture}")
    print(f"everything else: {output}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.quickstart", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("runs/quickstart"), help="where the run, the artifacts, "
                        "the result files and the picture go (default: runs/quickstart)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        run(args.output)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
