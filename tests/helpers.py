"""Small measurement helpers for tests on clean simulated ECGs (real-signal detection lives in the library)."""

import numpy as np


def r_peak_times(x: np.ndarray, fs: float) -> np.ndarray:
    """Times (s) of local maxima above half the maximum, refined by a parabola through three samples."""
    thr = 0.5 * x.max()
    idx = np.where((x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:]) & (x[1:-1] > thr))[0] + 1
    a, b, c = x[idx - 1], x[idx], x[idx + 1]
    return (idx + 0.5 * (a - c) / (a - 2 * b + c)) / fs
