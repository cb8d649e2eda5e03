#!/usr/bin/env bash
# `make device-train` on a lent GPU machine (docs/accelerators.md, "On a GPU"): stage 2 continued from the shipped
# model for a fixed wall time (experiments/configs/device_burst.py: at most 7 minutes of steps), from the carried
# bundle (make device-bundle: wheels, the latent cache, the compact text encoder, the experience table); the EMA
# weights come back as a float16 export with the metrics and a device summary:
#   OUT_DIR/model/{config.json, model.safetensors, experience_profiles.npz}, metrics.jsonl, device.json, train.log
#   bash experiments/device_train.sh OUT_DIR [--config.* overrides]
# The machine's python3 has jax (CUDA), flax, optax, orbax, diffrax, absl-py, tokenizers, safetensors, matplotlib
# and no network; PYTHON overrides it (the CPU test runs this script at tiny size).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: device_train.sh OUT_DIR [--config.* overrides]}"
shift
bundle="${DEVICE_BUNDLE:-.device_bundle}"
train="$bundle/train"
py="${PYTHON:-python3}"
work="${DEVICE_WORKDIR:-/tmp/sediff_device_train}"
if [ ! -f "$train/bundle.json" ]; then
  echo "error: $train/bundle.json not found: run 'make device-bundle' here and carry $bundle" >&2
  exit 2
fi
if compgen -G "$bundle/wheels/*.whl" >/dev/null; then
  site="${DEVICE_SITE:-/tmp/sediff_site}"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$bundle"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 SEDIFF_MINILM_DIR="$train/minilm"
rm -rf "$work" && mkdir -p "$work/experience" "$out"
experience=()
if [ -f "$train/experience/experience.jsonl.gz" ]; then
  gunzip -c "$train/experience/experience.jsonl.gz" > "$work/experience/experience.jsonl"
  cp "$train"/experience/*.npz "$train"/experience/*.json "$work/experience/" 2>/dev/null || true
  experience=(--config.experience.dir="$work/experience")
fi
start=$(date +%s)
"$py" -m experiments.train --config="${DEVICE_CONFIG:-experiments/configs/device_burst.py}" --workdir="$work/run" \
  --config.diffusion.latent_cache="$train/latents" "${experience[@]}" "$@" 2>&1 | tee "$out/train.log"
seconds=$(( $(date +%s) - start ))
"$py" -m experiments.export_model --workdir="$work/run" --which=latest --dtype=float16 --out="$out/model" \
  --overwrite --command="make device-train"
cp "$work/run/diffusion/metrics.jsonl" "$out/"
"$py" - "$work/run" "$out" "$seconds" <<'PY'
import json, sys, jax
from sediff_jax.training.carry import burst_summary
summary = burst_summary(sys.argv[1], float(sys.argv[3]))
json.dump(summary, open(f"{sys.argv[2]}/device.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
