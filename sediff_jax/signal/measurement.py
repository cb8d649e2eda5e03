"""One ECG measured once: its R peaks, heart rate and median-beat intervals, computed together so that every
metric that needs them (heart-rate error, RR regularity, interval errors) shares one detection."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sediff_jax.signal.delineation import DelineationError, delineate
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm


@dataclasses.dataclass(frozen=True)
class Measurement:
    """r_peaks: (num_peaks,) samples (empty for a non-finite ECG).  hr_bpm: from the R peaks, NaN with fewer than
    two.  intervals: `Delineation.intervals()` (ms, bpm, deg), empty where the ECG could not be delineated."""

    r_peaks: np.ndarray
    hr_bpm: float
    intervals: dict[str, float]


def measure(ecg: np.ndarray, fs: float, r_peaks: np.ndarray | None = None) -> Measurement:
    """Measure one (time, 12) ECG (mV) at fs Hz; `r_peaks` (samples) when they are already known, e.g. a record's
    peaks from its canonical form, so that nothing is detected twice."""
    ecg = np.asarray(ecg)
    if not np.isfinite(ecg).all():
        return Measurement(np.zeros(0, np.int64), float("nan"), {})
    peaks = np.asarray(detect_r_peaks(ecg, fs) if r_peaks is None else r_peaks, np.int64)
    hr = heart_rate_bpm(peaks, fs) if len(peaks) >= 2 else float("nan")
    try:
        intervals = delineate(ecg, fs, r_peaks=peaks).intervals()
    except DelineationError:
        intervals = {}
    return Measurement(peaks, hr, intervals)


def measure_batch(ecg: np.ndarray, fs: float, r_peaks=None) -> list[Measurement]:
    """`measure` of each ECG of a (batch, time, 12) array; r_peaks: None, or one peak array per ECG."""
    r_peaks = [None] * len(ecg) if r_peaks is None else list(r_peaks)
    if len(r_peaks) != len(ecg):
        raise ValueError(f"{len(r_peaks)} R-peak arrays for {len(ecg)} ECGs")
    return [measure(record, fs, peaks) for record, peaks in zip(np.asarray(ecg), r_peaks)]


# The robust peak-to-peak amplitude ignores this fraction of samples at each end (a spike or a clipped sample
# does not set a lead's amplitude): the 0.5th to the 99.5th percentile.
AMPLITUDE_QUANTILE = 0.005


def lead_amplitudes(ecg: np.ndarray, quantile: float = AMPLITUDE_QUANTILE) -> np.ndarray:
    """Robust peak-to-peak amplitude of each lead: the (1 - quantile) minus the `quantile` quantile over time.

    Args:
      ecg: (..., time, leads) mV, finite.
      quantile: in [0, 0.5); 0 is max - min.

    Returns:
      (..., leads) float32 mV.
    """
    ecg = np.asarray(ecg, np.float32)
    if not 0 <= quantile < 0.5:
        raise ValueError(f"quantile={quantile} must be in [0, 0.5)")
    if ecg.ndim < 2 or ecg.shape[-2] < 1:
        raise ValueError(f"expected (..., time, leads) with time >= 1, got shape {ecg.shape}")
    if not np.isfinite(ecg).all():
        raise ValueError("lead amplitudes of an ECG with NaN or inf")
    low, high = np.quantile(ecg, [quantile, 1.0 - quantile], axis=-2)
    return (high - low).astype(np.float32)


BEAT_MATCH_MS = 40.0  # a requested beat counts as placed when a detected R peak lies this close


def nearest_peak_ms(requested_s: Sequence[float], found_s: Sequence[float]) -> np.ndarray:
    """(len(requested_s),) distance (ms) from each requested R peak (s) to the nearest found one (s); inf where
    none was found."""
    wanted, found = np.asarray(requested_s, np.float64), np.asarray(found_s, np.float64)
    if not len(found):
        return np.full(len(wanted), np.inf)
    return 1000.0 * np.min(np.abs(wanted[:, None] - found[None]), axis=1)


def beat_placement(ecg: np.ndarray, fs: float, requested_s: Sequence[float], r_peaks: np.ndarray | None = None
                   ) -> dict[str, float | int | None]:
    """How one (time, 12) ECG's R peaks (`r_peaks`, samples, when already detected; else `detect_r_peaks`) meet
    every requested one (s): the median and largest distance (ms; None where nothing was detected) and how many
    requested beats have a detected peak within BEAT_MATCH_MS. (`evaluation.rhythm.peak_distances_ms` measures the
    same with wfdb's XQRS or neurokit2.)"""
    ecg = np.asarray(ecg)
    if r_peaks is None:
        r_peaks = detect_r_peaks(ecg, fs) if np.isfinite(ecg).all() else np.zeros(0)
    distances = nearest_peak_ms(requested_s, np.asarray(r_peaks) / fs)

    def ms(x):
        return round(float(x), 1) if np.isfinite(x) else None

    return {"median_ms": ms(np.median(distances)) if len(distances) else None,
            "max_ms": ms(np.max(distances)) if len(distances) else None, "beats_requested": int(len(distances)),
            "beats_placed": int(np.sum(distances <= BEAT_MATCH_MS)), "within_ms": BEAT_MATCH_MS}
