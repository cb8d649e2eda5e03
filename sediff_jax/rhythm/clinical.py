"""The clinical rhythm model: which RR process a report's rhythm calls for, and the beats it gives.

A report's rhythm class (`rhythm_class`, from the keyword rules of `sediff_jax.data.classes`) chooses the RR
process: sinus rhythm with heart-rate variability that falls with age, sinus arrhythmia, the broadband
irregularity of atrial fibrillation, regular flutter / SVT / VT, one premature beat for PAC / PVC, every second
(bigeminy) or third (trigeminy) beat premature for a bigeminal or trigeminal pattern. The requested
heart rate sets its mean, and McSharry's phase oscillator, integrated with diffrax, places the beats
(`sediff_jax.simulator.beat_timing`). Simulator knowledge with a clinical vocabulary: it sits above the data layer
(for the report's classes) and the simulator, below generation, which turns its beats into a `RhythmPlan`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np

from sediff_jax.data.classes import sediff_classes
from sediff_jax.simulator.beat_timing import simulated_beats
from sediff_jax.simulator.params import default_rhythm

SINUS_LF_HF = 0.5


@dataclasses.dataclass(frozen=True)
class RhythmClass:
    """default_hr: bpm when the prompt gives none.  rr_cv: RR standard deviation / mean (None: sinus, by age).
    irregularity: broadband share of the RR variance (1 = atrial fibrillation).  lf_hf: LF/HF power ratio.
    ectopic: 'atrial' or 'ventricular' premature beats (the report may name the other origin: `ectopic_origin`).
    ectopic_every: 0 for one premature beat, k for every k-th beat (2 bigeminy, 3 trigeminy)."""

    default_hr: float
    rr_cv: float | None = None
    irregularity: float = 0.0
    lf_hf: float = SINUS_LF_HF
    ectopic: str | None = None
    ectopic_every: int = 0


# The first class a report names wins, in this order (specific rhythms before sinus).
RHYTHM_CLASSES: dict[str, RhythmClass] = {
    "atrial_fibrillation": RhythmClass(default_hr=90.0, rr_cv=0.19, irregularity=1.0),
    "atrial_flutter": RhythmClass(default_hr=150.0, rr_cv=0.01),  # 2:1 conduction, regular
    "ventricular_tachycardia": RhythmClass(default_hr=160.0, rr_cv=0.02),
    "supraventricular_tachycardia": RhythmClass(default_hr=170.0, rr_cv=0.01),
    # PTB-XL's bigeminal / trigeminal patterns (training split: 64 / 15 records): RR alternates short and long
    # (sign-alternation of successive RR differences: median 1.0 / 0.67), RR CV 0.30 / 0.26, short / long RR 0.53 /
    # 0.57; most name a ventricular premature complex, so a pattern of unknown origin is drawn ventricular.
    "bigeminy": RhythmClass(default_hr=70.0, ectopic="ventricular", ectopic_every=2),
    "trigeminy": RhythmClass(default_hr=70.0, ectopic="ventricular", ectopic_every=3),
    "sinus_arrhythmia": RhythmClass(default_hr=70.0, rr_cv=0.09, lf_hf=0.2),
    "premature_ventricular_contraction": RhythmClass(default_hr=70.0, ectopic="ventricular"),
    "premature_atrial_contraction": RhythmClass(default_hr=70.0, ectopic="atrial"),
    "bradycardia": RhythmClass(default_hr=50.0),
    "tachycardia": RhythmClass(default_hr=110.0),
    "sinus": RhythmClass(default_hr=70.0),
}
_SINUS_ARRHYTHMIA = re.compile(r"sinus arrhythmi|respiratory (sinus )?arrhythmi")
_GROUPED_BEATS = {"bigeminy": re.compile(r"bigemin"), "trigeminy": re.compile(r"trigemin")}
COUPLING = 0.65  # a premature beat comes this fraction of the RR interval after the beat before it


def rhythm_class(text: str) -> str:
    """The RHYTHM_CLASSES name of a report ('sinus' when it names no rhythm)."""
    lower = text.lower()
    if _SINUS_ARRHYTHMIA.search(lower):
        return "sinus_arrhythmia"
    named = set(sediff_classes(text)) | {name for name, pattern in _GROUPED_BEATS.items() if pattern.search(lower)}
    return next((name for name in RHYTHM_CLASSES if name in named), "sinus")


def ectopic_origin(text: str, default: str) -> str:
    """'atrial' or 'ventricular': the premature beats' origin a report names (atrial only when it names atrial
    and no ventricular ectopy), else `default`."""
    named = set(sediff_classes(text))
    atrial, ventricular = ("premature_atrial_contraction" in named), ("premature_ventricular_contraction" in named)
    if atrial != ventricular:
        return "atrial" if atrial else "ventricular"
    return default


def sinus_rr_cv(age: float | None) -> float:
    """Short-term RR variability of sinus rhythm over 10 s: 0.035 at <= 30 years, falling to 0.02 at >= 80
    (heart-rate variability declines with age; PTB-XL fold-10 sinus records: median 0.031)."""
    if age is None:
        return 0.03
    return float(np.interp(age, [30.0, 80.0], [0.035, 0.02]))


def _ectopic(peaks: np.ndarray, kind: str, rng: np.random.Generator, every: int = 0) -> np.ndarray:
    """Premature beats at `COUPLING` of the RR: one near the middle (every=0), or every `every`-th beat from a
    random start; a ventricular one keeps the sinus beat after it in place (full compensatory pause), an atrial
    one resets the sinus node (the beats after it shift earlier)."""
    if peaks.size < 4:
        return peaks
    if every:
        targets = range(int(rng.integers(1, every + 1)), peaks.size, every)
    else:
        targets = [int(rng.integers(peaks.size // 2 - 1, peaks.size // 2 + 1))]
    out = peaks.copy()
    for k in targets:
        early = out[k - 1] + COUPLING * (out[k] - out[k - 1])
        if kind == "ventricular":
            out[k] = early
        else:
            out[k:] -= out[k] - early
    return out


def clinical_beats(text: str, hr: float | None, age: float | None, key: jax.Array, duration_s: float
                   ) -> tuple[np.ndarray, str]:
    """(R-peak times in s, ascending, inside [0, duration_s); the rhythm class) of a report's rhythm at `hr` bpm
    (the class default when None), its sinus variability set by `age` (years, or None)."""
    name = rhythm_class(text)
    spec = RHYTHM_CLASSES[name]
    hr = float(hr) if hr is not None else spec.default_hr
    cv = spec.rr_cv if spec.rr_cv is not None else sinus_rr_cv(age)
    key_rr, key_phase, key_ectopic = jax.random.split(key, 3)
    initial = float(jax.random.uniform(key_phase, (), minval=-2.0 * math.pi, maxval=0.0))
    rhythm = default_rhythm(hr_mean=hr, hr_std=cv * hr, lf_hf_ratio=spec.lf_hf, irregularity=spec.irregularity,
                            initial_phase=initial)
    # Simulate past the end, then set the mean RR to the requested rate exactly (with a strongly irregular
    # tachogram more beats fall in its short stretches, so the beats' mean RR runs below 60 / HR).
    peaks = simulated_beats(rhythm, key_rr, duration_s + 5.0)
    if spec.ectopic is not None:
        seed = int(jax.random.randint(key_ectopic, (), 0, 2**31 - 1))
        kind = ectopic_origin(text, spec.ectopic) if spec.ectopic_every else spec.ectopic
        peaks = _ectopic(peaks, kind, np.random.default_rng(seed), spec.ectopic_every)
    for _ in range(4):  # (which beats fall inside the record depends on the scale: a few rounds settle it)
        inside = np.diff(peaks[peaks < duration_s])
        if inside.size:
            peaks = peaks[0] + (peaks - peaks[0]) * (60.0 / hr) / inside.mean()
    return peaks[peaks < duration_s], name
