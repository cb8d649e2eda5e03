"""ptbxl100_full: all of PTB-XL at 100 Hz (21,799 records; folds 1-8 train, 9 validation, 10 test) from
$SEDIFF_DATA_DIR/ptb-xl-full (laid out by ../shared/data/ptb-xl-full/extract.sh). The config of the shipped model's
training on this 2-core CPU, stage 2 from a latent cache:

    python -m experiments.prepare_data --dataset=ptbxl --source_dir=$SEDIFF_DATA_DIR/ptb-xl-full --fs=100 \
        --out_dir=data/prepared
    python -m experiments.train --config=experiments/configs/ptbxl100_full.py --workdir=runs/full \
        --config.stage=vae --config.data.prepared_dir=data/prepared
    python -m experiments.build_experience --dataset=ptbxl --source_dir=$SEDIFF_DATA_DIR/ptb-xl-full --fs=100 \
        --out_dir=runs/exp_full
    python -m experiments.train --config=experiments/configs/ptbxl100_full.py --workdir=runs/full \
        --config.stage=diffusion --config.data.prepared_dir=data/prepared --config.experience.dir=runs/exp_full

Each command resumes where it stopped when run again.
"""

import os

from experiments.configs.common import apply_variant, base_config, data_dir


def get_config(variant: str | None = None):
    c = base_config()
    c.data.update(dataset="ptbxl", source_dir=os.path.join(data_dir(), "ptb-xl-full"), fs=100.0)
    c.vae.training.update(batch_size=32, num_steps=6000, log_every=25, eval_every=1000, checkpoint_every=250,
                          max_eval_batches=16)
    c.vae.optimizer.update(learning_rate=2e-3, warmup_steps=100)
    c.diffusion.training.update(batch_size=32, num_steps=16000, log_every=25, eval_every=1000, checkpoint_every=250,
                                max_eval_batches=16)
    c.diffusion.training.eval_samples = 4  # generated ECGs at each evaluation (TensorBoard, samples/)
    c.diffusion.latent_cache = "auto"
    c.diffusion.prior = "ptbxl100_full_train_v2"  # refitted on folds 1-8 (sediff_jax/simulator/priors.py)
    return apply_variant(c, variant)
