# tailsift: developer and CI entry points (.ci/run runs `make test`).
#
#   make venv          .venv with Python >= 3.11 and `pip install -e '.[test]'`, which builds the
#                      native core (native/, Rust) when cargo is there (again only when
#                      pyproject.toml or native/ sources change; stamp: .venv/.installed)
#   make test          unit + integration tests; the pytest session starts its own Kafka broker
#   make test-unit     unit tests only (no Java, no Kafka)
#   make lint          ruff check + ruff format --check + mypy on operators/ (CI runs it before the tests)
#   make kafka-fetch / kafka-start / kafka-stop / kafka-status    the local broker (deploy/local/kafka)
#   make demo / bench  the tailsift demo and benchmark
#   make otelcol       build the pinned OpenTelemetry Collector (deploy/otelcol; needs Go; cached
#                      per version in .cache/otelcol/, reusing Go's module cache)
#   make bench-peer    tailsift vs the Collector's tail_sampling, each on one core, in one run
#   make chaos         the chaos, fuzz and overload suite, full profile (tailsift chaos; README "Guarantees")
#   make chromium      Debian's chromium + chromium-driver (the HTML report's browser test; apt-get as root)
#   make docs-report   a short demo, its HTML report screenshotted in headless Chromium -> docs/report.png
#   make clean         stop the local broker, delete .kafka, caches and build files (keeps .venv)
#   make distclean     clean, and delete .venv and the Collector build (.cache) too

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
KAFKA  := $(PYTHON) deploy/local/kafka
# Two xdist lanes (-n 2 --dist loadgroup): the integration tests in two groups, each in order on one
# worker against its own session broker, the unit tests on whichever worker is free (tests/conftest.py).
# Run in one process with PYTEST_ARGS="-q -p no:xdist" (or -n 0).
PYTEST_ARGS ?= -q -n 2 --dist loadgroup --durations=20

.PHONY: lint venv kafka-fetch kafka-start kafka-stop kafka-status test test-unit test-python-core demo bench otelcol bench-peer chaos chromium docs-report clean distclean

venv: $(VENV)/.installed

# the native core is built by the install: a change to its sources installs again
$(VENV)/.installed: pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	@if [ ! -x $(VPY) ]; then \
	  $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "$(PYTHON) is Python %d.%d; tailsift needs >= 3.11 (make PYTHON=python3.11 ...)" % sys.version_info[:2])' && \
	  echo "creating $(VENV) with $$($(PYTHON) --version)" && \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@$(VPY) -c 'import pipeline._native' 2>/dev/null && echo "native core: built (pipeline._native)" || \
	  echo "native core: NOT built (no cargo on PATH, or the crate failed to build: pip install -v -e . shows why); the job uses its Python decoders (README Design)"
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

kafka-fetch:
	$(KAFKA) fetch

kafka-start:
	$(KAFKA) start

kafka-stop:
	$(KAFKA) stop

kafka-status:
	$(KAFKA) status

# pytest exits 5 when it collected no tests: that is a failure here, not a green run.
test: venv kafka-fetch
	@rc=0; $(VPY) -m pytest tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

test-unit: venv
	@rc=0; $(VPY) -m pytest tests/unit $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-unit: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# the whole suite on the Python reference core: `job.core: auto` (every config that does not name a
# core) means python in this run (pipeline/config.py auto_core_override; issue 17)
test-python-core: venv kafka-fetch
	@rc=0; TAILSIFT_AUTO_CORE=python $(VPY) -m pytest tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-python-core: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# ---- placeholders: the lead fills these in (the `tailsift demo` / `tailsift bench` commands) ----
demo: venv
	$(VENV)/bin/tailsift demo

bench: venv
	$(VENV)/bin/tailsift bench
# -------------------------------------------------------------------------------------------------

otelcol:
	$(PYTHON) deploy/otelcol/build

# PEER_ARGS: e.g. PEER_ARGS="--traces 5000 --variants keyed" (python -m pipeline.peerbench --help)
bench-peer: venv kafka-fetch otelcol
	$(VPY) -m pipeline.peerbench $(PEER_ARGS)

# Starts its own broker instance (.kafka/chaos-*), removed afterwards; CHAOS_ARGS e.g. --scenario fuzz.
# Takes 14-23 min on a loaded 2-core machine (README "Guarantees").
CHAOS_ARGS ?=
chaos: venv kafka-fetch
	$(VENV)/bin/tailsift chaos --profile full $(CHAOS_ARGS)

# tests/integration/test_html_report.py runs the same script itself when the browser is missing
chromium:
	deploy/local/chromium

# README "Before you change the config": the committed screenshot of the demo's HTML report
DOCS_REPORT_HTML ?= $(CURDIR)/.cache/docs-report.html
docs-report: venv kafka-fetch chromium
	mkdir -p .cache docs
	TAILSIFT_DEMO_HTML=$(DOCS_REPORT_HTML) $(VENV)/bin/tailsift demo --duration 20 --rate 100
	$(VPY) -m pipeline.htmlreport.browser $(DOCS_REPORT_HTML) --screenshot docs/report.png

clean:
	-$(KAFKA) stop
	rm -rf .kafka .pytest_cache .hypothesis .mypy_cache .ruff_cache build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache native/target pipeline/_native*.so
