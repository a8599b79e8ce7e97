# Two entry points for a fresh machine with only Python: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test summary

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $(STAMP)

# Train ResNet-20 on a dataset the code generates (no download) and print its held-out accuracy.
quickstart: $(STAMP)
	rm -rf runs/quickstart
	$(BIN)/python -m backbones.train resnet20 --dataset synthetic --output runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

summary: $(STAMP)
	$(BIN)/python -m backbones.summary
