"""The rhythm of each generated ECG: where its R peaks fall, before any morphology is drawn.

Three sources, one result (`RhythmPlan`: R-peak times in seconds, where they came from):
  * the prompt, through the clinical rhythm model (`simulated_rhythm`, `sediff_jax.rhythm`): the report's rhythm
    class chooses the RR process, the requested heart rate its mean, and the simulator's phase oscillator places
    the beats. Seeded like everything else.
  * an RR list (`rhythm_from_rr`, `--rr_ms`, the prompts file's `rr_ms` column).
  * a WFDB record's R peaks (`rhythm_from_record`, `--rhythm_from`): "this patient's rhythm".
The denoiser is then told the cardiac phase these peaks define (`sediff_jax.signal.phase`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from sediff_jax.data.canonical import CanonicalConfig, canonicalize
from sediff_jax.data.wfdb_reader import RecordError, read_record
from sediff_jax.generation.prompts import RR_RANGE_MS, Prompt, PromptError
from sediff_jax.rhythm.clinical import clinical_beats

FIRST_R_S = 0.3  # where an RR list's first beat falls


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


def simulated_rhythm(prompt: Prompt, key: jax.Array, duration_s: float) -> RhythmPlan:
    """The beats of the prompt's rhythm class at its heart rate (the class default when none is given; the
    clinical rhythm model, `sediff_jax.rhythm`)."""
    peaks, name = clinical_beats(prompt.text, prompt.hr, prompt.age, key, duration_s)
    return RhythmPlan(tuple(float(t) for t in peaks), "simulator", name)
