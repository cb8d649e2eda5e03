"""mimic: MIMIC-IV-ECG (~800k records, machine reports) at 100 Hz; prepare it first with
experiments/prepare_data.py --dataset=mimic (set data.prepared_dir to that out_dir)."""

import os

from experiments.configs.common import apply_variant, base_config, data_dir


def get_config(variant: str | None = None):
    c = base_config()
    c.data.update(dataset="mimic", source_dir=os.path.join(data_dir(), "mimic-iv-ecg"), fs=100.0,
                  prepare_if_missing=False, prefetch=8)
    c.vae.model.update(channels=(64, 128, 256), beat_hidden=256)
    c.vae.training.update(batch_size=256, num_steps=100_000, log_every=100, eval_every=5000,
                          checkpoint_every=2000, max_eval_batches=64)
    c.diffusion.model.update(channels=(128, 256, 512), attention=(False, True, True), num_heads=8)
    c.diffusion.training.update(batch_size=256, num_steps=300_000, log_every=100, eval_every=5000,
                                checkpoint_every=2000, max_eval_batches=64)
    c.diffusion.training.eval_samples = 4  # generated ECGs at each evaluation (TensorBoard, samples/)
    return apply_variant(c, variant)
