r"""Encode a prepared dataset once with a trained VAE: the latent cache stage 2 trains from.

    python -m experiments.encode_latents --config=experiments/configs/ptbxl100.py --workdir=runs/full \
        --config.data.prepared_dir=data/prepared
    python -m experiments.train --config=experiments/configs/ptbxl100.py --workdir=runs/full \
        --config.stage=diffusion --config.diffusion.latent_cache=auto ...

The VAE is `<workdir>/vae` (its best EMA weights) or --config.diffusion.vae_checkpoint (a VAE stage directory
or an exported model). The cache goes where `--config.diffusion.latent_cache=auto` looks for it (beside the
prepared dataset, one directory per VAE weights id), or to --out. It is written whole and renamed into place.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The training config, e.g. experiments/configs/ptbxl100.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The training workdir whose vae/ encodes (unless "
                    "--config.diffusion.vae_checkpoint names a VAE).")
flags.DEFINE_string("out", None, "The cache directory (default: where diffusion.latent_cache=auto looks).")
flags.DEFINE_enum("dtype", None, ["float16", "float32"], "Stored latent precision (default: "
                  "config.diffusion.latent_cache_dtype).")
flags.DEFINE_integer("batch_size", 64, "Records encoded per call.", lower_bound=1)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.data.latents import LatentCacheError
    from sediff_jax.training import sources
    from sediff_jax.training.config import resolve

    config = resolve(FLAGS.config)
    vae_dir = config.diffusion.vae_checkpoint or (os.path.join(FLAGS.workdir, "vae") if FLAGS.workdir else "")
    if not vae_dir:
        raise cli.UsageError("give --workdir (its vae/ encodes) or --config.diffusion.vae_checkpoint")
    if not config.data.prepared_dir:
        if not FLAGS.workdir:
            raise cli.UsageError("give --config.data.prepared_dir (or --workdir, whose prepared/ is the default)")
        config.data.prepared_dir = os.path.join(FLAGS.workdir, "prepared")
    try:
        directory, info = sources.build_latent_cache(config, vae_dir, FLAGS.out, FLAGS.dtype, FLAGS.batch_size)
    except (CheckpointError, LatentCacheError, FileNotFoundError, ValueError) as e:
        cli.fail(str(e))
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)) / 2**20
    counts = ", ".join(f"{split} {n}" for split, n in info.splits.items())
    print(f"latent cache {directory}: {counts}; latents {info.latent_shape} {info.dtype}; VAE weights {info.vae_id}; "
          f"{size:.1f} MB in {info.seconds:.0f} s")


if __name__ == "__main__":
    cli.run(main)
