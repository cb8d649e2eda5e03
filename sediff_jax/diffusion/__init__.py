"""Diffusion in the VAE latent: noise schedules and the forward process (samplers and losses join here)."""

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
