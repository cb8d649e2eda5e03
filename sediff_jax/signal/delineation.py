"""Global delineation of a 12-lead record on its median beat: P onset, QRS onset/offset, T end; PR, QRS, QT,
QTc (Bazett, Fridericia) and the frontal QRS axis.

The median beat (all leads, band-passed 0.5-40 Hz, QRS-aligned on `detect_r_peaks`) is delineated as one
multi-lead object, the way 12-lead interval measurement works in practice (global onsets are the earliest onset
in any lead, offsets the latest):
- QRS: the region around R where the spatial velocity (sum over leads of |dV/dt|) stays above
  `QRS_VELOCITY_FRACTION` of its peak, with dips shorter than `QRS_GAP_S` (the R and S apices) bridged.
- Baseline per lead: the median of the PR segment just before QRS onset.
- T end and P onset: the tangent method on the spatial magnitude (RMS over leads, baseline removed): the tangent
  at the steepest descent after the T peak (steepest ascent before the P peak) meets the curve's floor.
- P is reported absent (PR NaN) when the magnitude before the QRS has no wave of at least `MIN_P_MV` (atrial
  fibrillation, flutter with a hidden P, noise).

Checked against LUDB's cardiologist marks in tests/data/test_delineation.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from sediff_jax.signal.beats import median_beat
from sediff_jax.signal.filters import bandpass
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm
from sediff_jax.leads import LEAD_NAMES
from sediff_jax.errors import SediffError

QRS_VELOCITY_FRACTION = 0.09
QRS_GAP_S = 0.024
QRS_SEARCH_S = 0.1  # the QRS must contain a velocity peak within this of R
MIN_QRS_S, MAX_QRS_S = 0.04, 0.24
MIN_P_MV = 0.02
T_END_FRACTION = 0.16
LEAD_I, LEAD_AVF = LEAD_NAMES.index("I"), LEAD_NAMES.index("aVF")


class DelineationError(SediffError, ValueError):
    """A record cannot be delineated (too few beats, no QRS)."""


@dataclasses.dataclass(frozen=True)
class Delineation:
    """Global fiducials of a record's median beat, ms relative to its R peak (NaN where absent), and intervals.

    hr_bpm: from the R peaks.  rr_ms: median RR.  pr_ms = qrs_onset - p_onset; qrs_ms = qrs_offset - qrs_onset;
    qt_ms = t_end - qrs_onset; qtc_bazett_ms = QT / sqrt(RR s); qtc_fridericia_ms = QT / RR^(1/3);
    qrs_axis_deg: frontal axis from the net QRS area in leads I and aVF, (-180, 180].  num_beats: beats in the
    median.
    """

    hr_bpm: float
    rr_ms: float
    p_onset_ms: float
    p_peak_ms: float
    qrs_onset_ms: float
    qrs_offset_ms: float
    t_peak_ms: float
    t_end_ms: float
    qrs_axis_deg: float
    num_beats: int

    @property
    def pr_ms(self) -> float:
        return self.qrs_onset_ms - self.p_onset_ms

    @property
    def qrs_ms(self) -> float:
        return self.qrs_offset_ms - self.qrs_onset_ms

    @property
    def qt_ms(self) -> float:
        return self.t_end_ms - self.qrs_onset_ms

    @property
    def qtc_bazett_ms(self) -> float:
        return self.qt_ms / math.sqrt(self.rr_ms / 1000.0)

    @property
    def qtc_fridericia_ms(self) -> float:
        return self.qt_ms / (self.rr_ms / 1000.0) ** (1.0 / 3.0)

    def intervals(self) -> dict[str, float]:
        """hr_bpm, pr_ms, qrs_ms, qt_ms, qtc_bazett_ms, qtc_fridericia_ms, qrs_axis_deg (floats, NaN if absent)."""
        return {"hr_bpm": self.hr_bpm, "pr_ms": self.pr_ms, "qrs_ms": self.qrs_ms, "qt_ms": self.qt_ms,
                "qtc_bazett_ms": self.qtc_bazett_ms, "qtc_fridericia_ms": self.qtc_fridericia_ms,
                "qrs_axis_deg": self.qrs_axis_deg}


def _bridge(mask: np.ndarray, gap: int) -> np.ndarray:
    """`mask` with False runs shorter than `gap` samples between two True samples set to True."""
    out = mask.copy()
    true = np.flatnonzero(mask)
    for a, b in zip(true[:-1], true[1:]):
        if 1 < b - a <= gap:
            out[a:b] = True
    return out


def _tangent_crossing(curve: np.ndarray, start: int, stop: int, descending: bool) -> float:
    """Where the tangent at the steepest descent (ascent) of curve[start:stop] meets the floor of that range,
    as a fractional index; the floor is the range's minimum."""
    segment = curve[start:stop]
    if segment.size < 3:
        return float("nan")
    slope = np.gradient(segment)
    k = int(np.argmin(slope) if descending else np.argmax(slope))
    floor = float(segment.min())
    if abs(slope[k]) < 1e-12:
        return float(start + k)
    crossing = k + (floor - segment[k]) / slope[k]
    return float(start + np.clip(crossing, 0, segment.size - 1))


