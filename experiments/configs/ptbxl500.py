"""ptbxl500: PTB-XL at 500 Hz (folds 1-8 / 9 / 10), latent 625 x 4; for GPUs and TPUs."""

import os

from experiments.configs.common import apply_variant, base_config, data_dir


def get_config(variant: str | None = None):
    c = base_config()
    c.data.update(dataset="ptbxl", source_dir=os.path.join(data_dir(), "ptb-xl"), fs=500.0, num_workers=8, loader_workers=4)
    c.vae.model.update(channels=(64, 128, 256), kernel_size=9, beat_hidden=256)
    c.vae.training.update(batch_size=64, num_steps=50_000, log_every=50, eval_every=1000, checkpoint_every=1000,
                          max_eval_batches=32)
    c.diffusion.model.update(channels=(128, 256, 256, 512), attention=(False, False, True, True), num_heads=8)
    c.diffusion.training.update(batch_size=64, num_steps=200_000, log_every=50, eval_every=2000,
                                checkpoint_every=2000, max_eval_batches=32)
    c.diffusion.training.eval_samples = 4  # generated ECGs at each evaluation (TensorBoard, samples/)
    return apply_variant(c, variant)
