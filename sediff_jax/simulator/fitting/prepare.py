"""From a recording to a fit target: checks, the median beat or strip, lead weights, the initial waves."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from sediff_jax.leads import LEAD_NAMES, NUM_LEADS
from sediff_jax.signal.beats import median_beat
from sediff_jax.signal.filters import highpass
from sediff_jax.signal.rpeaks import detect_r_peaks
from sediff_jax.simulator.params import (
    DIPOLE_THETA_HR_EXPONENT,
    HR_RANGE_BPM,
    WaveParams,
    dipole_params,
)
from sediff_jax.simulator.fitting.config import (
    NUM_CHANNELS, NUM_WAVES, RESP_FREQUENCY_BOUNDS_HZ, RR_BOUNDS_S, THETA_BOUNDS, WIDTH_BOUNDS, FitConfig,
    FitError, FitTarget,
)
from sediff_jax.simulator.fitting.objective import unbounded, variables_from_waves
from sediff_jax.simulator.fitting.timing import scaled_waves, wave_components, lead_matrix
from sediff_jax.simulator.projection import KORS
from sediff_jax.simulator.rhythm import tachogram_num_samples

Array = jax.Array

def _check_signal(ecg: np.ndarray, fs: float, name: str) -> np.ndarray:
    ecg = np.asarray(ecg, np.float32)
    if ecg.ndim != 2 or ecg.shape[1] != NUM_LEADS:
        raise FitError(f"{name}: expected (time, {NUM_LEADS}) leads in LEAD_NAMES order, got shape {ecg.shape}")
    if not np.all(np.isfinite(ecg)):
        raise FitError(f"{name}: the signal contains NaN or infinite values")
    flat = np.std(ecg, axis=0) < 1e-3
    if flat.any():
        leads = ", ".join(LEAD_NAMES[k] for k in np.flatnonzero(flat))
        raise FitError(f"{name}: flat signal (std < 1 uV) in lead(s) {leads}")
    return ecg


def _lead_weights(signal: np.ndarray, mask: np.ndarray, floor_mv: float) -> np.ndarray:
    variance = np.var(signal[mask.astype(bool)], axis=0)
    weight = 1.0 / (variance + floor_mv**2)
    return (weight / weight.sum()).astype(np.float32)


def _cycle_mask(config: FitConfig, rr_s: float) -> np.ndarray:
    t = (np.arange(config.beat_samples) - config.before_samples) / config.fs
    return (t >= -config.cycle_before * rr_s) & (t < (1.0 - config.cycle_before) * rr_s)


def initial_waves(beat: np.ndarray, mask: np.ndarray, weight: np.ndarray, config: FitConfig, rr_s: float) -> WaveParams:
    """A starting point for one median beat (R at `config.before_samples`), NumPy leaves.

    Angles: R at the dipole magnitude's maximum near the detected R, P and T at its maxima in their windows,
    Q, S and ST from the normal template's timing. Widths: the template's. Amplitudes: weighted linear least
    squares of the closed-form waveform (with free per-lead offsets) against the beat.
    """
    fs, before = config.fs, config.before_samples
    hr = 60.0 / rr_s
    t = (np.arange(beat.shape[0]) - before) / fs
    independent = np.concatenate([beat[:, :2], beat[:, 6:]], axis=1)
    xyz = independent @ KORS.T.astype(np.float64)
    xyz = xyz - np.median(xyz[mask], axis=0)
    magnitude = np.linalg.norm(xyz, axis=1)
    template = dipole_params().waves
    theta_template, _ = scaled_waves(template, hr)
    t_template = theta_template[0] / (2.0 * np.pi) * rr_s

    def peak_time(lo: float, hi: float, default: float) -> float:
        window = mask & (t >= lo) & (t <= hi)
        return float(t[window][np.argmax(magnitude[window])]) if window.any() else default

    r_time = peak_time(-0.03, 0.03, 0.0)
    p_time = peak_time(-min(0.3, 0.4 * rr_s), -0.07, t_template[0])
    t_time = peak_time(max(0.1, 0.16 * math.sqrt(rr_s)), min(0.5 * rr_s + 0.05, config.beat_window_s[1]),
                       t_template[5])
    times = np.array([p_time, t_template[1] + r_time, r_time, t_template[3] + r_time,
                      r_time + 0.45 * (t_time - r_time), t_time])
    h = math.sqrt(hr / 60.0)
    theta60 = (2.0 * np.pi * times / rr_s) / h ** DIPOLE_THETA_HR_EXPONENT.astype(np.float64)
    theta60 = np.clip(theta60, THETA_BOUNDS[:, 0] + 0.01, THETA_BOUNDS[:, 1] - 0.01)
    width60 = np.clip(np.asarray(template.width[0]), WIDTH_BOUNDS[:, 0], WIDTH_BOUNDS[:, 1])
    shared = WaveParams(
        theta=np.tile(theta60, (NUM_CHANNELS, 1)),
        width=np.tile(width60, (NUM_CHANNELS, 1)),
        amplitude=np.ones((NUM_CHANNELS, NUM_WAVES)),
    )
    # Linear least squares for the amplitudes a[c, i] and per-lead offsets, rows (time, lead) on the mask.
    basis = wave_components(shared, hr, 2.0 * np.pi * t[mask] / rr_s)[:, 0, :]  # (n, waves), unit amplitudes
    lead_map = lead_matrix()  # (12, 3)
    sqrt_w = np.sqrt(weight)[None, :, None]
    design_a = np.einsum("nw,lc->nlcw", basis, lead_map).reshape(basis.shape[0], NUM_LEADS, -1)
    design_o = np.broadcast_to(np.eye(NUM_LEADS), (basis.shape[0], NUM_LEADS, NUM_LEADS))
    design = (np.concatenate([design_a, design_o], axis=-1) * sqrt_w).reshape(-1, design_a.shape[-1] + NUM_LEADS)
    rhs = (beat[mask] * np.sqrt(weight)[None, :]).reshape(-1)
    ridge = 1e-3 * np.sqrt(np.mean(design**2)) * np.eye(design.shape[1])[: design_a.shape[-1]]
    solution, *_ = np.linalg.lstsq(
        np.concatenate([design, ridge * np.sqrt(design.shape[0])]),
        np.concatenate([rhs, np.zeros(ridge.shape[0])]),
        rcond=None,
    )
    amplitude = solution[: design_a.shape[-1]].reshape(NUM_CHANNELS, NUM_WAVES)
    return shared._replace(amplitude=amplitude.astype(np.float32), theta=shared.theta.astype(np.float32),
                           width=shared.width.astype(np.float32))


def _tachogram_from_peaks(r_peaks: np.ndarray, fs: float, num_rr: int, rr_fs: float) -> np.ndarray:
    """RR (s) at the tachogram's sample times (k - 1) / rr_fs: the interval the time falls in, held at the ends."""
    times = np.asarray(r_peaks, np.float64) / fs
    intervals = np.diff(times)
    grid = (np.arange(num_rr) - 1.0) / rr_fs
    k = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(intervals) - 1)
    return intervals[k].astype(np.float32)


