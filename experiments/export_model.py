r"""Export a trained SE-Diff run (the best EMA denoiser + its VAE) as a self-contained model directory.

    python -m experiments.export_model --workdir=runs/ptbxl100 --out=checkpoints/sediff_ptbxl100

writes <out>/config.json and <out>/model.safetensors (what experiments/sample.py --checkpoint reads; no orbax,
no optimiser state), atomically. --metrics adds a JSON file's contents (e.g. an evaluation) to the config.
"""

from __future__ import annotations

import json

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (with diffusion/) or a diffusion stage directory.",
                    required=True)
flags.DEFINE_string("out", None, "Output model directory.", required=True)
flags.DEFINE_string("command", "", "The training command, recorded in the config for reproduction.")
flags.DEFINE_string("metrics", None, "A JSON file to record under 'metrics' in the config.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
flags.DEFINE_enum("which", "best", ["best", "latest"], "The best checkpoint on validation, or the latest.")
flags.DEFINE_integer("step", None, "Export the kept checkpoint of this step instead (e.g. for a learning "
                     "curve; training keeps the last --config.<stage>.training.max_to_keep).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float16"], "Stored weight precision (float16: half the size).")


def main(argv):
    del argv
    from sediff_jax.generation import export_model, load_model
    from sediff_jax.generation.model import WEIGHTS_FILE, check_export_target
    from sediff_jax.checkpoints import CheckpointError

    try:
        check_export_target(FLAGS.out, FLAGS.overwrite)  # before the (slow) model load
        extra = {}
        if FLAGS.metrics:
            with open(FLAGS.metrics) as f:
                extra["metrics"] = json.loads(f.read(), parse_constant=_reject_constant)
        model = load_model(FLAGS.workdir, FLAGS.which, FLAGS.step)
        training = model.spec.training
        training.pop("workdir", None)
        if FLAGS.command:
            training["command"] = FLAGS.command
        extra["training"] = training
        out = export_model(model, FLAGS.out, extra, overwrite=FLAGS.overwrite, dtype=FLAGS.dtype)
    except (CheckpointError, FileExistsError, OSError, ValueError) as e:
        cli.fail(str(e))
    size = (out / WEIGHTS_FILE).stat().st_size / 2**20
    print(f"exported {model.source} to {out} ({size:.1f} MB, model id {load_model(out).id})")


def _reject_constant(name: str):
    raise ValueError(f"--metrics={FLAGS.metrics}: {name} is not valid JSON (use null for a missing number)")


if __name__ == "__main__":
    cli.run(main)
