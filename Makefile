# Two entry points for a fresh machine with only Python: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test summary

TOOLS := .tools
TRT_STUBS := tensorrt-stubs==10.13.0.35.1
TRT11_BINDINGS := tensorrt-cu13-bindings==11.4.0.106

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	# TensorRT checks where TensorRT cannot run (deploy/tensorrt): its 10.x type stubs for mypy and the
	# 11.x Python bindings wheel for the removed-API check. Both stay OUT of the venv: the stubs are an
	# importable empty `tensorrt` package that breaks tools probing `import tensorrt`.
	$(BIN)/python -m pip uninstall --quiet --yes tensorrt-stubs 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(TOOLS)/tensorrt-stubs $(TRT_STUBS)
	$(BIN)/python -m pip download --quiet --no-deps --dest $(TOOLS) $(TRT11_BINDINGS)
	touch $(STAMP)

# The whole path on data that ships with the repository: train, classify real images, detect, export
# to ONNX (fp32 and int8) and predict; prints a summary table and the path of a picture of detections.
quickstart: $(STAMP)
	$(BIN)/python -m deploy.quickstart --output runs/quickstart

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m pytest -q

summary: $(STAMP)
	$(BIN)/python -m backbones.summary
