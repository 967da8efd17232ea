# Two commands on a fresh machine: `make demo` and `make test`. Everything else is installed here, pinned.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.posweep-installed
COMPILED_ALL := $(VENV)/.posweep-compiled-all
TORCH := torch==2.13.0
# What only `make test` imports (and packages' own test folders): byte-compiled for the tests, not the demo.
# The one installed file that is not Python 3.11 (torch's test helper for 3.12) is never compiled.
NOT_PY311 := py312_intrinsics\.py$$
TEST_ONLY := /(ray|playwright|hypothesis|_?pytest|tensorboard|trl|networkx|pip|setuptools)/|/tests/|$(NOT_PY311)

.PHONY: install demo demo-quick test browser bench clean

install: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# No resolver: requirements.lock is the complete pinned set, so its wheels install independently, four
	# pip processes at a time (one pip downloads and unpacks one wheel after another). torch first and by
	# name: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PIP) install --no-deps --no-compile $(TORCH)
	grep -hv '^#' requirements.lock requirements-nodeps.txt | grep . | xargs -n 24 -P 4 $(PIP) install --no-deps --no-compile
	$(PIP) install --no-deps --no-compile --no-build-isolation -e .
	# Bytecode on every core (pip compiles on one). It must exist: where PYTHONDONTWRITEBYTECODE is set (as
	# here) Python never writes it, and every process would compile torch and transformers again on import.
	$(PY) -m compileall -q -j 0 -x '$(TEST_ONLY)' $(VENV)/lib > /dev/null
	touch $(STAMP)

$(COMPILED_ALL): $(STAMP)
	$(PY) -m compileall -q -j 0 -x '$(NOT_PY311)' $(VENV)/lib > /dev/null
	touch $(COMPILED_ALL)

demo: install
	$(VENV)/bin/posweep demo

demo-quick: install
	$(VENV)/bin/posweep demo --quick

# Headless Chromium for the report-rendering test: installed when we are root on Debian (as in CI);
# elsewhere that test skips and says what is missing.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "could not install chromium; the report-rendering test will skip"; \
	fi

test: install $(COMPILED_ALL) browser
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: install
	$(PY) bench/train_throughput.py
	$(PY) bench/sample_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
