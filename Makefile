# Two entry points for a fresh machine with only Python: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test summary

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	# TensorRT's type stubs, for the mypy check of deploy/tensorrt_build.py (TensorRT itself installs
	# only from NVIDIA's index; the stubs' metadata pins it, hence --no-deps)
	$(BIN)/python -m pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

# Train ResNet-20 on a dataset the code generates (no download) and print its held-out accuracy.
quickstart: $(STAMP)
	rm -rf runs/quickstart
	$(BIN)/python -m backbones.train resnet20 --dataset synthetic --output runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

summary: $(STAMP)
	$(BIN)/python -m backbones.summary
