"""LUDB (Kalyakulina et al. 2020): 12 leads, 500 Hz, 10 s, cardiologists' P/QRS/T marks on every lead.

Layout: `ludb.csv` (ID, Sex, Age, and one column per diagnosis group, multi-line cells), `data/<ID>.hea/.dat`
and one annotation file per lead (`data/<ID>.i`, `.ii`, ..., `.v6`). LUDB has one record per patient, so the
hashed split by ID is patient-disjoint.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import wfdb

from sediff_jax.data.sources import (
    LayoutError, RecordEntry, hashed_split, parse_age, parse_sex, read_csv, sentences_to_text,
)
from sediff_jax.leads import LEAD_NAMES

FS = 500.0
DIAGNOSIS_COLUMNS = (
    "Rhythms", "Electric axis of the heart", "Conduction abnormalities", "Extrasystolies", "Hypertrophies",
    "Cardiac pacing", "Ischemia", "Non-specific repolarization abnormalities", "Other states",
)
CSV_COLUMNS = ("ID", "Sex", "Age") + DIAGNOSIS_COLUMNS
WAVE_SYMBOLS = {"P": "p", "QRS": "N", "T": "t"}


@dataclasses.dataclass(frozen=True)
class WaveAnnotations:
    """Cardiologist marks of one lead: each wave an (n, 3) int array of (onset, peak, offset) samples."""

    p: np.ndarray
    qrs: np.ndarray
    t: np.ndarray


def read_ludb(source_dir: str, split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> list[RecordEntry]:
    """Entries for every row of `ludb.csv` whose record exists under `data/`."""
    table = os.path.join(source_dir, "ludb.csv")
    entries = []
    for line, row in enumerate(read_csv(table, CSV_COLUMNS), start=2):
        where = f"{table}:{line}"
        record = row["ID"].strip()
        if not record.isdigit():
            raise LayoutError(f"{where}: ID {record!r} is not a record number")
        path = os.path.join(source_dir, "data", record)
        if not os.path.exists(path + ".hea"):
            continue  # a partial copy of LUDB (the shared test data holds 160 of 200)
        diagnoses = [d for column in DIAGNOSIS_COLUMNS for d in (row[column] or "").splitlines()]
        codes = tuple(" ".join(d.split()) for d in diagnoses if d.strip())
        entries.append(
            RecordEntry(
                record_id=f"ludb/{int(record):03d}",
                patient_id=f"ludb/{int(record)}",
                path=path,
                fs=FS,
                split=hashed_split(record, split_fractions, salt="ludb"),
                age=parse_age(row["Age"], where),
                sex=parse_sex(row["Sex"], where),
                text=sentences_to_text(codes),
                original_text="\n".join(codes),
                codes=codes,
            )
        )
    return entries


def read_wave_annotations(record_path: str, lead: str) -> WaveAnnotations:
    """P/QRS/T (onset, peak, offset) of one lead ('I', 'aVR', 'V1', ...) from LUDB's per-lead files.

    Marks that are not a complete '(' peak ')' triple (cut by the record's edges) are dropped."""
    if lead not in LEAD_NAMES:
        raise ValueError(f"unknown lead name {lead!r}; expected one of {', '.join(LEAD_NAMES)}")
    extension = lead.lower()
    if not os.path.exists(f"{record_path}.{extension}"):
        raise LayoutError(f"{record_path}.{extension}: annotation file not found")
    ann = wfdb.rdann(record_path, extension)
    symbols, samples = list(ann.symbol), np.asarray(ann.sample)
    waves = {name: [] for name in WAVE_SYMBOLS}
    for k, symbol in enumerate(symbols):
        for name, peak_symbol in WAVE_SYMBOLS.items():
            if symbol == peak_symbol and 0 < k < len(symbols) - 1:
                if symbols[k - 1] == "(" and symbols[k + 1] == ")":
                    waves[name].append((samples[k - 1], samples[k], samples[k + 1]))
    as_array = lambda v: np.asarray(v, np.int64).reshape(-1, 3)  # noqa: E731
    return WaveAnnotations(p=as_array(waves["P"]), qrs=as_array(waves["QRS"]), t=as_array(waves["T"]))


def annotated_peak_times_ms(record_path: str, r_peaks: np.ndarray, fs: float = FS) -> dict[str, np.ndarray]:
    """Cardiologists' P, QRS ('R') and T peak times relative to the nearest R peak, per lead.

    Args:
      record_path: LUDB record path without extension.  r_peaks: (num_peaks,) sample indices at `fs`.
    Returns:
      {'P', 'R', 'T'}: (12,) ms, the median over the record's beats (marks farther than 0.6 RR from every R
      peak are ignored); NaN where a lead has no such mark (no P waves in atrial fibrillation).
    """
    out = {w: np.full(len(LEAD_NAMES), np.nan) for w in ("P", "R", "T")}
    for k, lead in enumerate(LEAD_NAMES):
        marks = read_wave_annotations(record_path, lead)
        for wave, arr in zip(("P", "R", "T"), (marks.p, marks.qrs, marks.t)):
            out[wave][k] = median_offset_from_r_ms(arr[:, 1], r_peaks, fs)
    return out


def median_offset_from_r_ms(peaks: np.ndarray, r_peaks: np.ndarray, fs: float) -> float:
    """Median of each peak's offset from its nearest R peak, ms; peaks farther than 0.6 RR are ignored.
    NaN when no peak is left."""
    peaks, r_peaks = np.asarray(peaks, np.float64), np.asarray(r_peaks, np.float64)
    if peaks.size == 0 or r_peaks.size < 2:
        return float("nan")
    rr = float(np.median(np.diff(r_peaks)))
    d = peaks[:, None] - r_peaks[None, :]
    nearest = d[np.arange(len(peaks)), np.argmin(np.abs(d), axis=1)]
    nearest = nearest[np.abs(nearest) < 0.6 * rr]
    return float(np.median(nearest) / fs * 1000.0) if nearest.size else float("nan")



def annotated_intervals_ms(record_path: str, fs: float = FS) -> dict[str, float]:
    """The cardiologists' PR, QRS and QT of a record, ms: per lead, the median over its beats of
    (QRS onset - P onset), (QRS offset - QRS onset) and (T offset - QRS onset); then the median over leads.

    The median over leads is the consensus boundary: LUDB's per-lead marks scatter by about +-10 ms from lead to
    lead, so the earliest onset / latest offset over 12 leads would widen every interval by that scatter.
    Returns keys pr, qrs, qt (NaN where no lead marks that wave, e.g. P in atrial fibrillation) and the number of
    leads with each."""
    per_lead = {"pr": [], "qrs": [], "qt": []}
    for lead in LEAD_NAMES:
        marks = read_wave_annotations(record_path, lead)
        pr, qrs, qt = [], [], []
        for onset, _, offset in marks.qrs:
            qrs.append(offset - onset)
            p = marks.p[(marks.p[:, 0] < onset) & (marks.p[:, 0] >= onset - 0.45 * fs)] if marks.p.size else marks.p
            if p.size:
                pr.append(onset - p[:, 0].max())
            t = marks.t[(marks.t[:, 2] > offset) & (marks.t[:, 2] <= offset + 0.6 * fs)] if marks.t.size else marks.t
            if t.size:
                qt.append(t[:, 2].min() - onset)
        for name, values in zip(per_lead, (pr, qrs, qt)):
            if values:
                per_lead[name].append(float(np.median(values)) / fs * 1000.0)
    out = {k: float(np.median(v)) if v else float("nan") for k, v in per_lead.items()}
    out.update({f"{k}_leads": len(v) for k, v in per_lead.items()})
    return out
