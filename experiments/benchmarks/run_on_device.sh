#!/usr/bin/env bash
# The device benchmark on a lent accelerator machine: its python3 has jax (CUDA), flax, optax, orbax, diffrax,
# absl-py, tokenizers and safetensors but no network. Installs the wheels of the carried bundle (make
# device-bundle) into a scratch folder, then runs experiments.benchmarks.device with the bundle's text encodings.
#   bash experiments/benchmarks/run_on_device.sh OUT_DIR [more benchmark flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle="${DEVICE_BUNDLE:-.device_bundle}"
out="${1:?usage: run_on_device.sh OUT_DIR [benchmark flags]}"
shift
site="${DEVICE_SITE:-/tmp/sediff_site}"
if [ ! -f "$bundle/text_encodings.npz" ]; then
  echo "error: $bundle/text_encodings.npz not found: run 'make device-bundle' here and carry $bundle" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$bundle"/wheels/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
python3 -c "import jax, flax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
exec python3 -m experiments.benchmarks.device --out="$out" --text_encodings="$bundle/text_encodings.npz" "$@"
