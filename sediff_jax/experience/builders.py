"""Profile corpora from dataset layouts: PTB-XL and LUDB (statement views, features measured from the signal)
and MIMIC-IV (hospital-stay views from `hosp/`, features from MIMIC-IV-ECG's machine measurements).

MIMIC-IV linking: an ECG belongs to the stay of its patient (`subject_id`) whose [admittime - link_hours_before,
dischtime] contains its `ecg_time` (the latest such admission when stays overlap); an ECG taken outside every
stay gets empty views and is counted in the build report. Codes are namespaced so the views never collide:
diagnoses 'icd9:4019' / 'icd10:I10', procedures 'icd9p:3722' / 'icd10p:02HV33Z', medications the drug name in
lower case ('metoprolol tartrate'). `d_icd_diagnoses` / `d_icd_procedures`, where present, give descriptions.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from sediff_jax.data.builder import file_results, worker_pool
from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.signal.delineation import DelineationError, delineate
from sediff_jax.signal.measurement import lead_amplitudes
from sediff_jax.data.ludb import read_ludb
from sediff_jax.data.mimic import read_mimic
from sediff_jax.data.ptbxl import read_ptbxl, read_statements
from sediff_jax.data.sources import LayoutError, RecordEntry, iter_csv, read_csv
from sediff_jax.data.wfdb_reader import RecordError
from sediff_jax.experience.profiles import (
    FEATURE_NAMES, HOSPITAL_VIEWS, STATEMENT_VIEWS, Profile, ProfileCorpus,
)

# LUDB's diagnosis columns grouped into PTB-XL's statement views.
LUDB_VIEW_COLUMNS = {
    "rhythm": ("Rhythms", "Extrasystolies", "Cardiac pacing"),
    "form": ("Electric axis of the heart", "Hypertrophies", "Non-specific repolarization abnormalities"),
    "diagnostic": ("Conduction abnormalities", "Ischemia", "Other states"),
}
ADMISSION_COLUMNS = ("subject_id", "hadm_id", "admittime", "dischtime")
DIAGNOSIS_COLUMNS = ("subject_id", "hadm_id", "icd_code", "icd_version")
PROCEDURE_COLUMNS = ("subject_id", "hadm_id", "icd_code", "icd_version")
PRESCRIPTION_COLUMNS = ("subject_id", "hadm_id", "drug")
DICTIONARY_COLUMNS = ("icd_code", "icd_version", "long_title")


@dataclasses.dataclass
class BuildReport:
    """What a profile build did: profiles written, features unmeasurable (reason -> count, first examples),
    MIMIC ECGs with no hospital stay."""

    profiles: int = 0
    unmeasured: dict = dataclasses.field(default_factory=dict)
    examples: list = dataclasses.field(default_factory=list)
    unlinked_ecgs: int = 0

    def note_unmeasured(self, record_id: str, reason: str, message: str) -> None:
        self.unmeasured[reason] = self.unmeasured.get(reason, 0) + 1
        if len(self.examples) < 20:
            self.examples.append((record_id, reason, message))


def features_from_delineation(ecg: np.ndarray, fs: float, where: str = "") -> dict[str, float]:
    """FEATURE_NAMES measured on a canonical (time, 12) mV record; raises DelineationError."""
    intervals = delineate(ecg, fs, where=where).intervals()
    return {name: float(intervals[name]) for name in FEATURE_NAMES}


def features_from_machine(measurements: dict) -> dict[str, float]:
    """FEATURE_NAMES from MIMIC-IV-ECG machine measurements (ms, degrees; NaN where missing)."""
    get = lambda k: float(measurements.get(k, math.nan))  # noqa: E731
    rr, qrs_on = get("rr_interval"), get("qrs_onset")
    qt = get("t_end") - qrs_on
    return {"hr_bpm": 60000.0 / rr if rr > 0 else math.nan, "pr_ms": qrs_on - get("p_onset"),
            "qrs_ms": get("qrs_end") - qrs_on, "qt_ms": qt,
            "qtc_bazett_ms": qt / math.sqrt(rr / 1000.0) if rr > 0 else math.nan, "qrs_axis_deg": get("qrs_axis")}


def measure_entries(entries: Sequence[RecordEntry], num_workers: int = 1,
                    report: BuildReport | None = None) -> dict[str, dict[str, float]]:
    """record_id -> measured features, for records that read and delineate; failures go to `report`."""
    report = report if report is not None else BuildReport()
    out = {}
    pool = worker_pool(num_workers)
    try:
        by_fs = {}
        for e in entries:
            by_fs.setdefault(e.fs, []).append(e)
        for fs, group in by_fs.items():
            config = CanonicalConfig(fs=fs, duration_s=10.0)
            for entry, result in file_results(group, config, pool):
                if isinstance(result, RecordError):
                    report.note_unmeasured(entry.record_id, result.reason, str(result))
                    continue
                try:
                    out[entry.record_id] = features_from_delineation(result.ecg, result.fs, entry.record_id)
                except DelineationError as e:
                    report.note_unmeasured(entry.record_id, "delineation", str(e))
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def measure_amplitudes(entries: Sequence[RecordEntry], fs: float, num_workers: int = 1,
                       report: BuildReport | None = None) -> dict[str, np.ndarray]:
    """record_id -> (12,) float32 lead amplitudes (`signal.lead_amplitudes`, mV) of each record brought to
    canonical form at `fs` Hz (10 s, resampled); a lead at 0 mV (flat) is NaN. Unreadable records go to
    `report` and get none."""
    report = report if report is not None else BuildReport()
    out = {}
    pool = worker_pool(num_workers)
    try:
        for entry, result in file_results(entries, CanonicalConfig(fs=fs, duration_s=10.0), pool):
            if isinstance(result, RecordError):
                report.note_unmeasured(entry.record_id, result.reason, str(result))
                continue
            amplitudes = lead_amplitudes(result.ecg)
            out[entry.record_id] = np.where(amplitudes > 0, amplitudes, np.nan).astype(np.float32)
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def dataset_entries_for_amplitudes(dataset: str, source_dir: str, fs: float) -> list[RecordEntry]:
    """The records of `dataset` to measure amplitudes on at `fs` Hz: PTB-XL's 100 Hz files up to 100 Hz, else its
    500 Hz ones; LUDB's and MIMIC-IV-ECG's 500 Hz records (resampled by the canonical form)."""
    if dataset == "ptbxl":
        return read_ptbxl(source_dir, fs=100 if fs <= 100 else 500)
    if dataset == "ludb":
        return read_ludb(source_dir)
    if dataset == "mimic":
        return read_mimic(source_dir)
    raise ValueError(f"dataset={dataset!r}; expected ptbxl, ludb or mimic")


def add_amplitudes(corpus: ProfileCorpus, entries: Sequence[RecordEntry], fs: float, num_workers: int = 1,
                   report: BuildReport | None = None) -> ProfileCorpus:
    """`corpus` with the lead amplitudes of its records among `entries`, measured at `fs` Hz."""
    rows = corpus.row_of()
    wanted = [e for e in entries if e.record_id in rows]
    return corpus.with_amplitudes(measure_amplitudes(wanted, fs, num_workers, report), fs)


def _profiles(entries, codes_of, features, descriptions, views, source) -> ProfileCorpus:
    nan = {f: math.nan for f in FEATURE_NAMES}
    profiles = [Profile(e.record_id, e.patient_id, e.split, e.age, e.sex, codes_of(e),
                        features.get(e.record_id, nan)) for e in entries]
    return ProfileCorpus.from_profiles(profiles, views, descriptions, source)


def ptbxl_profiles(source_dir: str, fs: int = 500, measure: bool = True, num_workers: int = 1,
                   report: BuildReport | None = None) -> ProfileCorpus:
    """PTB-XL: each scp code goes to every statement view its `scp_statements.csv` row flags (diagnostic, form,
    rhythm); descriptions are the statements' English texts; features measured on the `fs` Hz records."""
    entries = read_ptbxl(source_dir, fs=fs)
    statements = read_statements(os.path.join(source_dir, "scp_statements.csv"))
    flagged = lambda code, view: statements[code].get(view, "").strip() in {"1", "1.0"}  # noqa: E731
    codes_of = lambda e: {v: tuple(c for c in e.codes if flagged(c, v)) for v in STATEMENT_VIEWS}  # noqa: E731
    features = measure_entries(entries, num_workers, report) if measure else {}
    descriptions = {c: row["description"].strip() for c, row in statements.items()}
    corpus = _profiles(entries, codes_of, features, descriptions, STATEMENT_VIEWS, f"ptbxl:{source_dir}")
    if report is not None:
        report.profiles = len(corpus)
    return corpus


