# Two commands do all the setup: `make demo` (the whole job on a tiny model) and `make test`.
# Both are idempotent: the venvs are built once and reused while pyproject.toml and the locks are unchanged.
# The venvs are built from exact locks (requirements/lock-py311.txt, lock-py312.txt), so a new release upstream
# changes nothing here until `make lock` is run on purpose; `make test-latest` tries the newest releases.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
MT_VENV := .venv-maxtext
# A Python 3.12 that really runs (a pyenv shim for a version that is not selected does not).
PY312 := $(shell for p in $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) $$(command -v python3.12 2>/dev/null); do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$$p"; break; }; done)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-fast test-maxtext test-latest bench bench-quick clean maxtext-venv lock
LOCK311 := requirements/lock-py311.txt
LOCK312 := requirements/lock-py312.txt

setup: $(VENV)/.stamp maxtext-venv

# Exact versions from the lock (torch 2.13.0+cpu is a local CPU wheel), then ckptmap itself with no resolution
# (which compiles its optional transpose kernel, setup.py).
$(VENV)/.stamp: pyproject.toml setup.py ckptmap/native/transpose.c ckptmap/native/scan.c $(LOCK311)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r $(LOCK311)
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The MaxText worker venv (Python >= 3.12), built whenever a Python 3.12 exists.
maxtext-venv:
	@if [ -n "$(PY312)" ]; then $(MAKE) --no-print-directory $(MT_VENV)/.stamp; \
	 else echo "note: no Python 3.12 found; MaxText-side features (maxtext: trees, verify, ground truth) are unavailable"; fi

$(MT_VENV)/.stamp: $(LOCK312) pyproject.toml setup.py ckptmap/native/transpose.c ckptmap/native/scan.c
	$(PY312) -m venv $(MT_VENV)
	$(MT_VENV)/bin/pip install -q -r $(LOCK312)
	$(MT_VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The whole job on a tiny real checkpoint: HF safetensors -> solve --verify -> convert to MaxText's Orbax layout ->
# MaxText's own loaders -> KL against HF; back to an HF directory from_pretrained loads; and a checkpoint MaxText
# itself saved -> HF. Each ckptmap command is printed as it runs.
demo: setup
	$(VENV)/bin/python -m ckptmap.benchmarks.consumers llama3.1-8b --scan off --show-commands

# Most tests, and every MaxText one, spend their time in one thread (a MaxText worker run is one long JAX compile
# and forward): pytest-xdist spreads them over TEST_JOBS processes (the cores, at most 4, since a MaxText test
# holds a model and its compile in memory). On the 2-core VM the MaxText step took 478 s against 804 s alone.
TEST_JOBS ?= $(shell $(PYTHON) -c "import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))")

test: setup
	$(VENV)/bin/python -m pytest -q -n $(TEST_JOBS) -m "not maxtext" tests
	$(VENV)/bin/ckptmap bench --quick
	@if [ -x $(MT_VENV)/bin/python ]; then $(VENV)/bin/python -m pytest -q -n $(TEST_JOBS) -m maxtext tests; \
	 else echo "ERROR: the MaxText tests need $(MT_VENV) (Python 3.12)"; exit 1; fi

test-fast: $(VENV)/.stamp
	$(VENV)/bin/python -m pytest -q -n $(TEST_JOBS) -m "not maxtext and not slow" tests

# Regenerate both locks from the ranges in pyproject.toml (.venv) and requirements/maxtext-cpu.txt (MaxText
# worker), in throwaway venvs. Review the diff, run `make test`, commit the locks.
lock:
	rm -rf .venv-lock .venv-lock-mt
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q torch==2.13.0
	.venv-lock/bin/pip install -q '.[test,plot,keras,scale]'
	.venv-lock/bin/pip freeze --exclude ckptmap > $(LOCK311)
	$(PY312) -m venv .venv-lock-mt
	.venv-lock-mt/bin/pip install -q -r requirements/maxtext-cpu.txt
	.venv-lock-mt/bin/pip freeze --exclude ckptmap > $(LOCK312)
	rm -rf .venv-lock .venv-lock-mt

# The fast tests against the newest releases the ranges in pyproject.toml admit (not in CI): drift seen on purpose.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q torch==2.13.0
	.venv-latest/bin/pip install -q --upgrade -e '.[test,plot,keras,scale]'
	.venv-latest/bin/pip list 2>/dev/null | grep -iE '^(transformers|torch|jax|orbax-checkpoint|numpy) '
	.venv-latest/bin/python -m pytest -q -m "not maxtext and not slow" tests

bench-quick: $(VENV)/.stamp
	$(VENV)/bin/ckptmap bench --quick

bench: setup
	$(VENV)/bin/ckptmap bench

clean:
	rm -rf $(VENV) $(MT_VENV) .venv-latest .venv-lock .venv-lock-mt build *.egg-info
