# betblock: the two commands are `make run` and `make test`; see README.md.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TEST_APT := nsd unbound chromium bind9 pdns-recursor
BENCH_APT := dnsperf unbound pdns-recursor nsd
# Most tests wait on processes they started (betblock, NSD, Unbound, BIND, Chromium): two workers
# keep both cores of the reference machine busy; more only add starvation when it is loaded.
TEST_WORKERS ?= 2

.PHONY: run test test-fast bench bench-icount bench-quick torture bench-rrl bench-xfr check-config clean readme

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## Run the service on the embedded defaults (DNS on 127.0.0.1:1053, sample lists, no root).
run: $(STAMP)
	$(VENV)/bin/betblock serve --config config/betblock.toml --log-format console

## Install what the tests need (venv, Debian packages) and run them, in TEST_WORKERS processes
## (pytest-xdist; worksteal: an idle worker takes tests queued for a busy one).
test: $(STAMP)
	tools/apt-install.sh $(TEST_APT)
	tools/tree-unchanged.sh $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow" -n $(TEST_WORKERS) --dist worksteal

check-config: $(STAMP)
	$(VENV)/bin/betblock check-config --config config/betblock.toml

## Benchmark against Unbound with dnsperf (not part of make test; see bench/README.md).
bench: $(STAMP)
	tools/apt-install.sh $(BENCH_APT)
	$(PYTHON) bench/bench.py $(BENCH_ARGS)

## Instructions per answered query under valgrind's callgrind: same count on a loaded machine.
bench-icount: $(STAMP)
	tools/apt-install.sh valgrind $(BENCH_APT)
	$(PYTHON) bench/icount.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	tools/apt-install.sh $(BENCH_APT)
	$(PYTHON) bench/bench.py --quick

## What rate limiting costs per packet, in process (see README, Tests and benchmarks).
bench-rrl: $(STAMP)
	$(PY) tools/rrl_bench.py

## Hostile load and faults against real processes on loopback, about 2 minutes; one table, also
## written into README.md (not part of make test; see README, Hostile load).
torture: $(STAMP)
	$(PY) tools/torture.py --readme $(TORTURE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache bench/run bench/results

## Regenerate the README's configuration table from config/settings.py.
readme: $(STAMP)
	$(PY) tools/readme_config.py

## Zone-transfer figures: AXFR of a 1M-entry RPZ zone against NSD, a 1 % change to followers (see README).
bench-xfr: $(STAMP)
	tools/apt-install.sh dnsutils nsd unbound
	$(PY) bench/xfr.py $(BENCH_ARGS)
