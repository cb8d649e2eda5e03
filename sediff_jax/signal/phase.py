"""The cardiac phase of a record from its R peaks: the rhythm scaffold the denoiser is told.

phi(t) is 0 at every R peak and rises by 2 pi per beat, linearly in time between consecutive peaks; before the
first peak and after the last it continues with the neighbouring RR interval. Training takes it from each record's
R peaks; sampling from R peaks that the simulator's phase oscillator (or the user) places. The same function
serves both, jittable and batched, on padded peak arrays.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
RHYTHM_FEATURES = 3  # cos phi, sin phi, present (1 where the record has a scaffold, 0 where absent or dropped)
ECTOPIC_RHYTHM_FEATURES = 4  # ... and premature (1 around a premature beat: `premature_beats`)
PREMATURE_RR_FRACTION = 0.8  # a beat is premature when its RR is shorter than this fraction of the reference RR


def cardiac_phase(r_peaks: Array, times: Array) -> tuple[Array, Array]:
    """phi at `times` of the rhythm with R peaks `r_peaks`.

    r_peaks: (..., max_peaks) positions, ascending, padded at the end with negative values (the prepared
    datasets' -1).  times: (T,) positions in the same unit (samples or seconds).
    Returns (phase (..., T) float32 rad, valid (...,) bool); valid needs >= 2 peaks (phase 0 where not).
    """
    peaks = jnp.asarray(r_peaks, jnp.float32)
    times = jnp.asarray(times, jnp.float32)
    present = peaks >= 0
    count = jnp.sum(present, axis=-1)
    padded = jnp.where(present, peaks, jnp.inf)
    # k: the last peak at or before t, clipped so that (k, k + 1) is a pair of real peaks (the ends extrapolate).
    before = jnp.sum(padded[..., None, :] <= times[:, None], axis=-1) - 1  # (..., T)
    k = jnp.clip(before, 0, jnp.maximum(count - 2, 0)[..., None])
    r_k = jnp.take_along_axis(padded, k, axis=-1)
    r_next = jnp.take_along_axis(padded, k + 1, axis=-1)
    valid = count >= 2
    rr = jnp.where(valid[..., None], r_next - r_k, 1.0)
    phase = 2.0 * math.pi * (k + (times - jnp.where(valid[..., None], r_k, 0.0)) / rr)
    return jnp.where(valid[..., None], phase, 0.0), valid


def latent_times(num_latent: int, downsampling: int) -> np.ndarray:
    """(num_latent,) centre of each latent step in samples of the signal (`downsampling` samples per step)."""
    return np.arange(num_latent, dtype=np.float32) * downsampling + 0.5 * (downsampling - 1)


def premature_beats(r_peaks: Array) -> Array:
    """(..., max_peaks) bool: whether each R peak comes early. Beat k is premature when the RR interval ending at it
    is shorter than `PREMATURE_RR_FRACTION` of the larger of the record's median RR and the RR interval after it
    (the pause that follows an ectopic beat: so every other beat of a bigeminy counts, though half the record's
    intervals are short). The first peak and padding are never premature. r_peaks: (..., max_peaks) positions,
    ascending, padded at the end with negative values."""
    peaks = jnp.asarray(r_peaks, jnp.float32)
    present = peaks >= 0
    rr = peaks[..., 1:] - peaks[..., :-1]  # rr[..., j]: the interval ending at peak j + 1
    known = present[..., 1:] & present[..., :-1]
    median = jnp.nanmedian(jnp.where(known, rr, jnp.nan), axis=-1, keepdims=True)
    after = jnp.concatenate([jnp.where(known[..., 1:], rr[..., 1:], 0.0), jnp.zeros_like(rr[..., :1])], axis=-1)
    early = known & (rr < PREMATURE_RR_FRACTION * jnp.maximum(jnp.nan_to_num(median), after))
    return jnp.concatenate([jnp.zeros_like(early[..., :1]), early], axis=-1)


def rhythm_features(r_peaks: Array, num_latent: int, downsampling: int, channels: int = RHYTHM_FEATURES) -> Array:
    """The scaffold at the latent's resolution: (..., num_latent, channels) float32 = (cos phi, sin phi, 1) and,
    with `channels` = `ECTOPIC_RHYTHM_FEATURES`, whether the nearest R peak is premature (`premature_beats`), all
    zero for a record with fewer than 2 R peaks. r_peaks: (..., max_peaks) signal samples, -1 padded."""
    if channels not in (RHYTHM_FEATURES, ECTOPIC_RHYTHM_FEATURES):
        raise ValueError(f"channels={channels}; expected {RHYTHM_FEATURES} or {ECTOPIC_RHYTHM_FEATURES}")
    times = latent_times(num_latent, downsampling)
    phase, valid = cardiac_phase(r_peaks, times)
    on = valid[..., None].astype(jnp.float32)
    features = [jnp.cos(phase) * on, jnp.sin(phase) * on, jnp.broadcast_to(on, phase.shape)]
    if channels == ECTOPIC_RHYTHM_FEATURES:
        peaks = jnp.asarray(r_peaks, jnp.float32)
        distance = jnp.where(peaks[..., None, :] >= 0, jnp.abs(jnp.asarray(times)[:, None] - peaks[..., None, :]),
                             jnp.inf)  # (..., T, max_peaks)
        nearest = jnp.argmin(distance, axis=-1)
        early = jnp.take_along_axis(premature_beats(peaks), nearest, axis=-1)
        features.append(early.astype(jnp.float32) * on)
    return jnp.stack(features, axis=-1)


def pad_peaks(peaks: list[np.ndarray] | tuple[np.ndarray, ...], max_peaks: int | None = None) -> np.ndarray:
    """(len(peaks), max_peaks) float32 of ragged ascending peak lists, padded with -1."""
    width = max_peaks if max_peaks is not None else max([len(p) for p in peaks] + [2])
    out = np.full((len(peaks), width), -1.0, np.float32)
    for i, p in enumerate(peaks):
        if len(p) > width:
            raise ValueError(f"{len(p)} peaks do not fit max_peaks={width}")
        out[i, :len(p)] = p
    return out