def _t_end(magnitude: np.ndarray, peak: int, stop: int) -> float:
    """T end: where the magnitude after the T peak first falls to T_END_FRACTION of the way from the floor
    (the minimum of magnitude[peak:stop]) to the peak, or the tangent-method crossing, whichever is later."""
    segment = magnitude[peak:stop]
    floor = float(segment.min())
    level = floor + T_END_FRACTION * (float(segment[0]) - floor)
    below = np.flatnonzero(segment <= level)
    threshold = float(peak + below[0]) if below.size else float(stop - 1)
    tangent = _tangent_crossing(magnitude, peak, stop, descending=True)
    return max(threshold, tangent) if np.isfinite(tangent) else threshold


def delineate_median_beat(beat: np.ndarray, r_index: int, fs: float, rr_s: float) -> dict[str, float]:
    """Fiducials of one median beat (samples, fractional, relative to index 0) and the QRS axis.

    Args:
      beat: (time, 12) mV in canonical lead order, band-passed, R at `r_index`.  fs: Hz.  rr_s: median RR, s.
    Returns:
      dict with p_onset, p_peak, qrs_onset, qrs_offset, t_peak, t_end (samples; NaN if absent), qrs_axis_deg.
    Raises:
      DelineationError when no QRS can be placed around R.
    """
    n = beat.shape[0]
    velocity = np.abs(np.gradient(beat, axis=0)).sum(axis=1)
    smooth = max(1, int(round(0.01 * fs)))
    velocity = np.convolve(velocity, np.ones(smooth) / smooth, mode="same")
    search = int(round(QRS_SEARCH_S * fs))
    lo, hi = max(0, r_index - search), min(n, r_index + search + 1)
    peak = float(velocity[lo:hi].max())
    if not peak > 0:
        raise DelineationError("flat median beat: no QRS around the R peak")
    above = _bridge(velocity >= QRS_VELOCITY_FRACTION * peak, max(1, int(round(QRS_GAP_S * fs))))
    anchor = lo + int(np.argmax(velocity[lo:hi]))
    onset = anchor
    while onset > 0 and above[onset - 1]:
        onset -= 1
    offset = anchor
    while offset < n - 1 and above[offset + 1]:
        offset += 1
    # The velocity threshold crossing lies half a smoothing window inside the wave's true edge.
    onset, offset = max(0, onset - smooth // 2), min(n - 1, offset + smooth // 2)
    duration = (offset - onset) / fs
    if not MIN_QRS_S <= duration <= MAX_QRS_S:
        raise DelineationError(f"QRS of {1000 * duration:.0f} ms around the R peak (expected "
                               f"{1000 * MIN_QRS_S:.0f}-{1000 * MAX_QRS_S:.0f} ms)")

    pr_lo, pr_hi = max(0, onset - int(round(0.03 * fs))), max(1, onset - int(round(0.008 * fs)))
    baseline = np.median(beat[pr_lo:pr_hi], axis=0)
    centred = beat - baseline
    magnitude = np.sqrt(np.mean(centred ** 2, axis=1))

    net = centred[onset:offset + 1].sum(axis=0)
    axis = float(np.degrees(np.arctan2(net[LEAD_AVF], net[LEAD_I])))

    t_lo = offset + int(round(0.06 * fs))
    t_hi = min(n, r_index + int(round(0.7 * rr_s * fs)))
    t_peak = t_end = float("nan")
    if t_hi - t_lo >= 3:
        t_peak_i = t_lo + int(np.argmax(magnitude[t_lo:t_hi]))
        t_peak = float(t_peak_i)
        t_end = _t_end(magnitude, t_peak_i, t_hi)

    p_hi = onset - int(round(0.02 * fs))
    p_lo = max(0, r_index - int(round(min(0.45, 0.6 * rr_s) * fs)))
    p_peak = p_onset = float("nan")
    if p_hi - p_lo >= 3:
        p_peak_i = p_lo + int(np.argmax(magnitude[p_lo:p_hi]))
        floor = float(magnitude[p_lo:p_peak_i + 1].min())
        if magnitude[p_peak_i] - floor >= MIN_P_MV and p_peak_i > p_lo:
            p_peak = float(p_peak_i)
            p_onset = _tangent_crossing(magnitude, p_lo, p_peak_i + 1, descending=False)
    return {"p_onset": p_onset, "p_peak": p_peak, "qrs_onset": float(onset), "qrs_offset": float(offset),
            "t_peak": t_peak, "t_end": t_end, "qrs_axis_deg": axis}


def delineate(ecg: np.ndarray, fs: float, r_peaks: np.ndarray | None = None, where: str = "") -> Delineation:
    """Delineate a 12-lead record on its median beat.

    Args:
      ecg: (time, 12) mV in canonical lead order (I, II, III, aVR, aVL, aVF, V1-V6), finite.  fs: Hz (>= 100).
      r_peaks: R-peak samples (default: `detect_r_peaks`).  where: names the record in errors.
    Raises:
      DelineationError naming `where` for a wrong shape, non-finite samples, fewer than 2 R peaks or no QRS.
    """
    label = f"{where}: " if where else ""
    ecg = np.asarray(ecg, np.float64)
    if ecg.ndim != 2 or ecg.shape[1] != len(LEAD_NAMES):
        raise DelineationError(f"{label}expected (time, {len(LEAD_NAMES)}) leads, got shape {ecg.shape}")
    if not np.all(np.isfinite(ecg)):
        raise DelineationError(f"{label}the ECG has NaN or infinite samples")
    filtered = bandpass(ecg, fs, 0.5, 40.0)
    peaks = detect_r_peaks(ecg, fs) if r_peaks is None else np.asarray(r_peaks)
    if len(peaks) < 2:
        raise DelineationError(f"{label}fewer than 2 R peaks ({len(peaks)}); cannot delineate")
    rr_s = float(np.median(np.diff(peaks))) / fs
    before_s, after_s = min(0.45, 0.6 * rr_s), min(0.75, 0.85 * rr_s)
    try:
        beat, count = median_beat(filtered, peaks, fs, before_s, after_s)
        marks = delineate_median_beat(beat, int(round(before_s * fs)), fs, rr_s)
    except (ValueError, DelineationError) as e:
        raise DelineationError(f"{label}{e}") from None
    r_index = int(round(before_s * fs))
    to_ms = lambda k: (marks[k] - r_index) / fs * 1000.0  # noqa: E731
    return Delineation(
        hr_bpm=heart_rate_bpm(peaks, fs),
        rr_ms=1000.0 * rr_s, p_onset_ms=to_ms("p_onset"), p_peak_ms=to_ms("p_peak"),
        qrs_onset_ms=to_ms("qrs_onset"), qrs_offset_ms=to_ms("qrs_offset"), t_peak_ms=to_ms("t_peak"),
        t_end_ms=to_ms("t_end"), qrs_axis_deg=marks["qrs_axis_deg"], num_beats=count)
