"""The rhythm of each generated ECG: where its R peaks fall, before any morphology is drawn.

Three sources, one result (`RhythmPlan`: R-peak times in seconds, where they came from):
  * the prompt, through the simulator (`simulated_rhythm`): the report's rhythm class (from
    `sediff_jax.data.classes`) chooses the RR process (sinus with heart-rate variability that falls with age,
    sinus arrhythmia, the broadband irregularity of atrial fibrillation, regular flutter / SVT / VT, one premature
    beat for PAC / PVC), the requested heart rate its mean, and McSharry's phase oscillator, integrated with
    diffrax, places the beats (`sediff_jax.simulator.beat_timing`). Seeded like everything else.
  * an RR list (`rhythm_from_rr`, `--rr_ms`, the prompts file's `rr_ms` column).
  * a WFDB record's R peaks (`rhythm_from_record`, `--rhythm_from`): "this patient's rhythm".
The denoiser is then told the cardiac phase these peaks define (`sediff_jax.signal.phase`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import numpy as np

from sediff_jax.data.canonical import CanonicalConfig, canonicalize
from sediff_jax.data.classes import sediff_classes
from sediff_jax.data.wfdb_reader import RecordError, read_record
from sediff_jax.generation.prompts import RR_RANGE_MS, Prompt, PromptError
from sediff_jax.simulator.beat_timing import simulated_beats
from sediff_jax.simulator.params import default_rhythm

FIRST_R_S = 0.3  # where an RR list's first beat falls
SINUS_LF_HF = 0.5


class RhythmError(PromptError):
    """A rhythm that cannot be generated (too few beats, RR out of range, more beats than fit); names the input."""


@dataclasses.dataclass(frozen=True)
class RhythmPlan:
    """r_peaks_s: R-peak times, s, ascending, inside the record.  source: 'simulator', 'rr_ms' or
    'record:<path>'.  rhythm: the rhythm class the simulator used ('sinus', 'atrial_fibrillation', ...) or
    'given'."""

    r_peaks_s: tuple[float, ...]
    source: str
    rhythm: str

    @property
    def rr_ms(self) -> tuple[float, ...]:
        return tuple(float(x) for x in np.diff(self.r_peaks_s) * 1000.0)

    @property
    def hr_bpm(self) -> float:
        return 60000.0 / float(np.mean(self.rr_ms))

    def r_peak_samples(self, fs: float) -> np.ndarray:
        return np.asarray(self.r_peaks_s, np.float64) * fs

    def as_dict(self) -> dict:
        return {"source": self.source, "rhythm": self.rhythm, "r_peaks_s": [round(t, 4) for t in self.r_peaks_s],
                "rr_ms": [round(x, 1) for x in self.rr_ms]}


@dataclasses.dataclass(frozen=True)
class RhythmClass:
    """default_hr: bpm when the prompt gives none.  rr_cv: RR standard deviation / mean (None: sinus, by age).
    irregularity: broadband share of the RR variance (1 = atrial fibrillation).  lf_hf: LF/HF power ratio.
    ectopic: 'atrial' or 'ventricular' for one premature beat."""

    default_hr: float
    rr_cv: float | None = None
    irregularity: float = 0.0
    lf_hf: float = SINUS_LF_HF
    ectopic: str | None = None


# The first class a report names wins, in this order (specific rhythms before sinus).
RHYTHM_CLASSES: dict[str, RhythmClass] = {
    "atrial_fibrillation": RhythmClass(default_hr=90.0, rr_cv=0.19, irregularity=1.0),
    "atrial_flutter": RhythmClass(default_hr=150.0, rr_cv=0.01),  # 2:1 conduction, regular
    "ventricular_tachycardia": RhythmClass(default_hr=160.0, rr_cv=0.02),
    "supraventricular_tachycardia": RhythmClass(default_hr=170.0, rr_cv=0.01),
    "sinus_arrhythmia": RhythmClass(default_hr=70.0, rr_cv=0.09, lf_hf=0.2),
    "premature_ventricular_contraction": RhythmClass(default_hr=70.0, ectopic="ventricular"),
    "premature_atrial_contraction": RhythmClass(default_hr=70.0, ectopic="atrial"),
    "bradycardia": RhythmClass(default_hr=50.0),
    "tachycardia": RhythmClass(default_hr=110.0),
    "sinus": RhythmClass(default_hr=70.0),
}
_SINUS_ARRHYTHMIA = re.compile(r"sinus arrhythmi|respiratory (sinus )?arrhythmi")


def rhythm_class(text: str) -> str:
    """The RHYTHM_CLASSES name of a report ('sinus' when it names no rhythm)."""
    if _SINUS_ARRHYTHMIA.search(text.lower()):
        return "sinus_arrhythmia"
    named = set(sediff_classes(text))
    return next((name for name in RHYTHM_CLASSES if name in named), "sinus")


def sinus_rr_cv(age: float | None) -> float:
    """Short-term RR variability of sinus rhythm over 10 s: 0.035 at <= 30 years, falling to 0.02 at >= 80
    (heart-rate variability declines with age; PTB-XL fold-10 sinus records: median 0.031)."""
    if age is None:
        return 0.03
    return float(np.interp(age, [30.0, 80.0], [0.035, 0.02]))


def _check_peaks(peaks: np.ndarray, duration_s: float, where: str) -> None:
    if peaks.size < 2:
        raise RhythmError(f"{where}: a rhythm needs at least 2 beats, got {peaks.size}")
    rr_ms = np.diff(peaks) * 1000.0
    bad = np.nonzero((rr_ms < RR_RANGE_MS[0]) | (rr_ms > RR_RANGE_MS[1]))[0]
    if bad.size:
        raise RhythmError(f"{where}: RR interval {bad[0] + 1} is {rr_ms[bad[0]]:.0f} ms, outside "
                          f"{RR_RANGE_MS[0]:g}-{RR_RANGE_MS[1]:g} ms")
    if peaks[0] < 0 or peaks[-1] >= duration_s:
        raise RhythmError(f"{where}: {peaks.size} beats span {peaks[0]:.2f}-{peaks[-1]:.2f} s, more than fit the "
                          f"{duration_s:g} s record")


def rhythm_from_rr(rr_ms: Sequence[float], duration_s: float, where: str = "--rr_ms") -> RhythmPlan:
    """R peaks at FIRST_R_S, then each RR interval (ms) in turn; refused by name when out of range or too long."""
    rr = np.asarray(list(rr_ms), np.float64)
    if rr.ndim != 1 or not np.all(np.isfinite(rr)):
        raise RhythmError(f"{where}: RR intervals must be finite numbers (ms), got {list(rr_ms)!r}")
    peaks = FIRST_R_S + np.concatenate([[0.0], np.cumsum(rr) / 1000.0])
    _check_peaks(peaks, duration_s, where)
    return RhythmPlan(tuple(float(t) for t in peaks), "rr_ms", "given")


def rhythm_from_record(path: str, duration_s: float, offset_s: float = 0.0) -> RhythmPlan:
    """The R peaks of a WFDB record's first `duration_s` seconds (after `offset_s`), found with the data layer's
    detector; a record we cannot read or without a usable rhythm is refused naming the file."""
    where = f"--rhythm_from={path}"
    try:
        raw = read_record(path)
        record = canonicalize(raw, CanonicalConfig(fs=raw.fs, duration_s=min(duration_s, raw.duration_s - offset_s),
                                                   offset_s=offset_s))
    except (RecordError, ValueError, OSError) as e:
        raise RhythmError(f"{where}: {e}") from None
    available = raw.duration_s - offset_s
    if available < duration_s - 1e-6:
        raise RhythmError(f"{where}: the record has {available:.2f} s of signal, the ECG is {duration_s:g} s; its "
                          "rhythm would run out and the rest be made up. Use a record at least as long as the ECG")
    plan = rhythm_from_peaks(record.r_peaks, record.fs, duration_s, f"record:{path}", where)
    peaks = np.asarray(plan.r_peaks_s)
    longest = max(float(np.max(np.diff(peaks))), 1.0)
    for gap, edge in ((peaks[0], "start before its first beat"), (duration_s - peaks[-1], "end after its last beat")):
        if gap > 1.5 * longest:
            raise RhythmError(f"{where}: the record has no detected beats for {gap:.2f} s at its {edge.split()[0]} "
                              f"(beats at {peaks[0]:.2f}-{peaks[-1]:.2f} s of {duration_s:g} s, longest RR "
                              f"{1000 * float(np.max(np.diff(peaks))):.0f} ms); its rhythm cannot be followed there")
    return plan


def rhythm_from_peaks(r_peaks: Sequence[int], fs: float, duration_s: float, source: str, where: str) -> RhythmPlan:
    """The rhythm of R peaks at samples `r_peaks` of a record at `fs` Hz (e.g. a real record's, for a paired
    evaluation that gives the model its beat timing); refused by name like `rhythm_from_rr`."""
    peaks = np.asarray(r_peaks, np.float64) / float(fs)
    _check_peaks(peaks, duration_s, where)
    return RhythmPlan(tuple(float(t) for t in peaks), source, "given")


def _ectopic(peaks: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One premature beat near the middle: coupling 65 % of the RR; a ventricular one keeps the sinus beat after
    it in place (full compensatory pause), an atrial one resets the sinus node (the rest shift earlier)."""
    if peaks.size < 4:
        return peaks
    k = int(rng.integers(peaks.size // 2 - 1, peaks.size // 2 + 1))
    rr = peaks[k] - peaks[k - 1]
    early = peaks[k - 1] + 0.65 * rr
    out = peaks.copy()
    if kind == "ventricular":
        out[k] = early
    else:
        out[k:] -= peaks[k] - early
    return out


def simulated_rhythm(prompt: Prompt, key: jax.Array, duration_s: float) -> RhythmPlan:
    """The beats of the prompt's rhythm class at its heart rate (the class default when none is given)."""
    name = rhythm_class(prompt.text)
    spec = RHYTHM_CLASSES[name]
    hr = float(prompt.hr) if prompt.hr is not None else spec.default_hr
    cv = spec.rr_cv if spec.rr_cv is not None else sinus_rr_cv(prompt.age)
    key_rr, key_phase, key_ectopic = jax.random.split(key, 3)
    initial = float(jax.random.uniform(key_phase, (), minval=-2.0 * math.pi, maxval=0.0))
    rhythm = default_rhythm(hr_mean=hr, hr_std=cv * hr, lf_hf_ratio=spec.lf_hf, irregularity=spec.irregularity,
                            initial_phase=initial)
    # Simulate past the end, then set the mean RR to the requested rate exactly (with a strongly irregular
    # tachogram more beats fall in its short stretches, so the beats' mean RR runs below 60 / HR).
    peaks = simulated_beats(rhythm, key_rr, duration_s + 5.0)
    if spec.ectopic is not None:
        seed = int(jax.random.randint(key_ectopic, (), 0, 2**31 - 1))
        peaks = _ectopic(peaks, spec.ectopic, np.random.default_rng(seed))
    for _ in range(4):  # (which beats fall inside the record depends on the scale: a few rounds settle it)
        inside = np.diff(peaks[peaks < duration_s])
        if inside.size:
            peaks = peaks[0] + (peaks - peaks[0]) * (60.0 / hr) / inside.mean()
    peaks = peaks[peaks < duration_s]
    return RhythmPlan(tuple(float(t) for t in peaks), "simulator", name)
