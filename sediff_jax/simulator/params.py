"""Parameters of the cardiac simulator, as JAX pytrees (NamedTuples), with published defaults.

Two models share one phase oscillator (McSharry et al. 2003, "A dynamical model for generating synthetic
electrocardiogram signals", IEEE TBME 50(3)):

* `mcsharry`: the original single-lead model, state (x, y, z), five waves P, Q, R, S, T with the ECGSYN
  defaults. Amplitudes are McSharry's rate coefficients (dimensionless), not millivolts.
* `dipole`: three dipole channels X, Y, Z (Sameni et al. 2007, "Multichannel ECG and noise modeling", IEEE TBME
  54(12)) that share the limit-cycle phase, each a sum of Gaussian waves P, Q, R, S, ST, T whose amplitudes are
  peak dipole amplitudes in mV. The dipole is projected to 12 leads with Dower's coefficients
  (`sediff_jax.simulator.projection`). The ST wave is zero in a normal heart; presets use it for ST deviation.

Angles and widths are given at 60 bpm; `heart_rate_scaling` adapts them to the requested heart rate with the
ECGSYN rule. Every leaf is a float array, so every parameter can be differentiated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MCSHARRY_WAVES: tuple[str, ...] = ("P", "Q", "R", "S", "T")
DIPOLE_WAVES: tuple[str, ...] = ("P", "Q", "R", "S", "ST", "T")
DIPOLE_CHANNELS: tuple[str, ...] = ("X", "Y", "Z")  # Frank axes: X left, Y foot, Z back.

# ECGSYN heart-rate scaling (McSharry 2003): with h = sqrt(HR / 60), every width b_i *= h and the angles
# th_i *= h ** e_i with e = (1/2, 1, 0, 1, 1/2) for P, Q, R, S, T. The ST wave scales like T.
MCSHARRY_THETA_HR_EXPONENT = np.array([0.5, 1.0, 0.0, 1.0, 0.5], np.float32)
DIPOLE_THETA_HR_EXPONENT = np.array([0.5, 1.0, 0.0, 1.0, 0.5, 0.5], np.float32)

HR_RANGE_BPM = (20.0, 300.0)


class WaveParams(NamedTuple):
    """Gaussian waves of the phase model, one row per channel.

    theta: (channels, waves) rad, wave centre on the limit cycle (R peak at 0), at 60 bpm.
    width: (channels, waves) rad, Gaussian standard deviation in phase, at 60 bpm.
    amplitude: (channels, waves); mV peak amplitude (dipole) or McSharry's coefficient (single lead).
    """

    theta: Array
    width: Array
    amplitude: Array


class RhythmParams(NamedTuple):
    """The RR tachogram: mean and variability of the heart rate.

    hr_mean: () bpm.  hr_std: () bpm, standard deviation of the instantaneous heart rate.
    lf_hf_ratio: () ratio of low- to high-frequency power of the RR process.
    lf_frequency, hf_frequency: () Hz, spectral peaks (Mayer waves 0.1 Hz, respiration 0.25 Hz).
    lf_width, hf_width: () Hz, Gaussian widths of the two peaks.
    irregularity: () in [0, 1], fraction of the RR variance that is broadband (0.02-1 Hz), as in atrial
      fibrillation; 0 for sinus rhythm.
    initial_phase: () rad, phase of the limit cycle at t = 0 (R peak at 0).
    """

    hr_mean: Array
    hr_std: Array
    lf_hf_ratio: Array
    lf_frequency: Array
    hf_frequency: Array
    lf_width: Array
    hf_width: Array
    irregularity: Array
    initial_phase: Array


class BaselineParams(NamedTuple):
    """Slow and atrial activity added to each channel inside the ODE.

    resp_amplitude: (channels,) respiratory baseline amplitude (mV for the dipole model).
    resp_frequency: () Hz.
    fib_amplitude: (channels,) amplitude of fibrillatory atrial waves (mV), 0 in sinus rhythm.
    fib_frequency: () Hz, mean f-wave rate (4-9 Hz in atrial fibrillation).
    """

    resp_amplitude: Array
    resp_frequency: Array
    fib_amplitude: Array
    fib_frequency: Array


class ECGParams(NamedTuple):
    """Everything that defines one simulated ECG (besides the random key and the static config)."""

    waves: WaveParams
    rhythm: RhythmParams
    baseline: BaselineParams


def waves_of_classes(wave_table: WaveParams, class_index: Array) -> WaveParams:
    """The wave parameters of each record's class: leaves (num_classes, ...) indexed by class_index (b,) int32,
    giving leaves (b, ...) (the prior's wave table, as the stage-2 loss and simulator guidance read it)."""
    return jax.tree.map(lambda table: table[class_index], wave_table)


def _f32(x) -> Array:
    return jnp.asarray(x, jnp.float32)


def default_rhythm(
    hr_mean: float = 60.0,
    hr_std: float = 1.0,
    lf_hf_ratio: float = 0.5,
    irregularity: float = 0.0,
    initial_phase: float = -math.pi / 2,
) -> RhythmParams:
    """ECGSYN's RR spectrum: LF 0.1 Hz, HF 0.25 Hz, widths 0.01 Hz."""
    return RhythmParams(
        hr_mean=_f32(hr_mean),
        hr_std=_f32(hr_std),
        lf_hf_ratio=_f32(lf_hf_ratio),
        lf_frequency=_f32(0.1),
        hf_frequency=_f32(0.25),
        lf_width=_f32(0.01),
        hf_width=_f32(0.01),
        irregularity=_f32(irregularity),
        initial_phase=_f32(initial_phase),
    )


def mcsharry_params(hr_mean: float = 60.0, hr_std: float = 1.0, lf_hf_ratio: float = 0.5) -> ECGParams:
    """The published ECGSYN defaults for the single-lead model (one channel, five waves)."""
    pi = math.pi
    waves = WaveParams(
        theta=_f32([[-pi / 3, -pi / 12, 0.0, pi / 12, pi / 2]]),
        width=_f32([[0.25, 0.1, 0.1, 0.1, 0.4]]),
        amplitude=_f32([[1.2, -5.0, 30.0, -7.5, 0.75]]),
    )
    baseline = BaselineParams(
        resp_amplitude=_f32([0.005]),
        resp_frequency=_f32(0.25),
        fib_amplitude=_f32([0.0]),
        fib_frequency=_f32(6.0),
    )
    return ECGParams(waves, default_rhythm(hr_mean, hr_std, lf_hf_ratio), baseline)


# Normal adult dipole, mV, rows X, Y, Z; columns P, Q, R, S, ST, T. Chosen so that Dower's projection gives a
# normal 12-lead ECG: frontal QRS axis about +50 degrees, septal q in I/aVL/V5/V6 and r in V1, R/S transition at
# V3-V4, upright T in I, II, V2-V6, P about 0.15 mV in II.
_DIPOLE_AMPLITUDE_MV = [
    #  P      Q      R      S     ST     T
    [0.15, -0.12, 1.00, -0.25, 0.00, 0.30],  # X (left +)
    [0.12, 0.03, 0.55, -0.15, 0.00, 0.20],  # Y (foot +)
    [-0.03, -0.20, 0.35, 0.35, 0.00, -0.15],  # Z (back +)
]
# Timing (rad at 60 bpm, i.e. x 159 ms): P peak -167 ms, q -32 ms, s +32 ms, ST +103 ms, T peak +239 ms.
_DIPOLE_THETA = [-math.pi / 3, -0.2, 0.0, 0.2, 0.65, 1.5]
_DIPOLE_WIDTH = [0.17, 0.07, 0.09, 0.08, 0.25, 0.32]


def dipole_params(
    hr_mean: float = 60.0,
    hr_std: float = 1.0,
    lf_hf_ratio: float = 0.5,
    resp_amplitude_mv: float = 0.02,
) -> ECGParams:
    """A normal adult heart for the 3-channel dipole model (three channels, six waves)."""
    num_channels = len(DIPOLE_CHANNELS)
    waves = WaveParams(
        theta=_f32(np.tile(_DIPOLE_THETA, (num_channels, 1))),
        width=_f32(np.tile(_DIPOLE_WIDTH, (num_channels, 1))),
        amplitude=_f32(_DIPOLE_AMPLITUDE_MV),
    )
    baseline = BaselineParams(
        # Respiration moves the baseline mostly along the Y (head-foot) axis.
        resp_amplitude=_f32([0.3 * resp_amplitude_mv, resp_amplitude_mv, 0.3 * resp_amplitude_mv]),
        resp_frequency=_f32(0.25),
        fib_amplitude=_f32([0.0, 0.0, 0.0]),
        fib_frequency=_f32(6.0),
    )
    return ECGParams(waves, default_rhythm(hr_mean, hr_std, lf_hf_ratio), baseline)


def zero_baseline(num_channels: int = 3, dtype=jnp.float32) -> BaselineParams:
    """No respiration and no f-waves: the baseline of a single constant-rate cycle (fitting, simulator losses)."""
    zeros = jnp.zeros((num_channels,), dtype)
    return BaselineParams(zeros, jnp.asarray(0.25, dtype), zeros, jnp.asarray(6.0, dtype))


def with_heart_rate(params: ECGParams, hr_mean=None, hr_std=None) -> ECGParams:
    """A copy of `params` with a new mean heart rate and/or heart-rate standard deviation (bpm)."""
    rhythm = params.rhythm
    if hr_mean is not None:
        rhythm = rhythm._replace(hr_mean=jnp.asarray(hr_mean, jnp.float32))
    if hr_std is not None:
        rhythm = rhythm._replace(hr_std=jnp.asarray(hr_std, jnp.float32))
    return params._replace(rhythm=rhythm)


def stack_params(params_list) -> ECGParams:
    """Stack single-record parameter sets into a batch: every leaf gets a leading (batch,) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *params_list)


def validate_rhythm(hr_mean, hr_std) -> None:
    """Raise ValueError for heart rates no heart produces. Accepts scalars or arrays; traced values are skipped."""
    if any(isinstance(v, jax.core.Tracer) for v in (hr_mean, hr_std)):
        return
    hr = np.asarray(hr_mean, np.float64)
    std = np.asarray(hr_std, np.float64)
    lo, hi = HR_RANGE_BPM
    if not np.all(np.isfinite(hr)) or np.any(hr < lo) or np.any(hr > hi):
        raise ValueError(f"hr_mean={hr_mean} bpm is outside the allowed range [{lo:g}, {hi:g}] bpm")
    if not np.all(np.isfinite(std)) or np.any(std < 0) or np.any(std > hr / 3):
        raise ValueError(f"hr_std={hr_std} bpm must be >= 0 and at most a third of hr_mean ({hr_mean} bpm)")
