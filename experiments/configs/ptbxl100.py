"""ptbxl100: PTB-XL at 100 Hz (folds 1-8 train, 9 validation, 10 test) from $SEDIFF_DATA_DIR/ptb-xl; the config
whose figures the README reports on this CPU (the shared 500-record subset) and a sensible start on full
PTB-XL (raise the step counts)."""

import os

from experiments.configs.common import apply_variant, base_config, data_dir


def get_config(variant: str | None = None):
    c = base_config()
    c.data.update(dataset="ptbxl", source_dir=os.path.join(data_dir(), "ptb-xl"), fs=100.0)
    c.vae.training.update(batch_size=32, num_steps=1200, log_every=25, eval_every=200, checkpoint_every=200)
    c.vae.optimizer.update(learning_rate=2e-3, warmup_steps=100)
    c.diffusion.training.update(batch_size=32, num_steps=2000, log_every=25, eval_every=250, checkpoint_every=250)
    c.diffusion.training.eval_samples = 4  # generated ECGs at each evaluation (TensorBoard, samples/)
    return apply_variant(c, variant)
