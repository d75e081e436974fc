# Two entry points, each installing what it needs into .venv first:
#   make demo   build the default model for CPU, serve it with a real Triton, ask it a question
#   make test   run the whole test suite (what CI runs), checkov's Kubernetes checks and the real clients included
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# checkov lives apart (tools/policy/checkov-requirements.txt says why); tests/test_checkov.py runs it from here.
CHECKOV_VENV := .venv-checkov
# So do the benchmark clients tests/test_clients.py runs (tests/support/clients-requirements.txt says why).
CLIENTS_VENV := .venv-clients
# pip installs with --no-compile: byte-compiling the three environments' ~48,000 .py files costs minutes of
# CPU (measured on a quiet 2-core machine: 83 s for .venv-clients' 26,600, more than its install without
# it took, 78 s), mostly for modules nothing imports; Python compiles the imported ones on first use.

.PHONY: demo test lint install checkov clients prometheus cpu-repository

$(VENV)/.installed: pyproject.toml gateway/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, at the release these machines carry as a CPU wheel: left to the resolver, torch
	# comes as the multi-GB CUDA build. Elsewhere, preinstall the CPU wheel from download.pytorch.org/whl/cpu.
	$(PY) -m pip install --quiet --no-compile "torch==2.13.0"
	# The gateway's image pins (gateway/requirements.txt) constrain the ranges, so the tests run the
	# versions the image ships, not whatever newer release the ranges allow (constraints take no extras).
	sed 's/\[[a-z,]*\]//' gateway/requirements.txt > $(VENV)/gateway-constraints.txt
	$(PY) -m pip install --quiet --no-compile -e ".[test]" -c $(VENV)/gateway-constraints.txt
	touch $@

# The monitoring tests run Debian's prometheus (promtool too); installed where we are root with apt,
# else tests/test_monitoring_*.py skip and say how to install it.
prometheus:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get install -y -qq prometheus >/dev/null; } || echo "prometheus not installed: the monitoring tests will skip"

install: $(VENV)/.installed prometheus

$(CHECKOV_VENV)/.installed: tools/policy/checkov-requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --no-compile -r tools/policy/checkov-requirements.txt
	touch $@

checkov: $(CHECKOV_VENV)/.installed

$(CLIENTS_VENV)/.installed: tests/support/clients-requirements.txt
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	# guidellm requires torch: the CPU wheel first, as for .venv, or the resolver brings the CUDA build
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --no-compile "torch==2.13.0"
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --no-compile -r tests/support/clients-requirements.txt
	touch $@

clients: $(CLIENTS_VENV)/.installed

demo: install
	$(PY) tools/demo.py

# The CPU repository the tests serve (tests/conftest.py's cpu_repository runs this same command and,
# finding it up to date, goes on at once): built here so that it overlaps the other environments' installs.
cpu-repository: $(VENV)/.installed
	$(PY) build/compile.py --gpu cpu --out out/cpu

# Everything before pytest is independent once .venv exists: the three environments, apt's prometheus and
# the CPU repository run at once (-j), so a fresh clone waits for the slowest of them, not their sum.
# --output-sync keeps each step's output together.
test:
	$(MAKE) --no-print-directory -j5 --output-sync=target install checkov clients cpu-repository
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check .
