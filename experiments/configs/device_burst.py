"""device_burst: stage 2 continued from the shipped model on a lent GPU for a fixed wall time (`make device-train`,
docs/accelerators.md): all of PTB-XL's training folds from the carried latent cache (`make device-bundle`), no
prepared dataset, the report and experience encoders' compact copy, batch 256, at most 7 minutes of steps (or
12,000 steps), the EMA weights exported as float16. The prediction target is the shipped model's own (read from
its config.json): a burst continues that model, it does not re-learn its output.

    bash experiments/device_train.sh OUT_DIR [--config.* overrides]
"""

from experiments.configs import ptbxl100_full, tiny
from sediff_jax.checkpoints.exported import read_exported_spec

SHIPPED = "checkpoints/sediff_ptbxl100"
BUNDLE_LATENTS = ".device_bundle/train/latents"


def get_config(variant: str | None = None):
    """`variant`: a loss variant of ptbxl100_full (with the shipped model's prediction target), or 'tiny' (the tiny
    config's models and sizes: the CPU test of `make device-train`)."""
    if variant == "tiny":
        return _tiny()
    c = ptbxl100_full.get_config(variant)
    c.diffusion.loss.prediction = read_exported_spec(SHIPPED).prediction
    c.stage = "diffusion"
    c.data.update(source_dir="", prepare_if_missing=False, test_split="")
    c.diffusion.update(latent_cache=BUNDLE_LATENTS, vae_checkpoint=SHIPPED, init_from=SHIPPED)
    c.diffusion.training.update(batch_size=256, num_steps=12_000, max_minutes=7.0, log_every=50, eval_every=1000,
                                checkpoint_every=500, max_eval_batches=8, max_to_keep=2, tensorboard=False,
                                progress_bar=False, eval_samples=0)  # (sampling would compile for ~1 min)
    c.diffusion.optimizer.update(learning_rate=2e-4, warmup_steps=200)
    return c


def _tiny():
    c = tiny.get_config()
    c.stage = "diffusion"
    c.data.update(prepare_if_missing=False, test_split="")
    c.diffusion.latent_cache = BUNDLE_LATENTS
    c.diffusion.training.update(num_steps=3, max_minutes=7.0, eval_every=2, checkpoint_every=2, max_to_keep=2,
                                tensorboard=False, progress_bar=False)
    return c
