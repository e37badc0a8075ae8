# One way to run things. `make help` lists the targets; .ci/run calls `make test`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help setup build build-debug demo demo-quick test test-rust lint test-python bench bench-rust wheel clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# requirements/constraints.txt pins the test environment (tests/data/behaviour.json was recorded on it)
$(VENV)/.deps-stamp: pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(BIN)/pip install -q "maturin>=1.7,<2"
	PIP_CONSTRAINT=$(CURDIR)/requirements/constraints.txt $(BIN)/maturin develop --release -q -E dev
	touch $@

setup: $(VENV)/.deps-stamp ## create .venv, install all dependencies (torch included) and the package

build: setup ## build the Rust extension in release mode into .venv
	$(BIN)/maturin develop --release -q

build-debug: setup ## build the Rust extension in debug mode (faster compile, slow kernels)
	$(BIN)/maturin develop -q

demo: build ## run the built-in end-to-end demo (SFT -> preferences -> reward model -> PPO/GRPO/best-of-N/DPO)
	$(BIN)/rlhf-core demo

demo-quick: build ## the demo at small scale (under a minute)
	$(BIN)/rlhf-core demo --quick

test: build test-rust lint test-python ## set up everything and run every check: cargo test, clippy, fmt, ruff, pytest

test-rust: ## Rust core tests (no Python needed), clippy -D warnings, fmt check, bench compile
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test -p rlhf-core --release
	cargo bench -p rlhf-core --no-run

lint: setup ## ruff and mypy on the Python package
	$(BIN)/ruff check python tests benches
	$(BIN)/mypy python/rlhf_core

test-python: build ## pytest (fails when no test is collected)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: build ## Python benchmarks: kernels and buffer against numpy / Python baselines and memcpy
	$(BIN)/python benches/bench_kernels.py
	$(BIN)/python benches/bench_buffer.py

bench-rust: ## criterion benches of the core kernels
	cargo bench -p rlhf-core

wheel: setup ## build an abi3 release wheel into dist/
	$(BIN)/maturin build --release -o dist

clean: ## remove build outputs (keeps .venv)
	cargo clean
	rm -rf dist .pytest_cache .hypothesis
