"""In-memory datasets in their official formats, batch augmentation, and LR schedules."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from backbones.augment import ArrayBatches, CropFlip, Preprocess
from backbones.datasets import (
    FASHION_MNIST_DIR,
    channel_stats,
    load_cifar10,
    load_fashion_mnist,
    make_synthetic,
    read_idx,
    train_val_split,
)
from backbones.schedule import LRSchedule


def write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress=False)
    return tmp_path


def test_fashion_mnist_idx_files_load_in_the_official_layout(tiny_fashion_mnist):
    train = load_fashion_mnist(tiny_fashion_mnist, "train")
    test = load_fashion_mnist(tiny_fashion_mnist, "test")
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [i % 10 for i in range(12)] and len(test) == 5
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"


def test_malformed_idx_files_name_the_file_and_problem(tiny_fashion_mnist):
    labels = tiny_fashion_mnist / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: IDX header says shape \(12,\) .* has 17 bytes"):
        load_fashion_mnist(tiny_fashion_mnist, "train")
    labels.write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(labels)
    with pytest.raises(FileNotFoundError, match="missing t10k-images-idx3-ubyte"):
        load_fashion_mnist(tiny_fashion_mnist / "nowhere", "test")


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    test = load_fashion_mnist(split="test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.labels.bincount().tolist() == [1000] * 10


def test_cifar10_python_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 9]}
        (root / name).write_bytes(pickle.dumps(batch))
    train = load_cifar10(tmp_path, "train")
    assert train.images.shape == (20, 3, 32, 32) and train.labels[:4].tolist() == [1, 2, 3, 9]
    raw = pickle.loads((root / "test_batch").read_bytes())[b"data"][0]
    assert torch.equal(load_cifar10(root, "test").images[0], torch.from_numpy(raw.reshape(3, 32, 32)))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"test_batch: field 'data' must be \(N, 3072\)"):
        load_cifar10(root, "test")


def test_synthetic_is_deterministic_and_balanced():
    a, b = make_synthetic("train", 300, seed=3), make_synthetic("train", 300, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images[:100], make_synthetic("test", 300, seed=3).images[:100])
    assert a.labels.bincount(minlength=10).min() > 10
    train, val = train_val_split(a, 50)
    assert len(train) == 250 and len(val) == 50
    assert len(set(train.images.flatten(1).sum(1).tolist()) & set(val.images.flatten(1).sum(1).tolist())) < 5


def test_preprocess_pads_and_normalises():
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    pre = Preprocess(32, 1, (0.5,), (0.25,), pad_to=32)
    x = pre(images)
    assert x.shape == (2, 1, 32, 32)
    assert x[0, 0, 2, 2].item() == pytest.approx(2.0) and x[0, 0, 0, 0].item() == pytest.approx(-2.0)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match=r"expected uint8 images \(N, 1, H, W\)"):
        pre(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))


def test_crop_flip_is_a_padded_crop_with_optional_mirror():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    generator = torch.Generator().manual_seed(5)
    out = CropFlip(pad=2)(x, generator)
    generator = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 5, (2, 2), generator=generator)
    flips = torch.rand(2, generator=generator) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        dy, dx = offsets[i].tolist()
        expected = padded[i, :, dy : dy + 8, dx : dx + 8]
        torch.testing.assert_close(out[i], expected.flip(-1) if flips[i] else expected)


def test_array_batches_resume_offset_and_process_shares():
    data = make_synthetic("train", 100, seed=1)
    pre = Preprocess(32, 3, (0.5,) * 3, (0.25,) * 3)
    source = ArrayBatches(data, 20, pre, CropFlip(4), seed=7)
    full = list(source.batches(epoch=2))
    assert len(full) == len(source) == 5
    tail = list(source.batches(epoch=2, start=3))
    for (xa, ya), (xb, yb) in zip(full[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = next(iter(source.batches(epoch=3)))[1]
    assert not torch.equal(other_epoch, full[0][1])
    ranks = [ArrayBatches(data, 20, pre, CropFlip(4), seed=7, rank=r, world_size=2) for r in (0, 1)]
    for index, pieces in enumerate(zip(*(r.batches(epoch=2) for r in ranks))):
        assert torch.equal(torch.cat([p[0] for p in pieces]), full[index][0])
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        ArrayBatches(data, 20, pre, world_size=3)


def test_channel_stats():
    mean, std = channel_stats(make_synthetic("train", 50))
    assert len(mean) == len(std) == 3 and all(0 < m < 1 for m in mean) and all(0 < s < 0.5 for s in std)


def test_step_cosine_and_plateau_schedules():
    step = LRSchedule(0.1, "step", 100, [50, 75])
    assert [step.lr(i) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = LRSchedule(0.1, "cosine", 100)
    assert cosine.lr(0) == pytest.approx(0.1) and cosine.lr(50) == pytest.approx(0.05) and cosine.lr(100) == pytest.approx(0)
    plateau = LRSchedule(0.1, "plateau", 100, patience=1)
    for error in (50, 40, 40.0, 40.0):
        plateau.observe_validation(error)
    assert plateau.lr(10) == pytest.approx(0.01)
    restored = LRSchedule(0.1, "plateau", 100, patience=1)
    restored.load_state_dict(plateau.state_dict())
    assert restored.lr(10) == pytest.approx(0.01) and restored.best_metric == 40
    with pytest.raises(ValueError, match="schedule must be one of"):
        LRSchedule(0.1, "linear")


def test_warmup_until_training_error_drops_below_threshold():
    schedule = LRSchedule(0.1, "step", 1000, [500], warmup_lr=0.01, warmup_until_error=0.8)
    assert schedule.lr(0) == schedule.lr(300) == 0.01
    schedule.observe_train_error(300, 0.85)
    assert schedule.lr(301) == 0.01
    schedule.observe_train_error(400, 0.79)  # §4.2: "until the training error is below 80%"
    assert schedule.lr(401) == 0.1 and schedule.lr(600) == pytest.approx(0.01)
    fixed = LRSchedule(0.1, "step", 100, warmup_iters=10)
    assert fixed.lr(0) == pytest.approx(0.01) and fixed.lr(9) == pytest.approx(0.1) and fixed.lr(10) == 0.1


def test_the_global_batch_must_split_evenly_over_processes():
    from backbones.distributed import DistContext

    assert DistContext(world_size=4).per_process_batch(256) == 64
    assert DistContext().per_process_batch(128) == 128
    with pytest.raises(ValueError, match=r"--batch-size 130 is the global batch and must split evenly over 4 processes: "
                                         r"use a positive multiple of 4"):  # fmt: skip
        DistContext(world_size=4).per_process_batch(130)
    with pytest.raises(ValueError, match="--batch-size 0 is the global batch"):
        DistContext().per_process_batch(0)
