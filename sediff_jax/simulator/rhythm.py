"""Heart rhythm: the RR tachogram process, its smooth angular velocity, and heart-rate scaling of the waves.

The RR process follows McSharry et al. (2003): a series sampled at `rr_fs` whose power spectrum is a sum of two
Gaussians (LF around 0.1 Hz, HF around 0.25 Hz, power ratio LF/HF) with random phases, scaled to the requested
mean and standard deviation. An optional broadband part models the irregular ventricular response of atrial
fibrillation. The series is interpolated with a C1 cubic (Catmull-Rom), so the angular velocity
w(t) = 2 pi / RR(t) and hence the whole ECG are differentiable in the heart rate and HRV parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.simulator.params import RhythmParams, WaveParams

Array = jax.Array

MIN_RR_S = 0.2  # 300 bpm: the tachogram is clipped here so w(t) stays finite.
BROADBAND_HZ = (0.02, 1.0)


def synthesis_length(num_samples: int) -> int:
    """Length of the spectral synthesis: a power of two, long enough to resolve 0.01 Hz-wide peaks."""
    return max(1024, 1 << (int(num_samples) - 1).bit_length())


def rr_spectrum(rhythm: RhythmParams, num_freqs: int, rr_fs: float) -> Array:
    """Unit-power spectral density of the RR process on `rfftfreq(2 * (num_freqs - 1), 1 / rr_fs)`."""
    n = 2 * (num_freqs - 1)
    freqs = jnp.asarray(np.fft.rfftfreq(n, d=1.0 / rr_fs), rhythm.hr_mean.dtype)

    def peak(center, width):
        shape = jnp.exp(-0.5 * ((freqs - center) / width) ** 2)
        return shape / jnp.sum(shape)

    ratio = rhythm.lf_hf_ratio
    sinus = (ratio * peak(rhythm.lf_frequency, rhythm.lf_width) + peak(rhythm.hf_frequency, rhythm.hf_width)) / (
        1.0 + ratio
    )
    lo, hi = BROADBAND_HZ
    band = ((freqs >= lo) & (freqs <= hi)).astype(freqs.dtype)
    band = band / jnp.sum(band)
    return (1.0 - rhythm.irregularity) * sinus + rhythm.irregularity * band


def rr_tachogram(key: Array, rhythm: RhythmParams, num_samples: int, rr_fs: float) -> Array:
    """RR intervals sampled every 1 / rr_fs seconds.

    Args:
      key: PRNG key for the random spectral phases (the same key gives the same rhythm).
      rhythm: scalar-leaf `RhythmParams`.
      num_samples: length of the returned series (static).
      rr_fs: sampling rate of the series, Hz (static).

    Returns:
      (num_samples,) float32 seconds. Over these samples the mean is exactly 60 / hr_mean and the standard
      deviation exactly 60 * hr_std / hr_mean**2 (before clipping at MIN_RR_S).
    """
    n = synthesis_length(num_samples)
    spectrum = rr_spectrum(rhythm, n // 2 + 1, rr_fs)
    phases = jax.random.uniform(key, spectrum.shape, rhythm.hr_mean.dtype, 0.0, 2.0 * math.pi)
    series = jnp.fft.irfft(jnp.sqrt(spectrum) * jnp.exp(1j * phases), n=n)[:num_samples]
    series = series - jnp.mean(series)
    series = series / jnp.sqrt(jnp.mean(series**2))
    rr_mean = 60.0 / rhythm.hr_mean
    rr_std = 60.0 * rhythm.hr_std / rhythm.hr_mean**2
    return jnp.maximum(rr_mean + rr_std * series, MIN_RR_S)


def tachogram_num_samples(duration_s: float, rr_fs: float) -> int:
    """Samples that cover [-1 / rr_fs, duration + 2 / rr_fs], the support the cubic interpolation needs."""
    return int(math.ceil(duration_s * rr_fs)) + 4


def interpolate_rr(t: Array, rr: Array, rr_fs: Array) -> Array:
    """RR(t) in seconds, Catmull-Rom interpolation of samples taken at times (k - 1) / rr_fs."""
    position = t * rr_fs + 1.0
    index = jnp.clip(jnp.floor(position).astype(jnp.int32), 1, rr.shape[0] - 3)
    u = position - index
    p0, p1, p2, p3 = rr[index - 1], rr[index], rr[index + 1], rr[index + 2]
    return p1 + 0.5 * u * (
        (p2 - p0) + u * ((2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) + u * (3.0 * (p1 - p2) + p3 - p0))
    )


def angular_velocity(t: Array, rr: Array, rr_fs: Array) -> Array:
    """w(t) = 2 pi / RR(t), rad/s."""
    return 2.0 * math.pi / jnp.maximum(interpolate_rr(t, rr, rr_fs), MIN_RR_S)


def heart_rate_scaled_waves(waves: WaveParams, hr_mean: Array, theta_exponent: np.ndarray) -> WaveParams:
    """ECGSYN's adaptation of the waves to the heart rate: h = sqrt(HR / 60), b *= h, th *= h ** e.

    Works on JAX arrays (traced, float32) and on NumPy ones (host-side fitting, float64) alike."""
    h = (hr_mean / 60.0) ** 0.5
    return WaveParams(
        theta=waves.theta * h ** theta_exponent,
        width=waves.width * h,
        amplitude=waves.amplitude,
    )
