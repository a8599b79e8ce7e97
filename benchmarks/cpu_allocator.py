"""CPU training step under each malloc side by side: glibc as is, glibc keeping freed memory, tcmalloc, jemalloc.

    OMP_NUM_THREADS=2 python benchmarks/cpu_allocator.py --arch resnet56     # batch 128, 32x32, compiled fp32

glibc's malloc hands the large activation buffers of every step back to the kernel and faults them
in again on the next one; on a 2-core Xeon that put half of a ResNet-56 run's CPU time in the kernel
(77k minor page faults/s). The trainer therefore has glibc keep freed memory (``mallopt``, see
``backbones/cpu_memory.py``); "glibc" here is the allocator as it comes, with that switched off.
Each variant runs the step of ``train_throughput.py`` in a fresh process, since tcmalloc and
jemalloc can only be chosen at process start (``LD_PRELOAD``); the variants take turns for
``--rounds`` rounds so that a noisy machine drifts into all of them alike. Prints the median
images/s of each with its ratio to glibc, and the minor page faults and kernel time of its whole
child process (setup and warm-up included), and writes JSON to benchmarks/results/. Install the
allocators with ``apt-get install libtcmalloc-minimal4 libjemalloc2``; a missing one is reported
and skipped.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.cpu_memory import GLIBC_ENV
from backbones.fileio import atomic_write_json

# name -> (library to preload or None, the trainer's glibc setting left on)
VARIANTS: dict[str, tuple[str | None, bool]] = {
    "glibc": (None, False),
    "glibc, no trim (trainer)": (None, True),
    "tcmalloc": ("tcmalloc_minimal", True),
    "jemalloc": ("jemalloc", True),
}


def child(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import measure

    if args.glibc_as_is:
        import backbones.engine

        backbones.engine.keep_freed_memory = lambda: False  # the baseline: glibc returning memory as it comes

    before = resource.getrusage(resource.RUSAGE_SELF)
    rate = measure(args.arch, args.batch, args.size, args.amp, not args.no_compile, True, torch.device("cpu"),
                   warmup=3 if args.no_compile else 5, iters=args.iters, repeats=args.repeats)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_SELF)
    sample = {"images_per_s": rate, "minor_faults": after.ru_minflt - before.ru_minflt,
              "kernel_s": after.ru_stime - before.ru_stime}  # fmt: skip
    print(json.dumps(sample))


def run_variant(name: str, argv: list[str]) -> dict | None:
    library, keep = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and k not in GLIBC_ENV}  # only what is measured
    if library is not None:
        found = ctypes.util.find_library(library)
        if found is None:
            return None
        env["LD_PRELOAD"] = found
    child_argv = ["--child", *argv] + ([] if keep else ["--glibc-as-is"])
    proc = subprocess.run([sys.executable, __file__, *child_argv], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cpu_allocator: the {name} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--no-compile", action="store_true", help="time the eager step instead of torch.compile")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per process (median)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant, taken in turns")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--glibc-as-is", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    samples: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    missing = set()
    for round_ in range(args.rounds):
        for name in VARIANTS:
            if name in missing:
                continue
            sample = run_variant(name, argv)
            if sample is None:
                missing.add(name)
                print(f"  {name}: not installed, skipped", flush=True)
                continue
            samples[name].append(sample)
            print(f"  round {round_ + 1} {name:<24} {sample['images_per_s']:8.1f} images/s "
                  f"{sample['minor_faults']:>10} minor faults {sample['kernel_s']:6.1f} s in the kernel",
                  flush=True)  # fmt: skip
    from backbones.engine import cpu_description

    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    step = f"{'eager' if args.no_compile else 'compiled'} {'fp32' if args.amp == 'none' else args.amp}"
    print(f"\n{args.arch} training step ({step}, channels_last), batch {args.batch}, {args.size}x{args.size}, "
          f"{threads} threads on {platform.machine()}, {cpu_description()}")  # fmt: skip
    print(f"{'allocator':<24} {'images/s':>9} {'vs glibc':>9} {'minor faults':>13} {'kernel s':>9}")
    rows = []
    for name, runs in samples.items():
        if not runs:
            continue
        row = {"allocator": name, "images_per_s": round(statistics.median(r["images_per_s"] for r in runs), 1),
               "minor_faults": int(statistics.median(r["minor_faults"] for r in runs)),
               "kernel_s": round(statistics.median(r["kernel_s"] for r in runs), 2),
               "rounds": [round(r["images_per_s"], 1) for r in runs]}  # fmt: skip
        rows.append(row)
    base = rows[0]["images_per_s"]
    for row in rows:
        row["ratio"] = round(row["images_per_s"] / base, 3)
        print(f"{row['allocator']:<24} {row['images_per_s']:>9.1f} {row['ratio']:>8.2f}x {row['minor_faults']:>13} "
              f"{row['kernel_s']:>9.1f}")  # fmt: skip
    result = {"arch": args.arch, "batch": args.batch, "size": args.size, "step": step, "threads": threads,
              "cpu": cpu_description(), "rows": rows}  # fmt: skip
    path = args.output / f"cpu_allocator_{args.arch}.json"
    atomic_write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
