"""Noise schedules and the forward process of latent diffusion (Ho et al. 2020; Nichol & Dhariwal 2021;
Salimans & Ho 2022), as pure functions on arrays.

Discrete time t = 0 .. T-1. alpha_bar[t] is the signal fraction of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar)
eps. Parametrisations: 'epsilon' (predict eps) and 'v' (predict v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0);
`predict_x0` / `predict_epsilon` convert either to x_0 and eps, which the samplers and the simulator losses use.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("epsilon", "v")


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """alphas_cumprod: (T,) float64 NumPy, strictly decreasing in (0, 1). Built by `make_schedule`."""

    alphas_cumprod: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def betas(self) -> np.ndarray:
        previous = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / previous

    def signal_and_noise(self, t: Array) -> tuple[Array, Array]:
        """sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) for integer timesteps t (any shape), float32."""
        a = jnp.asarray(self.alphas_cumprod, jnp.float32)[t]
        return jnp.sqrt(a), jnp.sqrt(1.0 - a)

    def snr(self, t: Array) -> Array:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at t."""
        a = jnp.asarray(self.alphas_cumprod, jnp.float32)[t]
        return a / (1.0 - a)


def make_schedule(kind: str = "cosine", num_steps: int = 1000, cosine_s: float = 0.008,
                  beta_range: tuple[float, float] = (1e-4, 0.02), max_beta: float = 0.999) -> NoiseSchedule:
    """'cosine' (Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped at
    max_beta) or 'linear' (Ho et al. 2020: betas linear in beta_range)."""
    if num_steps < 2:
        raise ValueError(f"num_steps={num_steps} must be >= 2")
    if kind == "cosine":
        grid = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((grid + cosine_s) / (1.0 + cosine_s) * math.pi / 2.0) ** 2
        betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta)
    elif kind == "linear":
        betas = np.linspace(beta_range[0], beta_range[1], num_steps, dtype=np.float64)
    else:
        raise ValueError(f"schedule {kind!r} is unknown; expected one of {SCHEDULES}")
    return NoiseSchedule(np.cumprod(1.0 - betas))


def _expand(x: Array, like: Array) -> Array:
    return x.reshape(x.shape + (1,) * (like.ndim - x.ndim))


def add_noise(schedule: NoiseSchedule, x0: Array, noise: Array, t: Array) -> Array:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; x0, noise (batch, ...), t (batch,) int."""
    signal, sigma = schedule.signal_and_noise(t)
    return _expand(signal, x0) * x0 + _expand(sigma, x0) * noise


def target(schedule: NoiseSchedule, prediction: str, x0: Array, noise: Array, t: Array) -> Array:
    """What the denoiser is trained to output: eps, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
    if prediction == "epsilon":
        return noise
    if prediction == "v":
        signal, sigma = schedule.signal_and_noise(t)
        return _expand(signal, x0) * noise - _expand(sigma, x0) * x0
    raise ValueError(f"prediction {prediction!r} is unknown; expected one of {PREDICTIONS}")


def predict_x0(schedule: NoiseSchedule, prediction: str, x_t: Array, output: Array, t: Array) -> Array:
    """x0 implied by the denoiser's output at x_t."""
    signal, sigma = schedule.signal_and_noise(t)
    signal, sigma = _expand(signal, x_t), _expand(sigma, x_t)
    if prediction == "epsilon":
        return (x_t - sigma * output) / signal
    if prediction == "v":
        return signal * x_t - sigma * output
    raise ValueError(f"prediction {prediction!r} is unknown; expected one of {PREDICTIONS}")


def predict_epsilon(schedule: NoiseSchedule, prediction: str, x_t: Array, output: Array, t: Array) -> Array:
    """eps implied by the denoiser's output at x_t."""
    if prediction == "epsilon":
        return output
    signal, sigma = schedule.signal_and_noise(t)
    signal, sigma = _expand(signal, x_t), _expand(sigma, x_t)
    if prediction == "v":
        return sigma * x_t + signal * output
    raise ValueError(f"prediction {prediction!r} is unknown; expected one of {PREDICTIONS}")
