"""ImageNet input pipeline throughput, side by side: how many images/s the trainer's loader delivers
with 0, 1, 2, ... DataLoader workers, and where the time goes (JPEG decode vs the §3.4 augmentation).

    python benchmarks/data_throughput.py                       # 512 JPEGs of 500x375, workers 0,1,2
    python benchmarks/data_throughput.py --workers 0 4 8 16 --images 4096

It writes a small ImageNet-layout folder (``train/<class>/*.JPEG``) of generated photographs-like
JPEGs to a temporary directory and reads it through ``backbones.imagenet.ImageFolderBatches``, the
loader ``python -m backbones.train --dataset imagenet`` uses (scale augmentation in [256, 480],
224 crop, flip, PCA lighting). With a CUDA device it adds the ``--gpu-decode`` variant (nvJPEG).
The per-worker figure says how many CPU cores a GPU needs: a training step at 4,000 images/s needs
4,000 / (images/s per worker) workers. Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.cliargs import COUNT, POSITIVE_INT
from backbones.engine import cpu_description
from backbones.fileio import atomic_write_json
from backbones.imagenet import ImageFolderBatches, ImageFolderDataset, TrainAugment, decode_image


def write_folder(root: Path, images: int, width: int, height: int, classes: int = 8, seed: int = 0) -> list[Path]:
    """``images`` JPEGs (quality 90) under root/train/<class>/: smooth colour fields plus fine grain,
    so that they compress and decode like photographs rather than like white noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(images):
        coarse = rng.integers(0, 256, size=(height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, size=field.shape, dtype=np.int16)
        pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
        path = root / "train" / f"n{index % classes:08d}" / f"img_{index:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def resize_then_crop(augment: TrainAugment, image: Image.Image, generator: torch.Generator) -> Image.Image:
    """The textbook order (torchvision's Resize then RandomCrop), the reference for the box resampling
    that TrainAugment.geometric does; same draws, pixels within 2 levels (tests/test_imagenet.py)."""
    image = F.resize(image, [int(torch.randint(augment.scale[0], augment.scale[1] + 1, (1,), generator=generator))])
    height, width = F.get_size(image)
    top = int(torch.randint(0, height - augment.crop_size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - augment.crop_size + 1, (1,), generator=generator))
    return F.crop(image, top, left, augment.crop_size, augment.crop_size)


def images_per_s(run: Callable[[], object], count: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def loader_rate(root: Path, batch: int, workers: int, gpu_decode: bool, repeats: int) -> float:
    dataset = ImageFolderDataset(root, "train")
    source = ImageFolderBatches(dataset, batch, train=True, num_workers=workers, gpu_decode=gpu_decode)
    count = len(source) * batch

    def one_epoch() -> None:
        for images, _ in source.batches(epoch=0):
            if images.is_cuda:
                torch.cuda.synchronize(images.device)

    one_epoch()  # starts the persistent workers and warms the caches
    return images_per_s(one_epoch, count, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=POSITIVE_INT, default=512, help="JPEGs to generate (default: 512)")
    parser.add_argument(
        "--size", default="500x375", help="their WIDTHxHEIGHT (default: 500x375, a typical ImageNet photo)"
    )
    parser.add_argument("--batch", type=POSITIVE_INT, default=64, help="loader batch size (default: 64)")
    parser.add_argument(
        "--workers",
        type=COUNT,
        nargs="+",
        default=[0, 1, 2],
        help="DataLoader worker counts to measure (default: 0 1 2; 0 = in the main process)",
    )
    parser.add_argument("--repeats", type=POSITIVE_INT, default=3, help="timed epochs per variant; the median counts")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results", help="JSON directory")
    args = parser.parse_args(argv)
    try:
        width, height = (int(side) for side in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    if min(width, height) < 1 or args.images < args.batch:
        parser.error("--size must be positive and --images at least one --batch")
    torch.set_num_threads(1)  # each worker is one core; the main process only collates

    with tempfile.TemporaryDirectory(prefix="data_throughput_") as tmp:
        root = Path(tmp)
        paths = write_folder(root, args.images, width, height)
        augment = TrainAugment()
        generator = torch.Generator().manual_seed(0)
        sample = paths[:64]
        decoded = [decode_image(path) for path in sample]
        n = len(sample)
        stages = {
            "decode (PIL, RGB)": images_per_s(lambda: [decode_image(path) for path in sample], n, args.repeats),
            "augment (§3.4)": images_per_s(lambda: [augment(image, generator) for image in decoded], n, args.repeats),
            "scale+crop: resample the crop's box": images_per_s(
                lambda: [augment.geometric(image, generator) for image in decoded], n, args.repeats
            ),
            "scale+crop: resize whole, then crop": images_per_s(
                lambda: [resize_then_crop(augment, image, generator) for image in decoded], n, args.repeats
            ),
        }
        rows = []
        for workers in args.workers:
            rate = loader_rate(root, args.batch, workers, gpu_decode=False, repeats=args.repeats)
            rows.append({"variant": f"{workers} workers", "workers": workers, "gpu_decode": False,
                         "images_per_s": round(rate, 1)})  # fmt: skip
            print(f"  {rows[-1]['variant']:<22} {rate:9.1f} images/s", flush=True)
        if torch.cuda.is_available():
            workers = max(args.workers)
            rate = loader_rate(root, args.batch, workers, gpu_decode=True, repeats=args.repeats)
            rows.append({"variant": f"{workers} workers, nvJPEG", "workers": workers, "gpu_decode": True,
                         "images_per_s": round(rate, 1)})  # fmt: skip

    cpu = f"{platform.machine()}, {cpu_description()}, {os.cpu_count()} cores"
    print(f"\nImageNet training loader, {args.images} JPEGs of {width}x{height}, batch {args.batch}, on {cpu} "
          f"(torch {torch.__version__})")  # fmt: skip
    print("one core, per stage:")
    for name, rate in stages.items():
        print(f"  {name:<38} {rate:8.1f} images/s")
    box, whole = stages["scale+crop: resample the crop's box"], stages["scale+crop: resize whole, then crop"]
    print(f"  box resampling vs resize-then-crop: {box / whole:.2f}x")
    print(f"{'variant':<24} {'images/s':>9} {'per worker':>11}")
    for row in rows:
        per_worker = row["images_per_s"] / row["workers"] if row["workers"] and not row["gpu_decode"] else None
        row["images_per_s_per_worker"] = round(per_worker, 1) if per_worker else None
        shown = f"{per_worker:11.1f}" if per_worker else f"{'-':>11}"
        print(f"{row['variant']:<24} {row['images_per_s']:>9.1f} {shown}")
    result = {"images": args.images, "size": [width, height], "batch": args.batch, "cpu": cpu,
              "torch": torch.__version__,
              "stages_one_core": {name: round(rate, 1) for name, rate in stages.items()}, "rows": rows}  # fmt: skip
    path = args.output / "data_throughput_imagenet_cpu.json"
    atomic_write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
