"""synthetic: 2000 simulator-made records at 100 Hz, the default models; needs no data at all."""

from experiments.configs.common import apply_variant, base_config


def get_config(variant: str | None = None):
    c = base_config()
    c.data.num_synthetic = 2000
    c.vae.training.update(batch_size=32, num_steps=3000, log_every=25, eval_every=250, checkpoint_every=250)
    c.diffusion.training.update(batch_size=32, num_steps=3000, log_every=25, eval_every=250, checkpoint_every=250)
    c.diffusion.training.eval_samples = 4  # generated ECGs at each evaluation (TensorBoard, samples/)
    return apply_variant(c, variant)
