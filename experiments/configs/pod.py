"""pod: the mimic config scaled for a TPU pod or multi-GPU hosts: global batch 2048 (divisible by any
power-of-two device count up to 2048), run with --distributed on every host."""

from experiments.configs import mimic


def get_config(variant: str | None = None):
    c = mimic.get_config(variant)
    c.data.prefetch = 16
    c.data.loader_workers = 8
    c.vae.training.update(batch_size=2048, num_steps=30_000, checkpoint_every=1000)
    c.vae.optimizer.update(learning_rate=4e-3, warmup_steps=1000)
    c.diffusion.training.update(batch_size=2048, num_steps=100_000, checkpoint_every=1000)
    c.diffusion.training.eval_samples = 4  # generated ECGs at each evaluation (TensorBoard, samples/)
    c.diffusion.optimizer.update(learning_rate=8e-4, warmup_steps=2000)
    return c
