# radixrouter: every command developers, CI and the README use. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(BIN)):$(PATH)

$(BIN)/maturin:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.7,<2"

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: venv
venv: $(BIN)/maturin ## create .venv with maturin

.PHONY: build-dev
build-dev: venv ## build the extension (debug) into .venv with the dev dependencies
	$(BIN)/maturin develop -q --extras dev

.PHONY: build-prod
build-prod: venv ## build the extension (release, LTO) into .venv with dev and bench dependencies
	$(BIN)/maturin develop -q --release --extras dev,bench

.PHONY: test
test: build-dev ## run the Rust and Python test suites
	cargo test -q
	$(PY) -m pytest -q tests

.PHONY: lint
lint: build-dev ## rustfmt, clippy (warnings are errors), ruff, stubtest
	cargo fmt --check
	cargo clippy -q --all-targets --features python -- -D warnings
	cargo clippy -q --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches
	$(PY) -m mypy.stubtest radixrouter._core

.PHONY: format
format: venv ## format Rust and Python code
	cargo fmt
	$(BIN)/ruff check --fix -q python tests benches || true
	$(BIN)/ruff format -q python tests benches

.PHONY: bench
bench: build-prod ## micro-benchmarks (pytest-benchmark; Rust <-> Python boundary and peers)
	cargo bench -q
	$(PY) -m pytest -q benches --benchmark-only -p no:randomly

.PHONY: fuzz
fuzz: build-prod ## a longer bounded fuzz run of the SSE decoder (FUZZ_SECONDS, default 120)
	FUZZ_SECONDS=$${FUZZ_SECONDS:-120} $(PY) -m pytest -q tests/test_sse_fuzz.py -p no:cacheprovider --timeout 0

.PHONY: fuzz-http
fuzz-http: build-prod ## the router's HTTP fuzz with many more examples (FUZZ_HTTP_EXAMPLES per test, default 3000)
	HYPOTHESIS_PROFILE_HTTP=fuzz-long FUZZ_HTTP_EXAMPLES=$${FUZZ_HTTP_EXAMPLES:-3000} $(PY) -m pytest -q \
	  tests/test_http_fuzz.py -p no:cacheprovider --timeout 0 --hypothesis-show-statistics

.PHONY: soak
soak: build-prod ## mixed load for SOAK_SECONDS (default 60): memory per request, nothing left running, no errors
	$(PY) benches/soak.py $${SOAK_SECONDS:-60}

.PHONY: chaos
chaos: build-prod ## mixed load while workers fail (CHAOS_SECONDS, default 60): every answer complete or a clean error
	$(PY) benches/chaos.py $${CHAOS_SECONDS:-60}

.PHONY: wheel
wheel: venv ## build the release abi3 wheel into dist/
	$(BIN)/maturin build -q --release -o dist

.PHONY: wheel-check
wheel-check: ## `pip install .` into a fresh virtualenv and import the package from it
	rm -rf target/wheel-check && $(PYTHON) -m venv target/wheel-check
	target/wheel-check/bin/pip install -q .
	cd /tmp && $(abspath target/wheel-check/bin/python) -c "import radixrouter, radixrouter._core; \
	  assert radixrouter.encode_event('x') == b'data: x\n\n'; print('wheel ok', radixrouter.__version__, radixrouter._core.__file__)"

.PHONY: clean
clean: ## remove build products and the virtualenv
	rm -rf target $(VENV) .pytest_cache .hypothesis .benchmarks

.PHONY: demo
demo: build-dev ## two simulated workers + the router, a streamed multi-turn chat through the openai client
	$(BIN)/radixrouter demo

.PHONY: bench-e2e
bench-e2e: build-prod ## end-to-end load harness: sim workers behind radixrouter, sglang-router (+ litellm if LITELLM_BIN); E2E_ARGS=...
	$(PY) benches/e2e/run.py $(E2E_ARGS)