@dataclasses.dataclass
class Prepared:
    target: FitTarget
    variables: dict[str, np.ndarray]
    num_beats: int
    hr_std: float
    times_s: np.ndarray


def prepare_fit(ecg: np.ndarray, config: FitConfig, r_peaks: np.ndarray | None = None, name: str = "record"
                ) -> Prepared:
    """Checks one recording and builds its misfit target and initial variables.

    Args:
      ecg: (time, 12) mV at `config.fs`, `LEAD_NAMES` order.
      r_peaks: sample indices; detected (`sediff_jax.signal.rpeaks`) when None.
    Raises:
      FitError naming `name`: wrong shape, NaN, a flat lead, too short, fewer than two R peaks, heart rate out
      of range, or no complete beat window.
    """
    ecg = _check_signal(ecg, config.fs, name)
    duration = ecg.shape[0] / config.fs
    if config.mode == "strip" and ecg.shape[0] < config.num_samples:
        raise FitError(f"{name}: {duration:.2f} s long; strip fitting needs {config.strip_duration_s:g} s")
    minimum = sum(config.beat_window_s)
    if duration < minimum:
        raise FitError(f"{name}: {duration:.2f} s long; too short to fit (need at least {minimum:g} s)")
    if r_peaks is None:
        r_peaks = detect_r_peaks(ecg, config.fs)
    r_peaks = np.asarray(r_peaks, np.int64)
    if r_peaks.size < 2:
        raise FitError(f"{name}: fewer than two R peaks detected; is this an ECG?")
    rr_beats = np.diff(r_peaks) / config.fs
    rr_s = float(np.median(rr_beats))
    hr = 60.0 / rr_s
    if not HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1]:
        raise FitError(f"{name}: heart rate {hr:.0f} bpm from the R peaks is outside {HR_RANGE_BPM} bpm")
    hr_std = float(np.std(60.0 / rr_beats))
    try:
        beat, num_beats = median_beat(ecg, r_peaks, config.fs, *config.beat_window_s)
    except ValueError as e:
        raise FitError(f"{name}: {e}") from None
    mask = _cycle_mask(config, rr_s)
    weight = _lead_weights(beat, mask, config.lead_floor_mv)
    waves = initial_waves(beat, mask, weight, config, rr_s)
    variables = variables_from_waves(waves)
    num_rr = tachogram_num_samples(config.simulator_config.duration_s, config.rr_fs)
    if config.mode == "beat":
        signal, times = beat, (np.arange(config.num_samples) - config.before_samples) / config.fs
        rr = np.full((num_rr,), rr_s, np.float32)
        initial_phase = -2.0 * np.pi * config.before_samples / config.fs / rr_s
    else:
        signal = ecg[: config.num_samples]
        if config.strip_highpass_hz:
            signal = highpass(signal, config.fs, config.strip_highpass_hz)
        times = np.arange(config.num_samples) / config.fs
        peaks = r_peaks[r_peaks < config.num_samples]
        if peaks.size < 2:
            raise FitError(f"{name}: fewer than two R peaks in the first {config.strip_duration_s:g} s")
        mask = np.ones(config.num_samples, bool)
        weight = _lead_weights(signal, mask, config.lead_floor_mv)
        rr = _tachogram_from_peaks(peaks, config.fs, num_rr, config.rr_fs)
        first = peaks[0] / config.fs
        initial_phase = -2.0 * np.pi * first / (np.diff(peaks[:2])[0] / config.fs)
        initial_phase = initial_phase - 2.0 * np.pi * np.round(initial_phase / (2.0 * np.pi))
        hr = 60.0 / float(np.mean(np.diff(peaks)) / config.fs)
        variables.update(
            rr=unbounded(rr, *RR_BOUNDS_S),
            initial_phase=np.float32(initial_phase),
            resp_amplitude=np.zeros((NUM_CHANNELS,), np.float32),
            resp_frequency=unbounded(0.25, *RESP_FREQUENCY_BOUNDS_HZ),
        )
    target = FitTarget(
        signal=np.asarray(signal, np.float32),
        mask=mask.astype(np.float32),
        lead_weight=weight,
        rr=rr,
        hr_mean=np.float32(hr),
        initial_phase=np.float32(initial_phase),
    )
    return Prepared(target, variables, num_beats, hr_std, times)
