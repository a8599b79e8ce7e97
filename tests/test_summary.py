"""backbones.summary: real multiply-add counts against Table 1, torchvision and Table 6."""

import json

import pytest
import torch
from torch import nn

from backbones.summary import count_multiply_adds, main


def test_counter_counts_multiply_adds_of_a_known_network():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    expected = 8 * 10 * 10 * 3 * 3 * 3 + 800 * 5
    assert count_multiply_adds(net, (1, 3, 10, 10)) == expected


@pytest.fixture(scope="module")
def summary_rows():
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["--json"]) == 0
    return {row["name"]: row for row in json.loads(buffer.getvalue())}


@pytest.mark.parametrize(
    "name, gflops",
    [
        ("resnet18", 1.8),
        ("resnet34", 3.6),
        ("resnet50_paper", 3.8),
        ("resnet101_paper", 7.6),
        ("resnet152_paper", 11.3),
    ],
)
def test_paper_exact_variants_reproduce_table_1(summary_rows, name, gflops):
    assert summary_rows[name]["gflops"] == pytest.approx(gflops, rel=0.03)
    assert abs(summary_rows[name]["deviation_pct"]) < 3


@pytest.mark.parametrize(
    "name, gflops",
    [("resnet18", 1.81), ("resnet34", 3.66), ("resnet50", 4.09), ("resnet101", 7.80), ("resnet152", 11.51)],
)
def test_torchvision_layout_matches_torchvision_published_gflops(summary_rows, name, gflops):
    assert summary_rows[name]["gflops"] == pytest.approx(gflops, abs=0.01)


def test_summary_rows_have_layers_params_and_native_input(summary_rows):
    assert summary_rows["resnet152"]["weighted_layers"] == 152
    assert summary_rows["resnet50"]["params"] == 25_557_032  # torchvision's published count
    assert summary_rows["resnet20"]["input_size"] == 32 and summary_rows["resnet50"]["input_size"] == 224
    assert summary_rows["resnet20"]["params"] / 1e6 == pytest.approx(0.27, rel=0.02)
    assert summary_rows["plain56"]["params"] == summary_rows["resnet56"]["params"]
    assert all(abs(r["deviation_pct"]) < 3 for r in summary_rows.values() if r["deviation_pct"] is not None)


def test_table_output_and_glob(capsys):
    assert main(["--models", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50 " in out and "resnet56 " in out and "resnet18 " not in out
    with pytest.raises(SystemExit):
        main(["--models", "vgg*"])
    assert torch.is_grad_enabled()
