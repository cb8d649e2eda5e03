"""Zero-phase filters and resampling of multi-lead ECGs along time (axis 0), in NumPy/SciPy."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from scipy import signal as sps


def bandpass(ecg: np.ndarray, fs: float, low_hz: float, high_hz: float) -> np.ndarray:
    """Zero-phase 2nd-order Butterworth band-pass along time (axis 0); `high_hz` is capped at 0.45 fs."""
    high_hz = min(high_hz, 0.45 * fs)
    sos = sps.butter(2, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, ecg, axis=0)


def highpass(ecg: np.ndarray, fs: float, cutoff_hz: float) -> np.ndarray:
    """Zero-phase 2nd-order Butterworth high-pass along time (baseline-wander removal): (time, leads) float32."""
    sos = sps.butter(2, cutoff_hz, btype="highpass", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, ecg, axis=0).astype(np.float32)


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Zero-phase polyphase resampling along axis 0 (anti-aliased, linear-trend padded edges)."""
    if math.isclose(fs_in, fs_out):
        return x.astype(np.float32, copy=False)
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    if not math.isclose(float(ratio), fs_out / fs_in, rel_tol=1e-9):
        raise ValueError(f"cannot resample {fs_in:g} Hz -> {fs_out:g} Hz with a rational ratio")
    y = sps.resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator, axis=0, padtype="line")
    return y.astype(np.float32)