def ludb_profiles(source_dir: str, measure: bool = True, num_workers: int = 1,
                  report: BuildReport | None = None) -> ProfileCorpus:
    """LUDB: the cardiologists' diagnoses (`ludb.csv`), grouped into views by `LUDB_VIEW_COLUMNS`."""
    entries = {e.record_id: e for e in read_ludb(source_dir)}
    table = os.path.join(source_dir, "ludb.csv")
    by_id = {}
    for row in read_csv(table, ("ID",) + tuple(c for cols in LUDB_VIEW_COLUMNS.values() for c in cols)):
        record_id = f"ludb/{int(row['ID']):03d}"
        by_id[record_id] = {view: tuple(" ".join(d.split()) for c in cols for d in (row[c] or "").splitlines()
                                        if d.strip())
                            for view, cols in LUDB_VIEW_COLUMNS.items()}
    features = measure_entries(list(entries.values()), num_workers, report) if measure else {}
    corpus = _profiles(list(entries.values()), lambda e: by_id[e.record_id], features, {},
                       STATEMENT_VIEWS, f"ludb:{source_dir}")
    if report is not None:
        report.profiles = len(corpus)
    return corpus


def _hosp_file(hosp_dir: str, name: str, required: bool = True) -> str | None:
    for candidate in (f"{name}.csv.gz", f"{name}.csv"):
        path = os.path.join(hosp_dir, candidate)
        if os.path.exists(path):
            return path
    if required:
        raise LayoutError(f"{hosp_dir}: neither {name}.csv.gz nor {name}.csv found (MIMIC-IV hosp module)")
    return None


