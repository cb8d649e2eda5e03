"""Realistic recording noise: baseline wander, muscle (EMG) and powerline interference.

Noise is drawn on the 8 independent leads (I, II, V1..V6) and the other limb leads are derived from them, as
an electrocardiograph does, so noisy records still obey Einthoven's and Goldberger's laws exactly.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.leads import INDEPENDENT_LEADS, leads_from_independent

Array = jax.Array

BASELINE_BAND_HZ = (0.05, 0.5)
MUSCLE_BAND_HZ = (20.0, 150.0)


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """RMS amplitudes per independent lead, mV (0 switches a component off).

    baseline_wander_mv: band-limited noise in BASELINE_BAND_HZ (electrode motion, breathing).
    muscle_mv: band-limited noise in MUSCLE_BAND_HZ, cut at 0.45 fs (EMG).
    powerline_mv: RMS of a sinusoid at powerline_hz with a random phase per lead. Dropped when powerline_hz is
      at or above the Nyquist rate fs / 2, as a recorder's anti-aliasing filter would remove it.
    """

    baseline_wander_mv: float = 0.05
    muscle_mv: float = 0.01
    powerline_mv: float = 0.01
    powerline_hz: float = 50.0

    def __post_init__(self):
        for name in ("baseline_wander_mv", "muscle_mv", "powerline_mv"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value} must be a finite amplitude >= 0 mV")
        if not self.powerline_hz > 0:
            raise ValueError(f"powerline_hz={self.powerline_hz} must be > 0 Hz")


def band_limited_noise(key: Array, num_samples: int, num_channels: int, fs: float, band: tuple[float, float]) -> Array:
    """(num_samples, num_channels) Gaussian noise with a flat spectrum in `band` Hz and unit RMS per channel."""
    freqs = np.fft.rfftfreq(num_samples, 1.0 / fs)
    mask = (freqs >= band[0]) & (freqs <= min(band[1], 0.45 * fs))
    if not mask.any():
        raise ValueError(f"no frequencies of band {band} Hz fit a {num_samples}-sample record at fs={fs} Hz")
    re_key, im_key = jax.random.split(key)
    shape = (freqs.shape[0], num_channels)
    spectrum = (jax.random.normal(re_key, shape) + 1j * jax.random.normal(im_key, shape)) * mask[:, None]
    noise = jnp.fft.irfft(spectrum, n=num_samples, axis=0)
    return noise / jnp.sqrt(jnp.mean(noise**2, axis=0, keepdims=True))


def sample_noise(key: Array, num_samples: int, fs: float, config: NoiseConfig = NoiseConfig()) -> Array:
    """Noise for one 12-lead record: (num_samples, 12) mV, Einthoven-consistent."""
    n_ind = len(INDEPENDENT_LEADS)
    wander_key, muscle_key, phase_key = jax.random.split(key, 3)
    noise = jnp.zeros((num_samples, n_ind), jnp.float32)
    if config.baseline_wander_mv > 0:
        noise += config.baseline_wander_mv * band_limited_noise(wander_key, num_samples, n_ind, fs, BASELINE_BAND_HZ)
    if config.muscle_mv > 0:
        noise += config.muscle_mv * band_limited_noise(muscle_key, num_samples, n_ind, fs, MUSCLE_BAND_HZ)
    if config.powerline_mv > 0 and config.powerline_hz < fs / 2:
        t = jnp.arange(num_samples, dtype=jnp.float32)[:, None] / fs
        phase = jax.random.uniform(phase_key, (1, n_ind), jnp.float32, 0.0, 2.0 * math.pi)
        noise += config.powerline_mv * math.sqrt(2.0) * jnp.sin(2.0 * math.pi * config.powerline_hz * t + phase)
    return leads_from_independent(noise)


def add_noise(ecg: Array, key: Array, fs: float, config: NoiseConfig = NoiseConfig()) -> Array:
    """Add recording noise to ECGs.

    Args:
      ecg: (time, 12) or (batch, time, 12) mV in `LEAD_NAMES` order.
      key: PRNG key (split per record for a batch).
      fs: sampling rate, Hz.
    Returns:
      Same shape, mV.
    """
    if ecg.shape[-1] != 12:
        raise ValueError(f"add_noise expects 12 leads on the last axis, got shape {ecg.shape}")
    if ecg.ndim == 2:
        return ecg + sample_noise(key, ecg.shape[0], fs, config)
    keys = jax.random.split(key, ecg.shape[0])
    return ecg + jax.vmap(lambda k: sample_noise(k, ecg.shape[1], fs, config))(keys)
