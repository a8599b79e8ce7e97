"""In-memory datasets in their official formats, batch augmentation, and LR schedules."""

import pickle

import numpy as np
import pytest
import torch
from conftest import write_idx

from backbones.augment import ArrayBatches, Chain, CropFlip, Preprocess, RandomErasing
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


def test_corrupt_gzip_and_out_of_range_labels_name_their_file(tiny_fashion_mnist):
    images = tiny_fashion_mnist / "t10k-images-idx3-ubyte.gz"
    packed = bytearray(images.read_bytes())
    packed[20:40] = bytes(20)  # inside the deflate stream: zlib fails before the CRC check
    images.write_bytes(bytes(packed))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: cannot read IDX file"):
        load_fashion_mnist(tiny_fashion_mnist, "test")
    write_idx(tiny_fashion_mnist / "train-labels-idx1-ubyte", np.array([3] * 11 + [10]), compress=False)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: labels must lie in \[0, 10\), found 10"):
        load_fashion_mnist(tiny_fashion_mnist, "train")


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)
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
    # the official files are Python 2 pickles (protocol 2)
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.ones((1, 3072), np.uint8), b"labels": [4]}, protocol=2))
    assert load_cifar10(root, "test").labels.tolist() == [4]


def test_cifar10_batches_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    # a pickle whose loading would call os.system: what a tampered download could hold
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (tmp_path / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 python batch \(refusing to load os.system"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()


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


@pytest.mark.parametrize("augment", [CropFlip(4), Chain((CropFlip(4), RandomErasing(0.5, mean=(0.5,) * 3,
                                                                                   std=(0.25,) * 3)))],
                         ids=["crop-flip", "crop-flip-erasing"])  # fmt: skip
def test_array_batches_resume_offset_and_process_shares(augment):
    data = make_synthetic("train", 100, seed=1)
    pre = Preprocess(32, 3, (0.5,) * 3, (0.25,) * 3)
    source = ArrayBatches(data, 20, pre, augment, seed=7)
    full = list(source.batches(epoch=2))
    assert len(full) == len(source) == 5
    tail = list(source.batches(epoch=2, start=3))
    for (xa, ya), (xb, yb) in zip(full[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = next(iter(source.batches(epoch=3)))[1]
    assert not torch.equal(other_epoch, full[0][1])
    ranks = [ArrayBatches(data, 20, pre, augment, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for index, pieces in enumerate(zip(*(r.batches(epoch=2) for r in ranks))):
        assert torch.equal(torch.cat([p[0] for p in pieces]), full[index][0])
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        ArrayBatches(data, 20, pre, world_size=3)


def _simulated_boxes(count: int, height: int, width: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Zhong et al.'s rule written again with numpy: area U(0.02, 0.4) of the image, aspect (h / w)
    U(0.3, 1/0.3), h and w rounded, boxes that do not fit (h >= H or w >= W) rejected: (h, w) of the
    accepted draws, i.e. the distribution given that a draw fits."""
    rng = np.random.default_rng(seed)
    area = rng.uniform(0.02, 0.4, count) * height * width
    aspect = rng.uniform(0.3, 1 / 0.3, count)
    h, w = np.rint(np.sqrt(area * aspect)), np.rint(np.sqrt(area / aspect))
    fits = (h < height) & (w < width)
    return h[fits], w[fits]


def test_random_erasing_boxes_follow_algorithm_1():
    n, size = 20000, 32
    top, left, h, w = RandomErasing(0.5).boxes(n, size, size, torch.Generator().manual_seed(0)).double().T.numpy()
    erased = h > 0
    assert erased.mean() == pytest.approx(0.5, abs=4 * (0.25 / n) ** 0.5)  # p, within 4 standard errors
    assert (w[~erased] == 0).all()
    top, left, h, w = top[erased], left[erased], h[erased], w[erased]
    # inside the image, and fitting as the rule demands (h < H, w < W)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    assert h.max() <= size - 1 and w.max() <= size - 1
    # area and aspect ratio within their ranges up to rounding: h, w are within 0.5 of sqrt(S r), sqrt(S / r)
    pixels = size * size
    assert ((h + 0.5) * (w + 0.5) >= 0.02 * pixels).all() and ((h - 0.5) * (w - 0.5) <= 0.4 * pixels).all()
    assert ((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 1 / 0.3).all()
    area, aspect = h * w / pixels, h / w
    assert area.min() < 0.025 and area.max() > 0.38 and aspect.min() < 0.35 and aspect.max() > 3.0  # ranges used
    # distributions: those of the rule given that a draw fits (rejection lowers the mean area from 0.210 to 0.201)
    sim_h, sim_w = _simulated_boxes(1_000_000, size, size)
    sim_area = sim_h * sim_w / pixels
    standard_error = sim_area.std() / len(area) ** 0.5
    assert area.mean() == pytest.approx(sim_area.mean(), abs=4 * standard_error)
    assert abs(sim_area.mean() - 0.21) > 8 * standard_error  # the test tells the two apart
    assert np.quantile(area, [0.1, 0.25, 0.5, 0.75, 0.9]) == pytest.approx(
        np.quantile(sim_area, [0.1, 0.25, 0.5, 0.75, 0.9]), abs=0.01)  # fmt: skip
    for ours, theirs in ((h, sim_h), (w, sim_w), (aspect, sim_h / sim_w)):
        assert ours.mean() == pytest.approx(theirs.mean(), abs=4 * theirs.std() / len(ours) ** 0.5)
    # the corner is uniform over the positions where the box fits, both ends included
    for corner, extent in ((top, h), (left, w)):
        share = corner / (size - extent)
        assert share.mean() == pytest.approx(0.5, abs=0.015) and (corner == 0).any() and (corner == size - extent).any()


def _erased_boxes(erasing: RandomErasing, x: torch.Tensor, seed: int) -> torch.Tensor:
    """A mask of the boxes ``erasing`` draws for ``x`` from a generator seeded with ``seed`` (its first draws)."""
    n, _, height, width = x.shape
    mask = torch.zeros(x.shape, dtype=torch.bool)
    for index, (top, left, h, w) in enumerate(erasing.boxes(n, height, width, torch.Generator().manual_seed(seed))):
        mask[index, :, top : top + h, left : left + w] = True
    return mask


def test_mean_fill_puts_the_normalised_mean_in_the_box_and_leaves_the_rest():
    erasing = RandomErasing(1.0, fill="mean", mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    x = torch.rand(64, 3, 20, 24) + 1  # never 0 before erasing
    before = x.clone()
    out = erasing(x, torch.Generator().manual_seed(3))
    box = _erased_boxes(erasing, x, 3)
    assert box.flatten(1).any(1).all()  # p = 1: every image has a box
    assert (out[box] == 0).all() and torch.equal(out[~box], x[~box])
    assert torch.equal(x, before)  # the input batch is not modified
    assert torch.equal(RandomErasing(0.0, fill="mean")(x, torch.Generator().manual_seed(3)), x)  # p = 0: nothing


def test_random_fill_is_uniform_pixels_normalised_per_channel():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.05)
    erasing = RandomErasing(1.0, fill="random", mean=mean, std=std)
    x = torch.full((256, 3, 32, 32), 100.0)
    out = erasing(x, torch.Generator().manual_seed(4))
    box = _erased_boxes(erasing, x, 4)
    assert torch.equal(out[~box], x[~box])
    for channel in range(3):
        pixels = out[:, channel][box[:, channel]] * std[channel] + mean[channel]  # un-normalised
        assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # the pixel range [0, 1]
        assert pixels.min() < 0.001 and pixels.max() > 0.999 and pixels.mean() == pytest.approx(0.5, abs=0.01)
        assert pixels.numel() > 50_000 and len(pixels.unique()) > 0.9 * pixels.numel()  # per pixel, not one value
    gray = RandomErasing(1.0, mean=(0.5,), std=(0.25,))(torch.zeros(2, 3, 8, 8), torch.Generator().manual_seed(0))
    assert gray.min() >= -2 and gray.max() <= 2  # one channel's statistics serve every channel


def test_random_erasing_is_determined_by_the_generator_seed():
    x = torch.randn(32, 1, 32, 32)
    for fill in ("random", "mean"):
        erasing = RandomErasing(0.5, fill=fill)
        first, again = (erasing(x, torch.Generator().manual_seed(11)) for _ in range(2))
        other = erasing(x, torch.Generator().manual_seed(12))
        assert torch.equal(first, again) and not torch.equal(first, other)
        assert not torch.equal(first, x) and not torch.equal(other, x)


def test_chain_applies_its_steps_in_order_from_one_generator():
    x = torch.randn(8, 1, 32, 32)
    steps = (CropFlip(4), RandomErasing(1.0, fill="mean"))
    chained = Chain(steps)(x, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    expected = steps[1](steps[0](x, generator), generator)
    assert torch.equal(chained, expected)
    fresh_generators = steps[1](steps[0](x, torch.Generator().manual_seed(5)), torch.Generator().manual_seed(5))
    assert not torch.equal(chained, fresh_generators)  # one generator runs through the chain


@pytest.mark.parametrize(("options", "message"), [
    ({"p": 1.5}, r"probability must lie in \[0, 1\], got 1.5"),
    ({"p": -0.1}, r"probability must lie in \[0, 1\], got -0.1"),
    ({"area": (0.5, 0.4)}, r"area must be fractions 0 < low <= high <= 1, got \(0.5, 0.4\)"),
    ({"aspect": (0.0, 3.0)}, r"aspect ratios must be 0 < low <= high, got \(0.0, 3.0\)"),
    ({"fill": "zero"}, r"fill must be one of \('random', 'mean'\), got 'zero'"),
    ({"mean": (0.5, 0.5), "std": (0.2,)}, "2 means but 1 stds"),
])  # fmt: skip
def test_random_erasing_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        RandomErasing(**options)


def test_random_erasing_refuses_statistics_for_another_channel_count():
    with pytest.raises(ValueError, match="statistics for 3 channels, the batch has 1"):
        RandomErasing(mean=(0.5,) * 3, std=(0.2,) * 3)(torch.zeros(2, 1, 8, 8), torch.Generator())


def test_channel_stats():
    mean, std = channel_stats(make_synthetic("train", 50))
    assert len(mean) == len(std) == 3 and all(0 < m < 1 for m in mean) and all(0 < s < 0.5 for s in std)


def test_step_cosine_and_plateau_schedules():
    step = LRSchedule(0.1, "step", 100, [50, 75])
    assert [step.lr(i) for i in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = LRSchedule(0.1, "cosine", 100)
    assert (
        cosine.lr(0) == pytest.approx(0.1)
        and cosine.lr(50) == pytest.approx(0.05)
        and cosine.lr(100) == pytest.approx(0)
    )
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
    with pytest.raises(ValueError, match=r"--batch-size 130 is the global batch and must split evenly "
                                         r"over 4 processes: use a positive multiple of 4"):  # fmt: skip
        DistContext(world_size=4).per_process_batch(130)
    with pytest.raises(ValueError, match="--batch-size 0 is the global batch"):
        DistContext().per_process_batch(0)
