# The two commands (see README): `make demo` runs the main job, `make test` runs the suite.
# Both create .venv on first use with everything the project needs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-quick bench-peers up clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,cluster]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pryxbus demo

up: $(STAMP)
	$(VENV)/bin/pryxbus up

# Four pytest workers (pytest-xdist): the suite mostly waits on real processes, so more workers than cores
# still shortens it on two cores. TEST_WORKERS=0 runs it in one process (as plain `pytest` does).
TEST_WORKERS ?= 4

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Benchmarks (bench/): `make bench-peers` once (root: Debian's redis-server and nats-server, plus
# the Python clients and matplotlib), then `make bench-quick` (< 1 min, 3 runs per figure) or
# `make bench` (the full run behind the README's figures, about 8 min). Results, report.md and
# charts go to bench-results/.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,cluster,bench]'
	touch $(BENCH_STAMP)

bench-peers: $(BENCH_STAMP)
	@if command -v redis-server >/dev/null && { command -v nats-server || test -x /usr/sbin/nats-server; } >/dev/null; then \
		echo "redis-server and nats-server already installed"; \
	elif command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		for p in redis-server nats-server; do \
			apt-cache show $$p >/dev/null 2>&1 || { echo "apt has no $$p package here"; exit 1; }; \
		done && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nats-server; \
	else \
		echo "no apt-get: install redis-server and nats-server with your package manager"; exit 1; \
	fi

bench-quick: $(BENCH_STAMP)
	$(VENV)/bin/pryxbus bench --quick $(BENCH_ARGS)

bench: $(BENCH_STAMP)
	$(VENV)/bin/pryxbus bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
