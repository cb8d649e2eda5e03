"""Dataset layout readers on the real PTB-XL and LUDB records, and MIMIC-IV-ECG on a fixture in its schema."""

import collections
import csv
import math
import shutil

import numpy as np
import pytest

from sediff_jax.data.canonical import CanonicalConfig, canonicalize
from sediff_jax.data.ludb import read_ludb, read_wave_annotations
from sediff_jax.data.mimic import read_mimic
from sediff_jax.data.ptbxl import read_ptbxl, scp_text
from sediff_jax.data.sources import LayoutError, hashed_split, parse_age, parse_sex
from sediff_jax.data.wfdb_reader import read_record
from sediff_jax.leads import LEAD_NAMES
from tests.data.wfdb_fixtures import simulated_ecg, write_record


@pytest.mark.parametrize("fs", [100, 500])
def test_all_ptbxl_records_load(data_dir, fs):
    entries = read_ptbxl(str(data_dir / "ptb-xl"), fs)
    assert len(entries) == 500
    assert collections.Counter(e.split for e in entries) == {"train": 353, "validation": 81, "test": 66}
    superclasses = collections.Counter(s for e in entries for s in e.superclasses)
    assert superclasses == {"NORM": 297, "STTC": 96, "CD": 78, "MI": 73, "HYP": 40}
    config = CanonicalConfig(fs=fs)
    for entry in entries:
        record = read_record(entry.path, expected_fs=fs)
        assert record.signal.shape == (10 * fs, 12), entry.record_id
        assert tuple(n.upper() for n in record.lead_names) == tuple(n.upper() for n in LEAD_NAMES)
        canonical = canonicalize(record, config)
        assert canonical.ecg.shape == (10 * fs, 12) and canonical.ecg.dtype == np.float32
        assert 25 < canonical.hr_bpm < 200, entry.record_id
        assert entry.text and entry.text.endswith(".") and entry.text.isascii(), entry.record_id
        assert entry.sex in ("male", "female") and (math.isnan(entry.age) or 0 <= entry.age <= 90)


def test_ptbxl_text_and_folds(data_dir):
    entries = {e.record_id: e for e in read_ptbxl(str(data_dir / "ptb-xl"), 500)}
    first = entries["ptbxl/00001"]
    assert first.text == "Sinus rhythm. Normal ECG. Low QRS voltages in the frontal and horizontal leads."
    assert first.original_text == "sinusrhythmus periphere niederspannung"  # German, kept as is
    assert first.split == "train" and first.sex == "female" and first.age == 56
    assert first.patient_id == "ptbxl/15709"
    statements = {"IMI": {"description": "inferior myocardial infarction", "rhythm": ""},
                  "SR": {"description": "sinus rhythm", "rhythm": "1.0"}}
    assert scp_text({"IMI": 35.0, "SR": 0.0}, statements) == "Sinus rhythm. Possible inferior myocardial infarction."
    assert scp_text({"IMI": 80.0}, statements) == "Probable inferior myocardial infarction."
    with pytest.raises(LayoutError, match="XYZ"):
        scp_text({"XYZ": 100.0}, statements, "db.csv:2")


