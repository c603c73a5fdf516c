# Two commands matter: `make run` and `make test`. Both create the venv on demand, with
# PYTHON if given, else the newest of python3.13, python3.12, python3.11 on PATH (the
# versions pyproject's classifiers list; tests/pythons.sh finds them).
PYTHON ?=
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# One line that says which Python the venv runs (and whether PYTHON asks for another).
SAY_PYTHON = @v=$$($(PY) -c 'import platform; print(platform.python_version())'); \
	echo "python $$v ($(VENV))"; \
	if [ -n "$(PYTHON)" ] && [ "$$(sh tests/pythons.sh check $(PYTHON) 2>/dev/null)" != "$$v" ]; then \
	  echo "note: PYTHON=$(PYTHON) is not the Python of $(VENV); make clean to make it anew"; fi

.PHONY: run test lint bench cluster clean

$(STAMP): pyproject.toml
	@py="$(PYTHON)"; [ -n "$$py" ] || py=$$(sh tests/pythons.sh primary) || exit 2; \
	v=$$(sh tests/pythons.sh check "$$py") || exit 2; \
	echo "making $(VENV) with Python $$v ($$py)"; \
	"$$py" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(SAY_PYTHON)
	$(VENV)/bin/tasksd

# The suite runs on TEST_WORKERS processes (pytest-xdist), a test file per
# worker at a time: most tests wait on real nodes rather than compute, so two
# workers on two cores halve the wall time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(SAY_PYTHON)
	$(PY) -m ruff check .
	$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	$(PY) -m pytest -q -p no:xdist tests/cluster/api/http/test_openapi_fuzz.py  # schemathesis: not under xdist
	$(MAKE) --no-print-directory chaos-smoke
	@sh tests/pythons.sh quick $(PY) "full suite passed ($(VENV))"

# The quick suite (tests/quick) on every other supported Python found: PATH, then pyenv;
# each in its own .venv-3.X (about 25 s each the first time, 10 s after).
# OTHER_PYTHONS=none skips them, OTHER_PYTHONS="3.12 /usr/bin/python3.13" chooses
# (tests/pythons.sh).
.PHONY: test-pythons
test-pythons: $(STAMP)
	@sh tests/pythons.sh quick $(PY) "full suite not run (make test runs it)"

# Chaos: real nodes, real faults, a checker over the recorded history (chaos/README.md).
.PHONY: chaos-smoke chaos
chaos-smoke: $(STAMP)
	$(PY) -m chaos smoke --out chaos-smoke.json

chaos: $(STAMP)
	$(PY) -m chaos long --with-migration --nodes 4 --replication-factor 3 --duration $${CHAOS_DURATION:-1800} --out chaos-long.json

# The property tests with fresh random examples (`make test` uses fixed ones);
# FUZZ_ROUNDS runs of every file that uses hypothesis, the hostile-client fuzzer
# (tests/cluster/api/test_hostile_fuzz.py: random ZAP frames, msgpack bodies and
# HTTP requests at one node) among them. `make fuzz-hostile` runs that one alone,
# longer: HOSTILE_FUZZ_EXAMPLES (2000) examples per test and round.
.PHONY: fuzz fuzz-hostile
fuzz: $(STAMP)
	for i in $$(seq $${FUZZ_ROUNDS:-5}); do \
	  HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider $$(grep -rl "from hypothesis" tests) || exit 1; \
	done

fuzz-hostile: $(STAMP)
	for i in $$(seq $${FUZZ_ROUNDS:-5}); do \
	  HYPOTHESIS_PROFILE=fuzz HOSTILE_FUZZ_EXAMPLES=$${HOSTILE_FUZZ_EXAMPLES:-2000} \
	    $(PY) -m pytest -q -p no:cacheprovider tests/cluster/api/test_hostile_fuzz.py || exit 1; \
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
	rm -rf $(VENV) .venv-3.* tasks-data .pytest_cache .ruff_cache .typecheck chaos-smoke.json chaos-long.json

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

# A 3-activity durable workflow end to end (client start -> handle.result) on 1 and 3 nodes,
# beside the task-style handler doing the same three calls (issue 15).
# WORKFLOWS_ARGS=--quick: 1 and 16 clients, 2 s a row (~1 min).
WORKFLOWS_ARGS ?=
.PHONY: bench-workflows
bench-workflows: $(STAMP)
	$(PY) -m bench.workflows $(WORKFLOWS_ARGS)
