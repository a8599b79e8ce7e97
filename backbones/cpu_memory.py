"""Which malloc a CPU training process runs on, and keeping glibc's from handing memory back.

glibc's malloc returns large freed blocks to the kernel (``munmap``, heap trimming), so every
training step faults its activation buffers back in: on a 2-core Xeon that put half of a ResNet-56
run's CPU time in the kernel (77k minor page faults/s). tcmalloc and jemalloc have to be preloaded
at process start (``LD_PRELOAD``); glibc can be told at run time (``mallopt``) to keep the memory,
which ``benchmarks/cpu_allocator.py`` measures beside them.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for it on 64-bit: larger blocks are always mmapped
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int
GLIBC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_kept_by_mallopt = False


def cpu_allocator() -> str:
    """The malloc this process runs on: ``tcmalloc`` or ``jemalloc`` when preloaded, ``glibc, no trim``
    when glibc keeps freed memory (``MALLOC_*`` environment or ``keep_freed_memory``), else ``glibc``."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc"):
        if name in preload:
            return name
    if _kept_by_mallopt or any(name in os.environ for name in GLIBC_ENV):
        return "glibc, no trim"
    return "glibc"


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process instead of returning it to the kernel: the
    process's footprint stays at its peak, which a training loop reaches every step anyway. Leaves
    a preloaded allocator and ``MALLOC_*`` settings of the user's alone. True when glibc now keeps it."""
    global _kept_by_mallopt
    allocator = cpu_allocator()
    if allocator != "glibc":
        return allocator == "glibc, no trim"
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    _kept_by_mallopt = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _kept_by_mallopt
