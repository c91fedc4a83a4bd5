# fedloop: `make demo` and `make test` install what is missing into .venv, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := models/smollm2-135m-instruct
NGINX := $(VENV)/nginx/usr/sbin/nginx

.PHONY: install model demo test test-fast check browser gateway proto config-reference clean

# Everything `fedloop` needs, HQ's gateway (nginx, for `fedloop hq up`) included.
install: $(STAMP) gateway

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

# Two workers, one module each at a time (the longest first: tests/conftest.py); the 15 slowest tests listed.
test: check browser gateway
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# Everyday work: the tests without a marker (no slow, deployment or browser test), in under 3 minutes.
test-fast: check
	$(PY) -m pytest -q -m "not slow and not deployment and not browser"

# The architecture, lint, format and type checks (configured in pyproject.toml).
check: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The report test opens the HTML report in headless Chromium (Debian's package; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null) || \
		{ echo "make test needs Chromium for the report test: install Debian's chromium package"; exit 1; }

# HQ's public gateway (`fedloop hq up`) is Debian's nginx: unpacked into .venv/nginx, no service started, nothing
# installed system-wide. An nginx already on PATH is used as it is.
gateway: $(STAMP)
	@command -v nginx >/dev/null 2>&1 || test -x $(NGINX) || { tmp=$$(mktemp -d) && \
		{ (cd $$tmp && apt-get download -q nginx >/dev/null 2>&1) || \
		  (apt-get update -q >/dev/null && cd $$tmp && apt-get download -q nginx >/dev/null 2>&1); } && \
		dpkg -x $$tmp/nginx_*.deb $(VENV)/nginx && rm -rf $$tmp; } || \
		{ echo "fedloop hq up (and make test) need nginx for HQ's gateway: install Debian's nginx package"; exit 1; }

# Regenerate src/fedloop/proto/*_pb2*.py from its *.proto (the generated files are committed).
proto: $(STAMP)
	$(PY) scripts/gen_proto.py

# Regenerate docs/configuration.md from the settings classes (a test checks it is current).
config-reference: $(STAMP)
	$(PY) scripts/gen_config_reference.py

clean:
	rm -rf runs .pytest_cache
