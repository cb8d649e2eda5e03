"""The canonical form of a record: 12 leads by name, one sampling rate and length, mV, R peaks.

Every dataset (PTB-XL, MIMIC-IV-ECG, LUDB, synthetic) passes through `canonicalize`, so a training example
always is `ecg: (num_samples, 12) float32, mV` in `LEAD_NAMES` order, with its R peaks and heart rate.
Problems that can be repaired safely are repaired and listed in `CanonicalRecord.repairs`; others raise
`RecordError` with a `reason` code, which dataset builds count.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from sediff_jax.signal.filters import highpass, resample
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm
from sediff_jax.data.wfdb_reader import RawRecord, RecordError
from sediff_jax.leads import LEAD_NAMES, NUM_LEADS
from sediff_jax.simulator.params import HR_RANGE_BPM

# Channels some 12-lead files carry besides the 12 leads (PTB Diagnostic adds Frank X, Y, Z); dropped.
EXTRA_CHANNELS = frozenset({"VX", "VY", "VZ"})
_ALIASES = {name.upper(): name for name in LEAD_NAMES}
_I, _II, _III = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class CanonicalConfig:
    """How records are brought to canonical form.

    fs: output sampling rate, Hz.  duration_s: output length, s (records are cropped; shorter ones skipped).
    offset_s: where the crop starts, s.  max_nan_gap_s: NaN runs up to this long are interpolated; longer
    ones make the lead unusable.  flat_std_mv: a lead whose std is below this (mV) is flat (disconnected).
    derive_limb_leads: rebuild missing or unusable limb leads from two good ones (Einthoven/Goldberger).
    highpass_hz: optional zero-phase baseline-wander filter; None keeps the signal as recorded.
    """

    fs: float = 500.0
    duration_s: float = 10.0
    offset_s: float = 0.0
    max_nan_gap_s: float = 0.1
    flat_std_mv: float = 1e-3
    derive_limb_leads: bool = True
    highpass_hz: float | None = None

    @property
    def num_samples(self) -> int:
        return int(round(self.fs * self.duration_s))

    @property
    def max_r_peaks(self) -> int:
        """Most R peaks a canonical record can hold (at the highest heart rate accepted)."""
        return int(math.ceil(self.duration_s * HR_RANGE_BPM[1] / 60.0)) + 1


@dataclasses.dataclass(frozen=True)
class CanonicalRecord:
    """ecg: (num_samples, 12) float32, mV, `LEAD_NAMES` order.  r_peaks: (num_peaks,) int32 sample indices.
    hr_bpm: mean heart rate.  repairs: what was changed to make the record usable (empty if nothing)."""

    ecg: np.ndarray
    fs: float
    r_peaks: np.ndarray
    hr_bpm: float
    repairs: tuple[str, ...] = ()


def canonical_lead_name(name: str) -> str | None:
    """The `LEAD_NAMES` spelling of a lead ('AVR' -> 'aVR'), or None for a known extra channel.

    Raises ValueError for anything else."""
    key = name.strip().upper()
    if key in _ALIASES:
        return _ALIASES[key]
    if key in EXTRA_CHANNELS:
        return None
    raise ValueError(f"unknown lead name {name!r}")


def reorder_leads(raw: RawRecord, derive_limb_leads: bool = True) -> np.ndarray:
    """(time, 12) in `LEAD_NAMES` order from a record's own channel order; NaN columns for missing limb leads
    (which `canonicalize` rebuilds from two present ones).

    Raises RecordError (reason 'unknown_lead', 'duplicate_lead' or 'missing_lead')."""
    out = np.full((raw.signal.shape[0], NUM_LEADS), np.nan, np.float32)
    seen: dict[str, str] = {}
    for k, name in enumerate(raw.lead_names):
        try:
            canonical = canonical_lead_name(name)
        except ValueError:
            raise RecordError(
                f"{raw.path}: unknown lead name {name!r} (channel {k}); expected {', '.join(LEAD_NAMES)}",
                reason="unknown_lead",
            ) from None
        if canonical is None:
            continue
        if canonical in seen:
            raise RecordError(f"{raw.path}: lead {canonical} appears twice ({seen[canonical]!r}, {name!r})",
                              reason="duplicate_lead")
        seen[canonical] = name
        out[:, LEAD_NAMES.index(canonical)] = raw.signal[:, k]
    missing = [n for n in LEAD_NAMES if n not in seen]
    derivable = derive_limb_leads and sum(n in seen for n in LEAD_NAMES[:3]) >= 2
    hard_missing = [n for n in missing if not (derivable and n in LEAD_NAMES[:6])]
    if hard_missing:
        raise RecordError(f"{raw.path}: missing leads {', '.join(hard_missing)}", reason="missing_lead")
    return out


def _interpolate_short_nan_runs(x: np.ndarray, max_gap: int) -> tuple[np.ndarray, int]:
    """Linearly fill NaN runs of at most `max_gap` samples in a 1-D signal; returns (signal, filled count)."""
    bad = np.isnan(x)
    if not bad.any() or bad.all():
        return x, 0
    edges = np.diff(np.concatenate([[0], bad.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    fill = np.zeros_like(bad)
    for a, b in zip(starts, stops):
        if b - a <= max_gap:
            fill[a:b] = True
    if not fill.any():
        return x, 0
    good = ~bad
    x = x.copy()
    x[fill] = np.interp(np.flatnonzero(fill), np.flatnonzero(good), x[good])
    return x, int(fill.sum())


def _limb_from_pair(ecg: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """Rebuild all six limb leads from two usable ones of I, II, III; None if there is no such pair."""
    i, ii, iii = ecg[:, _I], ecg[:, _II], ecg[:, _III]
    if usable[_I] and usable[_II]:
        pass
    elif usable[_I] and usable[_III]:
        ii = i + iii
    elif usable[_II] and usable[_III]:
        i = ii - iii
    else:
        return None
    limb = np.stack([i, ii, ii - i, -0.5 * (i + ii), i - 0.5 * ii, ii - 0.5 * i], axis=1)
    repaired = [LEAD_NAMES[k] for k in range(6) if not usable[k]]
    out = ecg.copy()
    out[:, :6] = limb
    return out, [f"derived {n} from the other limb leads" for n in repaired]


def canonicalize(raw: RawRecord, config: CanonicalConfig = CanonicalConfig()) -> CanonicalRecord:
    """Bring a record to canonical form (see the module docstring).

    Raises:
      RecordError with `reason` one of: unknown_lead, duplicate_lead, missing_lead, too_short, nan_lead,
        flat_lead, no_r_peaks, heart_rate.
    """
    ecg = reorder_leads(raw, config.derive_limb_leads)
    repairs: list[str] = []
    fs_in = raw.fs
    start = int(round(config.offset_s * fs_in))
    length = int(math.ceil(config.duration_s * fs_in - 1e-6))
    if ecg.shape[0] < start + length:
        raise RecordError(
            f"{raw.path}: {raw.duration_s:.2f} s long, need {config.offset_s + config.duration_s:g} s",
            reason="too_short",
        )
    # Keep a margin around the crop so resampling edge effects fall outside it.
    margin = int(round(0.5 * fs_in))
    lo, hi = max(0, start - margin), min(ecg.shape[0], start + length + margin)
    ecg = ecg[lo:hi]

    max_gap = int(round(config.max_nan_gap_s * fs_in))
    usable = np.ones(NUM_LEADS, bool)
    problem = {}
    for k in range(NUM_LEADS):
        column, filled = _interpolate_short_nan_runs(ecg[:, k], max_gap)
        if filled:
            repairs.append(f"interpolated {filled} NaN samples in {LEAD_NAMES[k]}")
            ecg[:, k] = column
        if np.isnan(column).any():
            usable[k], problem[k] = False, "nan_lead"
        elif np.std(column) < config.flat_std_mv:
            usable[k], problem[k] = False, "flat_lead"
    if not usable[:6].all() and config.derive_limb_leads:
        rebuilt = _limb_from_pair(ecg, usable)
        if rebuilt is not None:
            ecg, derived = rebuilt
            repairs += derived
            usable[:6] = True
    if not usable.all():
        k = int(np.flatnonzero(~usable)[0])
        what = "NaN over more than %g s" % config.max_nan_gap_s if problem[k] == "nan_lead" else "flat"
        raise RecordError(f"{raw.path}: lead {LEAD_NAMES[k]} is {what}", reason=problem[k])

    if config.highpass_hz:
        ecg = highpass(ecg, fs_in, config.highpass_hz)
    source_ecg = ecg
    ecg = resample(ecg, fs_in, config.fs)
    first = int(round((start - lo) * config.fs / fs_in))
    ecg = np.ascontiguousarray(ecg[first : first + config.num_samples])
    if ecg.shape[0] < config.num_samples:  # rounding at the very end of a record
        raise RecordError(f"{raw.path}: {raw.duration_s:.3f} s long, need {config.duration_s:g} s",
                          reason="too_short")

    # Find R peaks at the higher of the two rates and map them: a 500 Hz QRS places its peak better than a
    # 100 Hz one, and peak times then agree across output rates to rounding.
    if fs_in > config.fs:
        source = source_ecg[start - lo : start - lo + length]
        r_peaks = np.round(detect_r_peaks(source, fs_in) * (config.fs / fs_in)).astype(np.int32)
        r_peaks = np.unique(r_peaks[r_peaks < config.num_samples])
    else:
        r_peaks = detect_r_peaks(ecg, config.fs)
    if r_peaks.size < 2:
        raise RecordError(f"{raw.path}: fewer than two R peaks found", reason="no_r_peaks")
    hr = heart_rate_bpm(r_peaks, config.fs)
    if not HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1]:
        raise RecordError(f"{raw.path}: heart rate {hr:.0f} bpm outside {HR_RANGE_BPM} bpm", reason="heart_rate")
    return CanonicalRecord(ecg=ecg, fs=config.fs, r_peaks=r_peaks, hr_bpm=hr, repairs=tuple(repairs))
