"""Rhythm of ECGs measured by detectors we did not write: heart rate, RR variability, and where the beats fall.

Lead II of each ECG goes through wfdb's XQRS (a core dependency) and, where installed (the `test` / `bench`
extras), neurokit2's default R-peak detector. `rhythm_table` gives, per detector, the heart rate and the RR
coefficient of variation of every ECG; `peak_match_ms` the median distance from requested R peaks to detected ones.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Callable, Sequence

import numpy as np

from sediff_jax.leads import LEAD_NAMES
from sediff_jax.signal.filters import resample
from sediff_jax.signal.measurement import nearest_peak_ms
from sediff_jax.signal.rpeaks import detect_r_peaks

LEAD_II = LEAD_NAMES.index("II")
XQRS_FS = 250.0  # Hz


def xqrs_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peak samples (at `fs`) of one lead by wfdb's XQRS. Below XQRS_FS the lead is resampled to it first:
    at 100 Hz XQRS counts T waves as beats (PTB-XL records 1-8: HR 87-130 bpm for true 47-75 bpm), at 250 Hz it
    agrees with the records' own rates within 0.2 bpm."""
    from wfdb import processing

    signal = np.asarray(signal, np.float64)
    rate = max(float(fs), XQRS_FS)
    if rate != fs:
        signal = resample(signal[:, None], fs, rate)[:, 0]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # (XQRS prints its progress)
        warnings.simplefilter("ignore")
        logging.getLogger("wfdb").setLevel(logging.ERROR)
        found = processing.xqrs_detect(signal, fs=rate, verbose=False)
    return np.round(np.asarray(found, np.float64) * fs / rate).astype(np.int64)


def neurokit_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peak samples of one lead by neurokit2 (its default `ecg_peaks` after `ecg_clean`)."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned = nk.ecg_clean(np.asarray(signal, np.float64), sampling_rate=int(round(fs)))
        _, info = nk.ecg_peaks(cleaned, sampling_rate=int(round(fs)))
    return np.asarray(info["ECG_R_Peaks"], np.int64)


def ours_peaks(signal: np.ndarray, fs: float) -> np.ndarray:
    return detect_r_peaks(signal, fs)


def detectors() -> dict[str, Callable[[np.ndarray, float], np.ndarray]]:
    """The independent detectors available here: XQRS always, neurokit2 when installed."""
    found = {"xqrs": xqrs_peaks}
    try:
        import neurokit2  # noqa: F401
    except ImportError:
        return found
    return {**found, "neurokit2": neurokit_peaks}


def rate_and_variability(peaks: np.ndarray, fs: float) -> tuple[float, float]:
    """(heart rate bpm from the mean RR, RR standard deviation / mean); NaN for fewer than 3 peaks."""
    if len(peaks) < 3:
        return float("nan"), float("nan")
    rr = np.diff(np.sort(peaks)) / fs
    return 60.0 / float(rr.mean()), float(rr.std() / rr.mean())


def rhythm_table(ecg: np.ndarray, fs: float, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{'<detector>_hr_bpm', '<detector>_rr_cv'}: (batch,) float64 per detector on lead II (NaN where it finds
    fewer than 3 beats). ecg: (batch, time, 12) mV."""
    chosen = detectors()
    chosen["ours"] = ours_peaks
    names = list(chosen) if names is None else list(names)
    out = {f"{name}_{what}": np.full(len(ecg), np.nan) for name in names for what in ("hr_bpm", "rr_cv")}
    for i, record in enumerate(np.asarray(ecg)):
        if not np.isfinite(record).all():
            continue
        for name in names:
            try:
                peaks = chosen[name](record[:, LEAD_II] if name != "ours" else record, fs)
            except Exception:  # a detector that fails on one ECG (neurokit2 on a flat trace) measures nothing
                peaks = np.zeros(0)
            out[f"{name}_hr_bpm"][i], out[f"{name}_rr_cv"][i] = rate_and_variability(peaks, fs)
    return out


def peak_distances_ms(record: np.ndarray, fs: float, requested_s: Sequence[float], detector: str = "xqrs"
                      ) -> np.ndarray:
    """(len(requested_s),) distance (ms) from each requested R peak of one ECG (time, 12) to the nearest detected
    one (inf where the detector finds none)."""
    detect = {**detectors(), "ours": ours_peaks}[detector]
    return nearest_peak_ms(requested_s, detect(record[:, LEAD_II] if detector != "ours" else record, fs) / fs)


def peak_match_ms(ecg: np.ndarray, fs: float, requested_s: Sequence[Sequence[float]],
                  detector: str = "xqrs") -> np.ndarray:
    """(batch,) median over each ECG's requested R peaks of the distance (ms) to the nearest detected one."""
    out = np.full(len(ecg), np.nan)
    for i, (record, wanted) in enumerate(zip(np.asarray(ecg), requested_s)):
        distances = peak_distances_ms(record, fs, wanted, detector)
        if len(distances) and np.isfinite(distances).any():
            out[i] = float(np.median(distances))
    return out
