"""Fixtures shared by several test modules."""

import gzip
import struct

import numpy as np
import pytest


def write_idx(path, array, compress=True):
    """An IDX file as the official Fashion-MNIST/MNIST ones: big-endian header, then uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    """12 training and 5 test images of 28x28 noise in the official IDX layout (images gzipped, labels not)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress=False)
    return tmp_path
