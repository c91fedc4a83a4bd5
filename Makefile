# fedloop: `make demo` and `make test` install what is missing into .venv, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := models/smollm2-135m-instruct

.PHONY: install model demo test proto clean

install: $(STAMP)

# CPU torch first, from its own pin, so that no dependency pulls the CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

model: $(STAMP)
	$(VENV)/bin/fedloop model fetch --out $(MODEL_DIR)

demo: model
	$(VENV)/bin/fedloop demo --config configs/demo.toml

test: $(STAMP)
	$(PY) -m pytest -q

# Regenerate proto/*_pb2*.py from proto/*.proto (the generated files are committed).
proto: $(STAMP)
	$(PY) scripts/gen_proto.py

clean:
	rm -rf runs .pytest_cache
