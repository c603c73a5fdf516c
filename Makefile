# Two commands matter: `make run` and `make test`. Both create the venv on demand.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench cluster clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tasksd

# The suite runs on TEST_WORKERS processes (pytest-xdist), a test file per
# worker at a time: most tests wait on real nodes rather than compute, so two
# workers on two cores halve the wall time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m ruff check .
	$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	$(MAKE) --no-print-directory chaos-smoke

# Chaos: real nodes, real faults, a checker over the recorded history (chaos/README.md).
.PHONY: chaos-smoke chaos
chaos-smoke: $(STAMP)
	$(PY) -m chaos smoke --out chaos-smoke.json

chaos: $(STAMP)
	$(PY) -m chaos long --with-migration --nodes 4 --replication-factor 3 --duration $${CHAOS_DURATION:-1800} --out chaos-long.json

# The property tests with fresh random examples (`make test` uses fixed ones);
# FUZZ_ROUNDS runs of every file that uses hypothesis.
.PHONY: fuzz
fuzz: $(STAMP)
	for i in $$(seq $${FUZZ_ROUNDS:-5}); do \
	  HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider $$(grep -rl "from hypothesis" tests) || exit 1; \
	done

cluster: $(STAMP)
	$(VENV)/bin/tasksd dev-cluster --nodes 3 --dir ./tasks-dev

# mypy over the packages of pyproject's [tool.mypy]: all of hanzo_tasks, strict on
# shard, routing, protocol and replication, default settings on tasks, cluster and
# migration. tests/typecheck.py lays out .typecheck/hanzo_tasks as symlinks because
# mypy cannot see setuptools' package-dir.
.PHONY: typecheck
typecheck: $(STAMP)
	$(PY) tests/typecheck.py

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m bench.single_node

clean:
	rm -rf $(VENV) tasks-data .pytest_cache .ruff_cache .typecheck chaos-smoke.json chaos-long.json

.PHONY: bench-dispatch
bench-dispatch: $(STAMP)
	$(PY) -m bench.dispatch

.PHONY: bench-cluster
bench-cluster: $(STAMP)
	$(PY) -m bench.cluster

# 4 nodes with replication factor 3, so a move takes the shard to other machines
# (MIGRATION_ARGS="--nodes 3" for every node holding every partition; --quick: ~40 s).
MIGRATION_ARGS ?= --nodes 4 --replication-factor 3
.PHONY: bench-migration
bench-migration: $(STAMP)
	$(PY) -m bench.migration $(MIGRATION_ARGS)

# Durable starts on 1 and 3 nodes against etcd (Debian etcd-server, if installed) under one
# load generator (issue 14). THROUGHPUT_ARGS=--quick: 1 and 128 clients, 2 s a row (~30 s).
THROUGHPUT_ARGS ?=
.PHONY: bench-throughput
bench-throughput: $(STAMP)
	$(PY) -m bench.throughput $(THROUGHPUT_ARGS)
