"""Beats cut around R peaks, and the median beat of a record.

One place for the beat windows that fitting (median beat), the beat decoder's loss and evaluation all use.
"""

from __future__ import annotations

import numpy as np


def beat_window_samples(fs: float, before_s: float, after_s: float) -> tuple[int, int]:
    """(samples before the R peak, samples after it, R included in the second); window length is their sum."""
    return int(round(before_s * fs)), int(round(after_s * fs))


def beat_segments(ecg: np.ndarray, r_peaks: np.ndarray, fs: float, before_s: float, after_s: float) -> np.ndarray:
    """Every beat whose whole window lies inside the record.

    Args:
      ecg: (time, leads) mV.  r_peaks: (num_peaks,) sample indices.  fs: Hz.
      before_s, after_s: window before and after the R peak, s.

    Returns:
      (num_beats, before + after, leads), R peak at index `before`; num_beats may be 0.
    """
    before, after = beat_window_samples(fs, before_s, after_s)
    r_peaks = np.asarray(r_peaks, np.int64)
    inside = r_peaks[(r_peaks - before >= 0) & (r_peaks + after <= ecg.shape[0])]
    if inside.size == 0:
        return np.zeros((0, before + after, ecg.shape[1]), ecg.dtype)
    index = inside[:, None] + np.arange(-before, after)[None, :]
    return ecg[index]


def median_beat(
    ecg: np.ndarray, r_peaks: np.ndarray, fs: float, before_s: float, after_s: float
) -> tuple[np.ndarray, int]:
    """Sample-wise median of the complete beats: ((before + after, leads) mV, number of beats used).

    Raises:
      ValueError if no beat window fits inside the record.
    """
    beats = beat_segments(ecg, r_peaks, fs, before_s, after_s)
    if beats.shape[0] == 0:
        raise ValueError(
            f"no R peak has {before_s:g} s before and {after_s:g} s after it inside the record "
            f"({ecg.shape[0] / fs:.2f} s, {len(r_peaks)} R peaks)"
        )
    return np.median(beats, axis=0).astype(np.float32), int(beats.shape[0])


def beat_segments_jax(ecg, r_peaks, before: int, after: int):
    """On-device twin of `beat_segments` for padded batches (inside jit).

    Args:
      ecg: (batch, time, leads).  r_peaks: (batch, max_peaks) int sample indices, -1 for padding.
      before, after: window in samples (static ints), R at index `before`.
    Returns:
      beats (batch, max_peaks, before + after, leads) and valid (batch, max_peaks) bool: the peak exists and
      its whole window lies inside the record (invalid beats hold clamped, meaningless samples).
    """
    import jax.numpy as jnp

    length = ecg.shape[1]
    valid = (r_peaks >= before) & (r_peaks + after <= length)
    index = jnp.clip(r_peaks[..., None] + jnp.arange(-before, after), 0, length - 1)  # (B, K, W)
    beats = jnp.take_along_axis(ecg[:, None, :, :], index[..., None], axis=2)
    return beats, valid


def median_beat_jax(ecg, r_peaks, before: int, after: int):
    """On-device twin of `median_beat`: ((batch, before + after, leads), number of beats used (batch,)).
    A record without a complete beat gets zeros and count 0 (mask it out of any loss)."""
    import jax.numpy as jnp

    beats, valid = beat_segments_jax(ecg, r_peaks, before, after)
    masked = jnp.where(valid[..., None, None], beats, jnp.nan)
    count = jnp.sum(valid, axis=1)
    median = jnp.nanmedian(masked, axis=1)
    return jnp.where((count > 0)[:, None, None], median, 0.0), count
