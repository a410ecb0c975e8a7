# Two commands do all the setup: `make demo` (solve a bundled model) and `make test`.
# Both are idempotent: the venvs are built once and reused while pyproject.toml and the pins are unchanged.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
MT_VENV := .venv-maxtext
# A Python 3.12 that really runs (a pyenv shim for a version that is not selected does not).
PY312 := $(shell for p in $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) $$(command -v python3.12 2>/dev/null); do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$$p"; break; }; done)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast test-maxtext bench bench-quick clean maxtext-venv

setup: $(VENV)/.stamp maxtext-venv

# torch==2.13.0 first: it is a local CPU wheel; anything looser would pull a multi-GB CUDA build.
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test,plot]'
	touch $@

# The MaxText worker venv (Python >= 3.12), built whenever a Python 3.12 exists.
maxtext-venv:
	@if [ -n "$(PY312)" ]; then $(MAKE) --no-print-directory $(MT_VENV)/.stamp; \
	 else echo "note: no Python 3.12 found; MaxText-side features (maxtext: trees, verify, ground truth) are unavailable"; fi

$(MT_VENV)/.stamp: requirements/maxtext-cpu.txt pyproject.toml
	$(PY312) -m venv $(MT_VENV)
	$(MT_VENV)/bin/pip install -q -r requirements/maxtext-cpu.txt
	$(MT_VENV)/bin/pip install -q --no-deps -e .
	touch $@

demo: setup
	$(VENV)/bin/ckptmap solve llama3.1 --tiny

test: setup
	$(VENV)/bin/python -m pytest -q -m "not maxtext" tests
	$(VENV)/bin/ckptmap bench --quick
	@if [ -x $(MT_VENV)/bin/python ]; then $(VENV)/bin/python -m pytest -q -m maxtext tests; \
	 else echo "ERROR: the MaxText tests need $(MT_VENV) (Python 3.12)"; exit 1; fi

test-fast: $(VENV)/.stamp
	$(VENV)/bin/python -m pytest -q -m "not maxtext and not slow" tests

bench-quick: $(VENV)/.stamp
	$(VENV)/bin/ckptmap bench --quick

bench: setup
	$(VENV)/bin/ckptmap bench

clean:
	rm -rf $(VENV) $(MT_VENV) build *.egg-info
