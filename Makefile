# The two commands of the README: `make run` (the main job on the embedded default data) and
# `make test`. Both set themselves up: they use the active virtualenv if there is one, and
# otherwise create .venv here. torch is installed first, pinned to the CPU build that satisfies
# pyproject's range, so that pip never pulls a multi-GB CUDA build.
VENV := .venv
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
STAMP := $(VIRTUAL_ENV)/.fedrec-installed
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedrec-installed
endif
TORCH := torch==2.13.0
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup run test lint bench docs

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,docs]"
	@touch $@

run: setup
	$(PY) -m fedrec.cli simulate $(ARGS)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check fedrec tests benchmarks

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/centralized_vs_peers.py

# The documentation site (mkdocs.yml, docs/) in site/; --strict fails on any warning.
docs: setup
	$(PY) -m mkdocs build --strict --site-dir site
