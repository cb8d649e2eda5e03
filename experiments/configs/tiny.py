"""tiny: both stages on 64 simulated records at 100 Hz with small models; the CI smoke run (< 2 min on CPU)."""

from experiments.configs.common import apply_variant, base_config


def get_config(variant: str | None = None):
    c = base_config()
    c.data.num_synthetic = 64
    c.data.prefetch = 1
    c.vae.model.channels = (8, 16, 32)
    c.vae.model.beat_hidden = 32
    c.vae.optimizer.warmup_steps = 5
    c.vae.training.update(batch_size=8, num_steps=20, log_every=5, eval_every=10, checkpoint_every=10,
                          max_eval_batches=1)
    c.diffusion.model.update(channels=(16, 32), attention=(False, True), num_heads=2, time_embed_dim=32)
    c.diffusion.schedule.num_steps = 100
    c.diffusion.optimizer.warmup_steps = 5
    c.diffusion.latent_scale_batches = 2
    c.diffusion.training.update(batch_size=8, num_steps=20, log_every=5, eval_every=10, checkpoint_every=10,
                                max_eval_batches=1)
    return apply_variant(c, variant)
