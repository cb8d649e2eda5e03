"""MIMIC-IV-ECG (Gow et al. 2023): `record_list.csv`, `machine_measurements.csv`, `files/pXXXX/pXXXXXXXX/sXXXXXXXX/`.

Waveforms are 10 s, 500 Hz, 12 leads (some exports list aVF before aVL; canonicalisation reorders by name).
Text is the machine report (`report_0` .. `report_17`). Splits are patient-disjoint: a stable hash of
`subject_id` picks the split, so every study of a patient lands in one split. Age and sex are not part of
MIMIC-IV-ECG; pass MIMIC-IV's `hosp/patients.csv` to get them (age = anchor_age + ECG year - anchor_year).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from sediff_jax.data.sources import (
    MEASUREMENT_NAMES, LayoutError, RecordEntry, hashed_split, parse_age, parse_sex, read_csv, sentences_to_text,
)

FS = 500.0
NUM_REPORT_COLUMNS = 18
RECORD_LIST_COLUMNS = ("subject_id", "study_id", "ecg_time", "path")
MEASUREMENT_COLUMNS = ("subject_id", "study_id") + tuple(f"report_{i}" for i in range(NUM_REPORT_COLUMNS))
PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year")
# MIMIC-IV-ECG writes 29999 for a measurement the machine could not make.
_MISSING_MEASUREMENT = 29999.0


def _float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return math.nan if value >= _MISSING_MEASUREMENT else value


def read_mimic(
    source_dir: str,
    patients_csv: str | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> list[RecordEntry]:
    """Entries for every study in `record_list.csv`, with reports and measurements joined by `study_id`."""
    record_list = os.path.join(source_dir, "record_list.csv")
    measurements_csv = os.path.join(source_dir, "machine_measurements.csv")
    records = read_csv(record_list, RECORD_LIST_COLUMNS)
    machine = {row["study_id"].strip(): row for row in read_csv(measurements_csv, MEASUREMENT_COLUMNS)}
    patients = {}
    if patients_csv:
        patients = {row["subject_id"].strip(): row for row in read_csv(patients_csv, PATIENT_COLUMNS)}
    entries = []
    for line, row in enumerate(records, start=2):
        where = f"{record_list}:{line}"
        subject, study = row["subject_id"].strip(), row["study_id"].strip()
        if not subject or not study or not row["path"].strip():
            raise LayoutError(f"{where}: empty subject_id, study_id or path")
        report = machine.get(study, {})
        sentences = [report.get(f"report_{i}", "") or "" for i in range(NUM_REPORT_COLUMNS)]
        text = sentences_to_text(sentences)
        age, sex = math.nan, "unknown"
        if subject in patients:
            patient = patients[subject]
            sex = parse_sex(patient["gender"], f"{patients_csv} (subject {subject})")
            anchor_age = parse_age(patient["anchor_age"], f"{patients_csv} (subject {subject})")
            try:
                year = int(row["ecg_time"].strip()[:4])
                age = parse_age(anchor_age + year - int(patient["anchor_year"]), where)
            except ValueError:
                age = math.nan
        entries.append(
            RecordEntry(
                record_id=f"mimic/{study}",
                patient_id=f"mimic/{subject}",
                path=os.path.join(source_dir, row["path"].strip()),
                fs=FS,
                split=hashed_split(subject, split_fractions, salt="mimic-iv-ecg"),
                age=age,
                sex=sex,
                text=text,
                original_text=text,
                measurements={k: _float(report[k]) for k in MEASUREMENT_NAMES if k in report},
            )
        )
    return entries
