"""Physiological metrics: beat detection scored against reference annotations, heart-rate error against a
requested rate, interval errors (PR, QRS, QT, QTc) against a target or a paired record, and how unlike the
dominant beat a record's premature beats are (ectopy).

Beat matching follows ANSI/AAMI EC57: a detection matches a reference beat within +-150 ms, each at most once.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from sediff_jax.signal.beats import beat_segments, beat_window_samples
from sediff_jax.signal.filters import bandpass
from sediff_jax.signal.phase import premature_beats
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm

MATCH_WINDOW_S = 0.15
# The statements whose records carry premature beats, and the QRS window the ectopic beats are compared over (s).
ECTOPIC_CODES = ("PVC", "BIGU", "TRIGU", "PAC")
ECTOPIC_BEAT_WINDOW_S = (0.08, 0.12)


@dataclasses.dataclass(frozen=True)
class BeatScores:
    """true_positives, false_negatives (missed), false_positives (extra) and the derived rates."""

    true_positives: int
    false_negatives: int
    false_positives: int

    @property
    def sensitivity(self) -> float:
        return self.true_positives / max(self.true_positives + self.false_negatives, 1)

    @property
    def positive_predictive_value(self) -> float:
        return self.true_positives / max(self.true_positives + self.false_positives, 1)


def match_beats(detected: np.ndarray, reference: np.ndarray, fs: float,
                window_s: float = MATCH_WINDOW_S) -> BeatScores:
    """Score detected beat positions (samples) against reference ones: each reference beat takes the nearest
    unmatched detection within `window_s`, in time order."""
    detected = np.sort(np.asarray(detected, np.int64))
    reference = np.sort(np.asarray(reference, np.int64))
    tolerance = window_s * fs
    used = np.zeros(len(detected), bool)
    matched = 0
    for beat, i in zip(reference, np.searchsorted(detected, reference)):
        candidates = [c for c in (i - 1, i, i + 1) if 0 <= c < len(detected) and not used[c]
                      and abs(detected[c] - beat) <= tolerance]
        if candidates:
            used[min(candidates, key=lambda c: abs(detected[c] - beat))] = True
            matched += 1
    return BeatScores(matched, len(reference) - matched, len(detected) - matched)


def measured_heart_rates(ecg: np.ndarray, fs: float) -> np.ndarray:
    """(batch,) heart rate of each ECG from its detected R peaks, bpm; NaN where fewer than 2 peaks are found
    or the ECG is not finite.  ecg: (batch, time, leads) mV."""
    rates = []
    for record in np.asarray(ecg):
        peaks = detect_r_peaks(record, fs) if np.isfinite(record).all() else np.zeros(0)
        rates.append(heart_rate_bpm(peaks, fs) if len(peaks) >= 2 else np.nan)
    return np.asarray(rates, np.float64)


def heart_rate_errors(ecg: np.ndarray, fs: float, requested_bpm: Sequence[float]) -> tuple[np.ndarray, int]:
    """Relative |measured - requested| / requested heart rate of each ECG whose rate can be measured, and the
    number of ECGs whose rate could not be.  ecg: (batch, time, leads) mV."""
    measured = measured_heart_rates(ecg, fs)
    requested = np.asarray(requested_bpm, np.float64)
    ok = np.isfinite(measured)
    return np.abs(measured[ok] - requested[ok]) / requested[ok], int((~ok).sum())


def summarize(values) -> dict[str, float]:
    """{"median", "mean", "sem" (standard error of the mean, NaN for n < 2), "n"} of the finite values (NaN
    statistics and n = 0 when there are none)."""
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        return {"median": float("nan"), "mean": float("nan"), "sem": float("nan"), "n": 0}
    sem = float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return {"median": float(np.median(values)), "mean": float(np.mean(values)), "sem": sem, "n": int(values.size)}


def interval_errors(measured: Sequence[Mapping[str, float]], target: Sequence[Mapping[str, float]],
                    names: Sequence[str] = ("hr_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms",
                                            "qtc_fridericia_ms")) -> dict[str, dict[str, float]]:
    """Per interval: median and mean |measured - target| and the number of pairs where both are finite.
    measured, target: per ECG, e.g. `Delineation.intervals()` of a generated ECG and of its paired record."""
    if len(measured) != len(target):
        raise ValueError(f"{len(measured)} measured and {len(target)} target interval sets")
    return {name: summarize(np.abs([m.get(name, np.nan) - t.get(name, np.nan) for m, t in zip(measured, target)]))
            for name in names}


def ectopic_beat_difference(ecg: np.ndarray, fs: float, r_peaks: np.ndarray | None = None) -> float:
    """How unlike the record's dominant beat its premature beats are: the median, over the beats that
    `signal.phase.premature_beats` calls premature, of |beat - template| / |template| (Frobenius norms over all
    leads) in the window `ECTOPIC_BEAT_WINDOW_S` around R, the template being the median of the other beats, on the
    0.5-40 Hz band. About 1-1.5 for ventricular ectopic beats (wide, another axis) and 0.3 for atrial ones on
    PTB-XL; NaN with no premature beat or fewer than 2 others. ecg: (time, leads) mV; r_peaks: samples (detected
    when None)."""
    filtered = bandpass(np.asarray(ecg, np.float64), fs, 0.5, 40.0)
    peaks = detect_r_peaks(np.asarray(ecg), fs) if r_peaks is None else np.asarray(r_peaks, np.int64)
    peaks = peaks[peaks >= 0]
    if len(peaks) < 3:
        return float("nan")
    before, after = beat_window_samples(fs, *ECTOPIC_BEAT_WINDOW_S)
    early = np.asarray(premature_beats(peaks.astype(np.float32)))
    inside = (peaks - before >= 0) & (peaks + after <= len(filtered))
    beats, early = beat_segments(filtered, peaks, fs, *ECTOPIC_BEAT_WINDOW_S), early[inside]
    if not early.any() or (~early).sum() < 2:
        return float("nan")
    template = np.median(beats[~early], axis=0)
    return float(np.median([np.linalg.norm(b - template) / np.linalg.norm(template) for b in beats[early]]))


def ectopy_scores(generated: np.ndarray, real: np.ndarray, fs: float, codes: Sequence[Sequence[str]],
                  generated_peaks: Sequence[np.ndarray] | None = None,
                  real_peaks: Sequence[np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Per statement of `ECTOPIC_CODES` that some record carries: its records' count, and for the generated ECGs and
    their paired real records the fraction with a premature beat and the median `ectopic_beat_difference`.
    generated, real: (n, time, leads) mV; codes: each record's statements; generated_peaks, real_peaks: R peaks
    (samples) per row where already known, else detected."""
    scores = {}
    for code in ECTOPIC_CODES:
        rows = [i for i, c in enumerate(codes) if code in c]
        if not rows:
            continue
        entry = {"records": len(rows)}
        for name, ecg, peaks in (("generated", generated, generated_peaks), ("real", real, real_peaks)):
            values = np.array([ectopic_beat_difference(ecg[i], fs, None if peaks is None else peaks[i])
                               for i in rows])
            found = np.isfinite(values)
            entry[f"{name}_with_premature_beat"] = float(found.mean())
            entry[f"{name}_difference"] = float(np.median(values[found])) if found.any() else float("nan")
        scores[code] = entry
    return scores