def _time(text: str, where: str) -> np.datetime64:
    try:
        return np.datetime64(text.strip().replace(" ", "T"), "s")
    except ValueError:
        raise LayoutError(f"{where}: unreadable time {text!r}") from None


def link_stays(entries: Sequence[RecordEntry], ecg_times: dict[str, str], admissions_csv: str,
               link_hours_before: float = 24.0) -> dict[str, str]:
    """record_id -> hadm_id for the ECGs taken during a stay (see the module docstring)."""
    subjects = {e.patient_id.split("/", 1)[1] for e in entries}
    stays: dict[str, list] = {}
    for line, row in enumerate(iter_csv(admissions_csv, ADMISSION_COLUMNS), start=2):
        subject = row["subject_id"].strip()
        if subject in subjects:
            where = f"{admissions_csv}:{line}"
            stays.setdefault(subject, []).append(
                (_time(row["admittime"], where), _time(row["dischtime"], where), row["hadm_id"].strip()))
    before = np.timedelta64(int(link_hours_before * 3600), "s")
    out = {}
    for e in entries:
        t = _time(ecg_times[e.record_id], e.record_id)
        matches = [s for s in stays.get(e.patient_id.split("/", 1)[1], ()) if s[0] - before <= t <= s[1]]
        if matches:
            out[e.record_id] = max(matches)[2]
    return out


def mimic_profiles(ecg_dir: str, hosp_dir: str, link_hours_before: float = 24.0,
                   report: BuildReport | None = None) -> ProfileCorpus:
    """MIMIC-IV: ECGs of MIMIC-IV-ECG (`ecg_dir`) with the diagnosis / medication / procedure sets of the
    MIMIC-IV (`hosp_dir`) stay each belongs to; demographics from `hosp/patients`."""
    report = report if report is not None else BuildReport()
    entries = read_mimic(ecg_dir, patients_csv=_hosp_file(hosp_dir, "patients", required=False))
    record_list = os.path.join(ecg_dir, "record_list.csv")
    ecg_times = {f"mimic/{row['study_id'].strip()}": row["ecg_time"] for row in iter_csv(record_list, ("study_id", "ecg_time"))}
    stay_of = link_stays(entries, ecg_times, _hosp_file(hosp_dir, "admissions"), link_hours_before)
    report.unlinked_ecgs = len(entries) - len(stay_of)
    wanted = set(stay_of.values())
    codes: dict[str, dict[str, set]] = {h: {v: set() for v in HOSPITAL_VIEWS} for h in wanted}

    def collect(name, columns, view, code_of):
        for row in iter_csv(_hosp_file(hosp_dir, name), columns):
            hadm = row["hadm_id"].strip()
            if hadm in codes:
                code = code_of(row)
                if code:
                    codes[hadm][view].add(code)

    icd = lambda suffix: lambda r: f"icd{r['icd_version'].strip()}{suffix}:{r['icd_code'].strip()}"  # noqa: E731
    collect("diagnoses_icd", DIAGNOSIS_COLUMNS, "diagnosis", icd(""))
    collect("procedures_icd", PROCEDURE_COLUMNS, "procedure", icd("p"))
    collect("prescriptions", PRESCRIPTION_COLUMNS, "medication", lambda r: " ".join(r["drug"].lower().split()))
    descriptions = {}
    for name, suffix in (("d_icd_diagnoses", ""), ("d_icd_procedures", "p")):
        path = _hosp_file(hosp_dir, name, required=False)
        if path:
            for row in iter_csv(path, DICTIONARY_COLUMNS):
                descriptions[icd(suffix)(row)] = row["long_title"].strip()
    used = {c for h in codes.values() for v in h.values() for c in v}
    descriptions = {c: d for c, d in descriptions.items() if c in used}
    empty = {v: () for v in HOSPITAL_VIEWS}
    codes_of = lambda e: ({v: tuple(sorted(s)) for v, s in codes[stay_of[e.record_id]].items()}  # noqa: E731
                          if e.record_id in stay_of else empty)
    features = {e.record_id: features_from_machine(e.measurements) for e in entries}
    corpus = _profiles(entries, codes_of, features, descriptions, HOSPITAL_VIEWS, f"mimic:{ecg_dir}+{hosp_dir}")
    report.profiles = len(corpus)
    return corpus
