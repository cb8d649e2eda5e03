"""Diffusion in the VAE latent: noise schedules and the forward process (`schedule`), the SE-Diff training loss
with its simulator terms (`losses`), and the DDPM/DDIM samplers with classifier-free guidance, guidance intervals,
per-group guidance and CADS (`sampling`: `SamplerConfig`, whose defaults are the recommended setting)."""

from sediff_jax.diffusion.schedule import (
    PREDICTIONS,
    SCHEDULES,
    NoiseSchedule,
    add_noise,
    make_schedule,
    predict_epsilon,
    predict_x0,
    target,
)
from sediff_jax.diffusion.losses import DiffusionLossConfig, diffusion_losses
