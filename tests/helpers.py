"""Small measurement helpers for tests on clean simulated ECGs (real-signal detection lives in the library)."""

import numpy as np


def r_peak_times(x: np.ndarray, fs: float) -> np.ndarray:
    """Times (s) of local maxima above half the maximum, refined by a parabola through three samples."""
    thr = 0.5 * x.max()
    idx = np.where((x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:]) & (x[1:-1] > thr))[0] + 1
    a, b, c = x[idx - 1], x[idx], x[idx + 1]
    return (idx + 0.5 * (a - c) / (a - 2 * b + c)) / fs


def median_beat(ecg: np.ndarray, fs: float, r_times: np.ndarray, before_s: float = 0.35, after_s: float = 0.55):
    """(time, leads) median of beats cut from before_s to after_s around each R time; returns (beat, R index)."""
    lo, hi = int(round(before_s * fs)), int(round(after_s * fs))
    starts = [int(round(t * fs)) - lo for t in r_times]
    beats = [ecg[s : s + lo + hi] for s in starts if s >= 0 and s + lo + hi <= len(ecg)]
    return np.median(np.stack(beats), axis=0), lo
