"""The published zoo: every record loads with its checksum and reproduces its recorded accuracy."""

import pytest

from backbones import create_model
from backbones.datasets import FASHION_MNIST_DIR
from backbones.evaluate import evaluate
from backbones.weights import DEFAULT_ZOO, read_zoo

RECORDS = list(read_zoo(DEFAULT_ZOO).values())


def test_the_zoo_has_this_projects_fashion_mnist_weights():
    assert {r.dataset for r in RECORDS} == {"fashion-mnist"}
    assert {"resnet20", "plain20"} <= {r.arch for r in RECORDS}


@pytest.mark.parametrize("record", RECORDS, ids=[r.id for r in RECORDS])
def test_record_loads_and_states_its_command(record):
    model = create_model(record.arch, weights=record.id)  # verifies size and sha256
    assert model.num_classes == len(record.class_names) and model.in_chans == record.preprocessing["channels"]
    assert record.metrics["command"].startswith(f"python -m backbones.evaluate {record.arch} --weights {record.id} ")


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("record", RECORDS, ids=[r.id for r in RECORDS])
def test_record_reproduces_its_test_error(record):
    result = evaluate(record.arch, [record.id], record.dataset)
    assert result["images"] == record.metrics["images"] == 10000
    assert result["top1_err"] == pytest.approx(record.metrics["top1_err"], abs=0.011)
