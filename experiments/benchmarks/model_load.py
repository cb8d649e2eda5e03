r"""Model load time: `load_model` of the shipped checkpoint in fresh processes, against building the networks
concretely (random initialisers compiled and run, then overwritten by the file: how models loaded before).

    python -m experiments.benchmarks.model_load [--repeats=3] [--checkpoint=DIR]

Each repeat starts a new Python process (so no trace or compile cache carries over) that imports sediff_jax,
then times one load; the file is read once before, so the disk is warm. Both ways give the same weights (checked
here). Target: load <= 3 s plus the file read.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import numpy as np
from absl import flags

from experiments import cli
from experiments.benchmarks.timing import print_table

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 3, "Fresh processes per way of loading.")
flags.DEFINE_string("checkpoint", None, "An exported model directory (default: the shipped checkpoint).")
cli.check_int("repeats", 1, 100)

# One load in a fresh process: prints {"import_s", "load_s", "checksum"} as JSON.
_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, numpy as np
from flax import nnx
from sediff_jax.generation import SHIPPED_CHECKPOINT, load_model
from sediff_jax.generation import model as model_lib
path, way = sys.argv[1] or SHIPPED_CHECKPOINT, sys.argv[2]
open(f"{path}/model.safetensors", "rb").read()  # warm disk
t1 = time.perf_counter()
if way == "concrete":  # the reference: random initialisers compiled and run, then replaced by the file's weights
    from sediff_jax.models.denoiser import LatentDenoiser
    from sediff_jax.models.vae import ECGVAE
    from sediff_jax.optim import split_params
    def build(spec):
        return (*split_params(LatentDenoiser(spec.denoiser, rngs=nnx.Rngs(0))),
                *split_params(ECGVAE(spec.vae, rngs=nnx.Rngs(0))))
    model_lib._build = build
model = load_model(path)
jax.block_until_ready(model.denoiser_params)
t2 = time.perf_counter()
checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(model.denoiser_params)))
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "checksum": checksum, "id": model.id}))
"""


def probe(way: str) -> dict:
    result = subprocess.run([sys.executable, "-c", _PROBE, FLAGS.checkpoint or "", way], capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise cli.UsageError(f"the {way} load failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    import jax

    from sediff_jax.checkpoints.exported import is_exported

    if FLAGS.checkpoint and not is_exported(FLAGS.checkpoint):
        raise cli.UsageError(f"--checkpoint={FLAGS.checkpoint}: not an exported model directory (config.json and "
                             "model.safetensors)")

    runs = {way: [probe(way) for _ in range(FLAGS.repeats)] for way in ("abstract", "concrete")}
    ours, reference = runs["abstract"], runs["concrete"]
    same = {r["checksum"] for r in ours + reference} == {ours[0]["checksum"]} and len({r["id"] for r in ours}) == 1
    load, ref_load = np.median([r["load_s"] for r in ours]), np.median([r["load_s"] for r in reference])
    print_table(f"Model load, {platform.machine()} CPU, jax {jax.__version__}, {FLAGS.repeats} fresh processes each "
                "(median)", ["model", "import s", "load s (abstract build, ours)", "load s (concrete init, reference)",
                             "speed-up", "same weights"],
                [(ours[0]["id"], f"{np.median([r['import_s'] for r in ours]):.2f}", f"{load:.2f}", f"{ref_load:.2f}",
                  f"{ref_load / load:.1f}x", "yes" if same else "NO")], [False] + [True] * 4 + [False])
    return 0 if same else 1


if __name__ == "__main__":
    cli.run(main)