def test_ptbxl_missing_column_names_the_file_and_column(data_dir, tmp_path):
    source = tmp_path / "ptb-xl"
    source.mkdir()
    shutil.copy(data_dir / "ptb-xl" / "scp_statements.csv", source)
    with open(data_dir / "ptb-xl" / "ptbxl_database.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c != "strat_fold"]
    with open(source / "ptbxl_database.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[:3])
    with pytest.raises(LayoutError, match=r"ptbxl_database\.csv: missing column\(s\) strat_fold"):
        read_ptbxl(str(source), 100)
    with pytest.raises(LayoutError, match=r"file not found"):
        read_ptbxl(str(tmp_path / "nowhere"), 100)


def test_ludb_entries_and_annotations(data_dir):
    entries = read_ludb(str(data_dir / "ludb"))
    assert len(entries) == 160
    first = entries[0]
    assert first.record_id == "ludb/001" and first.sex == "female" and first.age == 51
    assert first.text.startswith("Sinus bradycardia. Electric axis of the heart: left axis deviation.")
    assert max(e.age for e in entries) == 90  # '>89' is top-coded
    marks = read_wave_annotations(first.path, "V1")
    for wave in (marks.p, marks.qrs, marks.t):
        assert wave.shape[1] == 3 and len(wave) >= 4
        assert (wave[:, 0] < wave[:, 1]).all() and (wave[:, 1] < wave[:, 2]).all()
    qrs_ms = (marks.qrs[:, 2] - marks.qrs[:, 0]) / 0.5
    assert 60 < np.median(qrs_ms) < 120
    for lead in LEAD_NAMES:
        assert read_wave_annotations(first.path, lead).qrs.size > 0
    with pytest.raises(ValueError, match="unknown lead"):
        read_wave_annotations(first.path, "V7")
    canonical = canonicalize(read_record(first.path, expected_fs=500))
    assert canonical.ecg.shape == (5000, 12) and canonical.hr_bpm < 60  # sinus bradycardia


# --- MIMIC-IV-ECG fixture, in the published schema ------------------------------------------------------
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
MEASUREMENTS = ["bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end",
                "p_axis", "qrs_axis", "t_axis"]


def write_mimic_fixture(root, subjects=(10000032, 10000764, 10001725, 10002428), studies_per_subject=2):
    """MIMIC-IV-ECG layout: record_list.csv, machine_measurements.csv, files/pXXXX/pXXXXXXXX/sXXXXXXXX/."""
    ecg = simulated_ecg()
    order = [LEAD_NAMES.index(n) for n in MIMIC_LEADS]
    records, machine, patients = [], [], []
    study = 40000000
    for s_index, subject in enumerate(subjects):
        patients.append({"subject_id": subject, "gender": "MF"[s_index % 2], "anchor_age": 50 + s_index,
                         "anchor_year": 2150, "anchor_year_group": "2008 - 2010", "dod": ""})
        for _ in range(studies_per_subject):
            study += 17
            rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
            write_record(str(root / rel.rsplit("/", 1)[0]), str(study), ecg[:, order], 500, MIMIC_LEADS)
            records.append({"subject_id": subject, "study_id": study, "file_name": study,
                            "ecg_time": "2152-03-01 10:00:00", "path": rel})
            row = {"subject_id": subject, "study_id": study, "cart_id": 6848296, "ecg_time": "2152-03-01 10:00:00"}
            reports = ["Sinus rhythm", "Possible anterior infarct - age undetermined", "Abnormal ECG"]
            row.update({f"report_{i}": (reports[i] if i < len(reports) else "") for i in range(18)})
            row.update({"bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter", "rr_interval": 857,
                        "p_onset": 40, "p_end": 128, "qrs_onset": 170, "qrs_end": 258, "t_end": 518,
                        "p_axis": 81, "qrs_axis": 77, "t_axis": 29999})
            machine.append(row)
    for name, rows in (("record_list.csv", records), ("machine_measurements.csv", machine)):
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with open(root / "patients.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(patients[0]))
        writer.writeheader()
        writer.writerows(patients)
    return root


def test_mimic_fixture_reads_and_canonicalises(tmp_path):
    root = write_mimic_fixture(tmp_path / "mimic")
    entries = read_mimic(str(root), patients_csv=str(root / "patients.csv"))
    assert len(entries) == 8
    first = entries[0]
    assert first.text == "Sinus rhythm. Possible anterior infarct - age undetermined. Abnormal ECG."
    assert first.sex == "male" and first.age == 52  # anchor_age 50 + (2152 - 2150)
    assert first.measurements["rr_interval"] == 857 and math.isnan(first.measurements["t_axis"])  # 29999
    by_patient = collections.defaultdict(set)
    for e in entries:
        by_patient[e.patient_id].add(e.split)
    assert all(len(splits) == 1 for splits in by_patient.values())  # patient-disjoint
    record = read_record(first.path, expected_fs=500)
    assert record.lead_names[4:6] == ("aVF", "aVL")
    canonical = canonicalize(record)
    np.testing.assert_allclose(canonical.ecg, simulated_ecg(), atol=1e-3)  # aVL/aVF back in place
    no_demographics = read_mimic(str(root))
    assert no_demographics[0].sex == "unknown" and math.isnan(no_demographics[0].age)


def test_mimic_missing_report_column(tmp_path):
    root = write_mimic_fixture(tmp_path / "mimic", subjects=(10000032,), studies_per_subject=1)
    text = (root / "machine_measurements.csv").read_text().replace("report_7", "report_seven")
    (root / "machine_measurements.csv").write_text(text)
    with pytest.raises(LayoutError, match=r"machine_measurements\.csv: missing column\(s\) report_7"):
        read_mimic(str(root))


def test_hashed_split_is_stable_and_close_to_the_fractions():
    splits = [hashed_split(str(k)) for k in range(20000)]
    counts = collections.Counter(splits)
    assert abs(counts["train"] / 20000 - 0.8) < 0.01 and abs(counts["test"] / 20000 - 0.1) < 0.01
    assert splits[:50] == [hashed_split(str(k)) for k in range(50)]
    with pytest.raises(ValueError, match="summing to 1"):
        hashed_split("1", (0.5, 0.2, 0.2))


def test_demographics_parsing():
    assert parse_age("300") == 90 and parse_age(">89") == 90 and math.isnan(parse_age(""))
    with pytest.raises(LayoutError, match="impossible age -3"):
        parse_age("-3", "x.csv:2")
    with pytest.raises(LayoutError, match="not a number"):
        parse_age("old", "x.csv:2")
    assert parse_sex("0") == "male" and parse_sex("F\n") == "female" and parse_sex("") == "unknown"
    with pytest.raises(LayoutError, match="unknown sex code"):
        parse_sex("7", "x.csv:2")


def test_ptbxl_records_relabelled_between_versions_are_flagged(data_dir, tmp_path):
    source = tmp_path / "ptb-xl"
    source.mkdir()
    for name in ("scp_statements.csv", "ptbxl_database.csv"):
        shutil.copy(data_dir / "ptb-xl" / name, source)
    assert not any(e.labels_changed for e in read_ptbxl(str(source), 100))  # no errata file: nothing flagged
    (source / "labels_changed_in_v1.0.3.txt").write_text("2\n# a comment\n17\n")
    flagged = {e.record_id for e in read_ptbxl(str(source), 100) if e.labels_changed}
    assert flagged == {"ptbxl/00002", "ptbxl/00017"}
    (source / "labels_changed_in_v1.0.3.txt").write_text("2\nseventeen\n")
    with pytest.raises(LayoutError, match="labels_changed_in_v1.0.3.txt: not a list of ecg_ids"):
        read_ptbxl(str(source), 100)


@pytest.mark.data
def test_the_full_ptbxl_layout_reads_and_canonicalises(ptbxl_full_dir):
    """All 21,799 records of PTB-XL at 100 Hz: the folds of the paper's split, a sample of each read end to end."""
    from sediff_jax.data.builder import load_and_canonicalize
    from sediff_jax.data.canonical import CanonicalConfig

    entries = read_ptbxl(str(ptbxl_full_dir), 100)
    splits = [e.split for e in entries]
    assert len(entries) == 21799
    assert (splits.count("train"), splits.count("validation"), splits.count("test")) == (17418, 2183, 2198)
    if (ptbxl_full_dir / "labels_changed_in_v1.0.3.txt").is_file():
        assert sum(e.labels_changed for e in entries) == 8
    rng = np.random.default_rng(0)
    for k in rng.choice(len(entries), 30, replace=False):
        entry, record = load_and_canonicalize(entries[k], CanonicalConfig(fs=100.0))
        assert not isinstance(record, Exception), record
        assert record.ecg.shape == (1000, 12) and 20 < record.hr_bpm < 300
