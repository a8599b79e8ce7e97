"""deploy.quickstart's pieces that decide what it measures (the whole tour runs in `make quickstart`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backbones import datasets
from backbones.datasets import load_fashion_mnist
from deploy import quickstart


def test_without_the_training_split_int8_calibrates_on_the_test_splits_unchecked_half(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "no-system-copy"))  # only the shipped test split
    test = load_fashion_mnist(None, "test")
    assert test.name == "fashion-mnist/test" and len(test) == 10000
    with pytest.raises(FileNotFoundError, match="only the test split ships with this package"):
        load_fashion_mnist(None, "train")
    chosen = quickstart.int8_images(test, tmp_path)
    files = sorted(chosen["calibration_dir"].glob("*.png"))
    assert len(files) == 512 and files[0].name == f"{quickstart.INT8_CHECK_IMAGES:05d}.png"
    assert chosen["eval_dataset"] == "fashion-mnist" and chosen["eval_images"] == quickstart.INT8_CHECK_IMAGES
    # calibration images come after the checked ones: the two never overlap
    first = np.asarray(Image.open(files[0]))
    assert np.array_equal(first, test.images[quickstart.INT8_CHECK_IMAGES, 0].numpy())


def test_with_the_training_split_int8_calibrates_on_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_fashion_mnist", lambda root, split: None)  # "installed"
    chosen = quickstart.int8_images(load_fashion_mnist(None, "test"), tmp_path)
    assert chosen == {"calibration_dataset": "fashion-mnist", "eval_dataset": "fashion-mnist",
                      "eval_images": quickstart.INT8_CHECK_IMAGES}  # fmt: skip


def test_the_summary_table_has_a_row_per_step_and_the_total():
    rows = [quickstart.Row("train", "a short run", "test error 4.60 %", 38.4),
            quickstart.Row("detect", "a zoo detector on real canvases", "VOC07 mAP 69.9", 22.4)]  # fmt: skip
    lines = quickstart.table(rows, 61.0).splitlines()
    assert lines[0].split()[:3] == ["step", "what", "result"] and len(lines) == 4
    assert lines[1].startswith("train") and lines[1].rstrip().endswith("38.4") and "VOC07 mAP 69.9" in lines[2]
    assert lines[3].split() == ["total", "61.0"]
