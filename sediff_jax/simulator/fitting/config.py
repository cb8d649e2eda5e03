"""Fitting settings, physiological bounds, the batched fit target and the per-record result."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from sediff_jax.leads import LEAD_NAMES
from sediff_jax.simulator.params import (
    DIPOLE_CHANNELS,
    DIPOLE_WAVES,
    HR_RANGE_BPM,
    ECGParams,
)
from sediff_jax.simulator.solve import SimulatorConfig
from sediff_jax.errors import SediffError

Array = jax.Array

FIT_MODES = ("beat", "strip")
NUM_CHANNELS, NUM_WAVES = len(DIPOLE_CHANNELS), len(DIPOLE_WAVES)
# Waves whose peak times are reported; T stands for the whole repolarisation (ST + T waves).
TIMED_WAVES = ("P", "Q", "R", "S", "T")

# Physiological bounds at 60 bpm, rows P, Q, R, S, ST, T; rad on the limit cycle (x 159 ms at 60 bpm).
THETA_BOUNDS = np.array(
    [[-2.1, -0.5], [-0.45, -0.02], [-0.15, 0.15], [0.02, 0.45], [0.2, 1.6], [0.7, 2.9]], np.float32
)
WIDTH_BOUNDS = np.array(
    [[0.04, 0.45], [0.015, 0.25], [0.02, 0.25], [0.015, 0.25], [0.08, 0.8], [0.08, 0.9]], np.float32
)
AMPLITUDE_LIMIT_MV = 5.0
RR_BOUNDS_S = (60.0 / HR_RANGE_BPM[1], 60.0 / HR_RANGE_BPM[0])
RESP_FREQUENCY_BOUNDS_HZ = (0.1, 0.5)
RESP_AMPLITUDE_LIMIT_MV = 1.0
# Wave peak-time search grid (points per cycle) for the reported timings.
TIMING_GRID = 4096


class FitError(SediffError, ValueError):
    """A recording that cannot be fitted (flat, too short, no R peaks, NaN); the message says which and why."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to fit (static and hashable).

    mode: 'beat' (median beat) or 'strip' (the whole strip).
    fs: rate of the signals passed in and of the fit, Hz.
    solver: diffrax solver of the simulator ('heun', 'tsit5', 'euler'); min_internal_fs: its lowest rate, Hz.
      Heun at 500 Hz fits LUDB as well as Tsit5 (same correlations and timings) at a third of the cost.
    beat_window_s: (before, after) the R peak, s; the misfit covers [-cycle_before * RR, (1 - cycle_before) * RR]
      inside it, i.e. exactly one cardiac cycle.
    strip_duration_s: length of the fitted strip, s; strip_highpass_hz: baseline-wander filter of the real strip
      (None keeps it as recorded); strip_warm_start: start the strip's waves from a median-beat fit;
      strip_learning_rate: Adam's rate in strip mode (smaller: the warm start is already close; on LUDB it
      fits better than 0.02).
    max_iterations, check_every: Adam steps at most, and how often convergence is checked.
    learning_rate: Adam's in beat mode, in the unconstrained variables; decays by cosine to
      final_learning_rate_fraction.
    tolerance: converged when the loss fell by less than this fraction over the last `check_every` steps.
    lead_floor_mv: each lead's squared error is divided by (its variance + floor^2), so small leads count.
    batch_size: records per compiled batch; the last batch is padded.
    """

    mode: str = "beat"
    fs: float = 500.0
    solver: str = "heun"
    min_internal_fs: float = 500.0
    beat_window_s: tuple[float, float] = (0.45, 0.75)
    cycle_before: float = 0.4
    strip_duration_s: float = 10.0
    strip_highpass_hz: float | None = 0.5
    strip_warm_start: bool = True
    strip_learning_rate: float = 0.005
    max_iterations: int = 400
    check_every: int = 100
    learning_rate: float = 0.02
    final_learning_rate_fraction: float = 0.05
    tolerance: float = 2e-3
    lead_floor_mv: float = 0.05
    batch_size: int = 64
    rr_fs: float = 4.0

    def __post_init__(self):
        if self.mode not in FIT_MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; expected one of {FIT_MODES}")
        if self.max_iterations < 1 or self.check_every < 1:
            raise ValueError("max_iterations and check_every must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        before, after = self.beat_window_s
        if not (before > 0 and after > 0):
            raise ValueError(f"beat_window_s={self.beat_window_s} must be two positive durations, s")

    @property
    def simulator_config(self) -> SimulatorConfig:
        return SimulatorConfig(
            model="dipole",
            duration_s=self.num_samples / self.fs,
            fs=self.fs,
            min_internal_fs=self.min_internal_fs,
            solver=self.solver,
            rr_fs=self.rr_fs,
        )

    @property
    def beat_samples(self) -> int:
        """Samples in the median-beat window."""
        before, after = self.beat_window_s
        return int(round(before * self.fs)) + int(round(after * self.fs))

    @property
    def num_samples(self) -> int:
        """Samples of the fitted signal: the beat window (beat mode) or the strip."""
        return self.beat_samples if self.mode == "beat" else int(round(self.strip_duration_s * self.fs))

    @property
    def before_samples(self) -> int:
        return int(round(self.beat_window_s[0] * self.fs))


class FitTarget(NamedTuple):
    """Per-record constants of the misfit (a batch has a leading axis on every leaf).

    signal: (time, 12) mV.  mask: (time,) float 0/1.  lead_weight: (12,) sums to 1.
    rr: (num_rr,) s, the tachogram (beat mode: constant; strip: the initial guess).
    hr_mean: () bpm, for the heart-rate scaling of the waves.  initial_phase: () rad at t = 0.
    """

    signal: Array
    mask: Array
    lead_weight: Array
    rr: Array
    hr_mean: Array
    initial_phase: Array


@dataclasses.dataclass
class FitResult:
    """One record's fit, all NumPy.

    params: fitted `ECGParams` (angles and widths at 60 bpm; hr_mean/hr_std measured (beat) or from the fitted
      tachogram (strip)).
    offset_mv: (12,) per-lead constant added to the simulation.
    real, fitted: (time, 12) float32 mV at `fs`: the median beat (beat mode, R at `before_s`) or the strip.
    mask: (time,) bool, the samples the misfit covers.  times_s: (time,) relative to the R peak (beat) or from
      the strip's start.
    lead_correlation, lead_rmse_mv: (12,) over the mask.
    wave_times_ms: P, Q, R, S, T peak times relative to R from the fitted dipole (peak of each wave's vector
      magnitude; T = ST + T waves).  lead_wave_times_ms: (12, 5) the same per lead: P and T at the largest
      deflection of the wave, R at the QRS maximum, Q and S at the QRS minimum before and after R.
    loss: final misfit (lead-weighted mean square, dimensionless).  iterations: steps until converged (or all).
    converged: the loss settled within `tolerance`.  loss_history: loss at every convergence check.
    """

    mode: str
    fs: float
    params: ECGParams
    offset_mv: np.ndarray
    real: np.ndarray
    fitted: np.ndarray
    mask: np.ndarray
    times_s: np.ndarray
    lead_correlation: np.ndarray
    lead_rmse_mv: np.ndarray
    wave_times_ms: dict[str, float]
    lead_wave_times_ms: np.ndarray
    loss: float
    iterations: int
    converged: bool
    loss_history: list[float]
    num_beats: int
    rr_s: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: parameters with units, fit quality, timings, convergence."""
        waves = self.params.waves
        per_wave = {
            name: {
                channel: {
                    "theta_rad_at_60bpm": float(waves.theta[c, i]),
                    "width_rad_at_60bpm": float(waves.width[c, i]),
                    "amplitude_mv": float(waves.amplitude[c, i]),
                }
                for c, channel in enumerate(DIPOLE_CHANNELS)
            }
            for i, name in enumerate(DIPOLE_WAVES)
        }
        rhythm, baseline = self.params.rhythm, self.params.baseline
        return {
            "mode": self.mode,
            "fs_hz": self.fs,
            "num_beats": self.num_beats,
            "parameters": {
                "waves": per_wave,
                "heart_rate_bpm": float(rhythm.hr_mean),
                "heart_rate_std_bpm": float(rhythm.hr_std),
                "rr_s": self.rr_s,
                "initial_phase_rad": float(rhythm.initial_phase),
                "respiration_amplitude_mv": {c: float(v) for c, v in zip(DIPOLE_CHANNELS, baseline.resp_amplitude)},
                "respiration_frequency_hz": float(baseline.resp_frequency),
                "lead_offset_mv": {lead: float(v) for lead, v in zip(LEAD_NAMES, self.offset_mv)},
            },
            "quality": {
                "lead_correlation": {lead: float(v) for lead, v in zip(LEAD_NAMES, self.lead_correlation)},
                "lead_rmse_mv": {lead: float(v) for lead, v in zip(LEAD_NAMES, self.lead_rmse_mv)},
                "median_correlation": float(np.median(self.lead_correlation)),
                "median_rmse_mv": float(np.median(self.lead_rmse_mv)),
                "loss": self.loss,
            },
            "wave_times_ms": {k: float(v) for k, v in self.wave_times_ms.items()},
            "lead_wave_times_ms": {
                lead: {w: float(self.lead_wave_times_ms[l, k]) for k, w in enumerate(TIMED_WAVES)}
                for l, lead in enumerate(LEAD_NAMES)
            },
            "iterations": self.iterations,
            "converged": self.converged,
            "loss_history": self.loss_history,
        }
