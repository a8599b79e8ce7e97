"""Training-step throughput of the engine, side by side: eager vs torch.compile, fp32 vs bf16.

    python benchmarks/train_throughput.py                    # ResNet-50, batch 256 on a GPU; batch 8 on a CPU
    python benchmarks/train_throughput.py --arch resnet20 --size 32 --batch 128

The batch is synthetic and resident on the device, so the figure is the step itself (forward,
loss, backward, SGD update through ``backbones.engine.Trainer``), not the data pipeline. Prints a
table with each variant's images/s and its ratio to eager fp32, and writes JSON to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones import create_model
from backbones.classification import classification_step
from backbones.distributed import DistContext
from backbones.engine import EngineConfig, Trainer, cpu_description
from backbones.fileio import atomic_write_json
from backbones.schedule import LRSchedule


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, batch: int, size: int, amp: str, compile_: bool, channels_last: bool, device: torch.device,
            warmup: int, iters: int, repeats: int) -> float:  # fmt: skip
    torch.manual_seed(0)
    model = create_model(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    config = EngineConfig(Path("/nonexistent"), max_iters=1, amp=amp, compile=compile_, channels_last=channels_last,
                          progress=False)  # fmt: skip
    trainer = Trainer(
        model, optimizer, LRSchedule(0.1), [], classification_step, config, ctx=DistContext(device=device)
    )
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    for _ in range(warmup):
        trainer._train_step((images, labels))
    synchronize(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            trainer._train_step((images, labels))
        synchronize(device)
        rates.append(batch * iters / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, help="default: 256 on a GPU, 8 on a CPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, help="timed steps per repeat (default 20 GPU, 2 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (256 if gpu else 8)
    iters = args.iters or (20 if gpu else 2)
    if gpu:
        torch.backends.cudnn.benchmark = True
    # channels_last throughout, but for one NCHW row: which layout wins depends on the hardware
    variants = [("eager fp32", "none", False, True), ("eager fp32 NCHW", "none", False, False),
                ("eager bf16", "bf16", False, True)]  # fmt: skip
    if not args.no_compile:
        variants += [("compiled fp32", "none", True, True), ("compiled bf16", "bf16", True, True)]
    rows = []
    for name, amp, compile_, channels_last in variants:
        rate = measure(args.arch, batch, args.size, amp, compile_, channels_last, device,
                       warmup=3 if not compile_ else 5, iters=iters, repeats=args.repeats)  # fmt: skip
        rows.append({"variant": name, "amp": amp, "compile": compile_, "channels_last": channels_last,
                     "images_per_s": round(rate, 1)})  # fmt: skip
        print(f"  {name:<16} {rate:10.1f} images/s", flush=True)
    base = rows[0]["images_per_s"]
    device_name = torch.cuda.get_device_name(device) if gpu else f"{platform.machine()}, {cpu_description()}"
    print(f"\n{args.arch} training step, batch {batch}, {args.size}x{args.size}, on {device_name} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")  # fmt: skip
    print(f"{'variant':<16} {'images/s':>10} {'vs eager fp32':>14}")
    for row in rows:
        row["ratio"] = round(row["images_per_s"] / base, 3)
        print(f"{row['variant']:<16} {row['images_per_s']:>10.1f} {row['ratio']:>13.2f}x")
    result = {"arch": args.arch, "batch": batch, "size": args.size, "device": device_name, "torch": torch.__version__,
              "rows": rows}  # fmt: skip
    path = args.output / f"train_throughput_{args.arch}_{device.type}.json"
    atomic_write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
