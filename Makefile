# kaggle-kit: `make` lists the targets. Everything runs inside .venv, which `make install` creates.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KK := $(BIN)/kaggle-kit
DATA ?=

.PHONY: help install test test-fast test-dali demo bench clean

## help: list the targets (the default goal)
help:
	@awk '/^## /{sub(/^## /, ""); split($$0, a, ": "); printf "  make %-10s %s\n", a[1], substr($$0, length(a[1]) + 3)}' $(MAKEFILE_LIST)

## install: create .venv and install kaggle-kit with its test extras and Ray (the ray engine's tests need it)
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $@

## test: run the whole test suite (what CI runs); installs Debian's chromium for the report tests if missing
test: install
	@command -v chromium >/dev/null || { echo "installing Debian's chromium (the report tests open the page in it)"; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/pytest -q -m "not dali"

## test-fast: the tests not marked slow (no photo-heavy, backbone-building or Chromium tests), under 2 minutes
test-fast: install
	$(BIN)/pytest -q -m "not slow and not dali"

## test-dali: install the [dali] extra and JAX (about 1 GB), then run the real-DALI tests (CPU graph, no GPU needed)
test-dali: install
	$(BIN)/pip install --quiet -e '.[dali]' jax
	$(BIN)/pytest -q -m dali

## demo: install, then run the whole pipeline (DATA=dir for your own competition folder)
demo: install
	$(KK) demo $(if $(DATA),--data $(DATA),)

## bench: speed and quality benchmarks; writes experiments/bench/results.json
bench: install
	$(BIN)/python bench/run.py

## clean: remove .venv and caches (never experiments/ or submissions/)
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
