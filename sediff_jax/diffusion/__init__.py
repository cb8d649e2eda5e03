"""Diffusion in the VAE latent: noise schedules and the forward process and the SE-Diff training loss (samplers join here)."""

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
