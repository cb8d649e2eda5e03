"""Multi-lead R-peak detection and heart rate, in NumPy/SciPy (no neurokit2 needed).

QRS complexes are found on the summed band-passed energy of all leads (robust to one noisy lead), then
each is placed on the record's dominant deflection: the lead with the largest median QRS amplitude, with the
record's QRS polarity in that lead. One lead and one polarity per record keep the peaks of a record
consistent beat to beat. Checked against the cardiologists' QRS marks in LUDB (tests/data/test_rpeaks.py).
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from sediff_jax.signal.filters import bandpass

MIN_RR_S = 0.2  # 300 bpm, the simulator's and the canonicaliser's upper bound
QRS_HALF_WIDTH_S = 0.06
# A maximum this close to either end of a record may be a cut-off QRS; it is not reported as a peak.
EDGE_S = 0.025
# A QRS has band-passed (5-15 Hz) RMS over its 80 ms window of at least this, averaged over leads (mV): real
# complexes, low-voltage ones included, are >= 0.1 mV; below it the "peaks" are numerical residue of a signal
# without QRS complexes (a flat or slowly varying trace), which must give no R peaks rather than invented ones.
MIN_QRS_RMS_MV = 0.02


def _as_2d(ecg: np.ndarray) -> np.ndarray:
    ecg = np.asarray(ecg, np.float64)
    return ecg[:, None] if ecg.ndim == 1 else ecg


def qrs_locations(ecg: np.ndarray, fs: float, threshold: float = 0.3) -> np.ndarray:
    """Sample indices of QRS energy maxima (the QRS centres), before placing them on a deflection."""
    ecg = _as_2d(ecg)
    if ecg.shape[0] < int(fs):
        return np.zeros((0,), np.int64)
    energy = np.mean(bandpass(ecg, fs, 5.0, 15.0) ** 2, axis=1)
    window = max(1, int(round(0.08 * fs)))
    energy = np.convolve(energy, np.ones(window) / window, mode="same")
    candidates, props = sps.find_peaks(energy, distance=max(1, int(MIN_RR_S * fs)), height=0.0)
    if candidates.size == 0:
        return np.zeros((0,), np.int64)
    typical = np.percentile(props["peak_heights"], 90)
    floor = MIN_QRS_RMS_MV**2
    return candidates[props["peak_heights"] >= max(threshold * typical, floor)].astype(np.int64)


def _qrs_segments(wide: np.ndarray, beats: np.ndarray, fs: float):
    half = max(1, int(round(QRS_HALF_WIDTH_S * fs)))
    starts = np.clip(beats - half, 0, len(wide))
    stops = np.clip(beats + half + 1, 0, len(wide))
    return starts, [wide[a:b] - np.median(wide[a:b], axis=0) for a, b in zip(starts, stops)]


def dominant_lead(ecg: np.ndarray, fs: float, beats: np.ndarray | None = None) -> tuple[int, float]:
    """(lead index, polarity +1/-1) that `detect_r_peaks` places a record's peaks on."""
    ecg = _as_2d(ecg)
    beats = qrs_locations(ecg, fs) if beats is None else beats
    if beats.size == 0:
        return 0, 1.0
    _, segments = _qrs_segments(bandpass(ecg, fs, 0.5, 40.0), beats, fs)
    extremes = np.stack([s[np.argmax(np.abs(s), axis=0), np.arange(s.shape[1])] for s in segments])
    lead = int(np.argmax(np.median(np.abs(extremes), axis=0)))
    return lead, (1.0 if np.median(extremes[:, lead]) >= 0 else -1.0)


def detect_r_peaks(
    ecg: np.ndarray,
    fs: float,
    *,
    threshold: float = 0.3,
    lead: int | None = None,
    polarity: float | None = None,
) -> np.ndarray:
    """R-peak sample indices of one record.

    Args:
      ecg: (time, leads) or (time,), mV, finite. Any number of leads.
      fs: sampling rate, Hz (>= 50).
      threshold: QRS energy threshold as a fraction of the typical QRS energy.
      lead, polarity: place the peaks on this lead with this sign instead of `dominant_lead`'s choice.

    Returns:
      (num_peaks,) int32, increasing, at least `MIN_RR_S` apart, none within `EDGE_S` of either end.
    """
    ecg = _as_2d(ecg)
    beats = qrs_locations(ecg, fs, threshold)
    if beats.size == 0:
        return np.zeros((0,), np.int32)
    if lead is None or polarity is None:
        chosen_lead, chosen_polarity = dominant_lead(ecg, fs, beats)
        lead = chosen_lead if lead is None else lead
        polarity = chosen_polarity if polarity is None else polarity
    starts, segments = _qrs_segments(bandpass(ecg, fs, 0.5, 40.0), beats, fs)
    peaks = np.array([a + int(np.argmax(polarity * s[:, lead])) for a, s in zip(starts, segments)], np.int64)
    # Refinement can move two detections onto one deflection; keep the first.
    keep = np.concatenate([[True], np.diff(peaks) >= int(MIN_RR_S * fs)])
    edge = int(np.ceil(EDGE_S * fs))
    keep &= (peaks >= edge) & (peaks < len(ecg) - edge)
    return peaks[keep].astype(np.int32)


def heart_rate_bpm(r_peaks: np.ndarray, fs: float) -> float:
    """Mean heart rate from R peaks (60 / mean RR), bpm; NaN with fewer than two peaks."""
    r_peaks = np.asarray(r_peaks)
    if r_peaks.size < 2:
        return float("nan")
    return float(60.0 * fs * (r_peaks.size - 1) / (r_peaks[-1] - r_peaks[0]))
