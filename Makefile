# modalbench: `make demo` sets up and serves the demo study, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := demo

# tch builds against the PyTorch in .venv (LIBTORCH_USE_PYTORCH) and build.rs bakes its
# library folder into the binary's run path
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(CURDIR)/.venv
export PATH := $(CURDIR)/.venv/bin:$(PATH)
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
ADDR ?= 127.0.0.1:8080

.PHONY: demo setup build test fuzz fmt lint load bench

## Set everything up, build, and serve with the demo study queued (prints the URL).
demo: setup build
	$(CARGO_TARGET_DIR)/release/modalbench serve --demo --addr $(ADDR)

setup:
	bash scripts/setup.sh

build:
	cargo build --release

## Run the whole test suite: installs the test requirements, starts the test cluster (a
## single-node Slurm and a PostgreSQL server in $(CLUSTER_DIR)), runs the tests on the SQLite
## store, then the integration tests that touch the store again on PostgreSQL, stops it.
CLUSTER_DIR ?= /tmp/modalbench-cluster
# integration tests that never open a store (model parity, preprocessing) or that make their
# own PostgreSQL databases (shared_db) run once
PG_SKIP := --skip parity --skip preprocessing --skip shared_db::
test:
	bash scripts/setup.sh --test
	bash scripts/cluster.sh up $(CLUSTER_DIR) >/dev/null
	eval "$$(bash scripts/cluster.sh env $(CLUSTER_DIR))" && cargo test --all-targets \
	  && MODALBENCH_TEST_STORE=postgres cargo test --test api -- $(PG_SKIP); \
	  rc=$$?; bash scripts/cluster.sh down $(CLUSTER_DIR); exit $$rc

## Fuzz the JSON API against its OpenAPI document with schemathesis (minutes; not in `test`).
fuzz: setup
	bash scripts/fuzz.sh

fmt:
	cargo fmt

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## Load test: 50 clients for 60 s against a fresh release server (figures in BENCHMARKS.md).
load: build
	.venv/bin/python scripts/load.py --clients 50 --seconds 60

## Performance suite: modalbench against PyTorch, transformers' Trainer and the MLflow server,
## side by side; prints tables and rewrites BENCHMARKS.md's sections (about an hour; not in CI).
## `make bench ARGS="--only ingest --reps 3"` runs a part.
bench: build
	bash scripts/setup.sh --test
	.venv/bin/pip install -q -r scripts/bench/requirements.txt
	.venv/bin/python scripts/bench/run.py $(ARGS)
