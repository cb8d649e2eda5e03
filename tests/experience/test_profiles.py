"""Profile corpora: builders on the real PTB-XL / LUDB records and on MIMIC-IV fixtures in the real schema;
the NPZ round trip and its errors."""

import gzip
import math

import numpy as np
import pytest

from sediff_jax.experience import HOSPITAL_VIEWS, Profile, ProfileCorpus, ProfileError, corpus_summary
from sediff_jax.experience.builders import BuildReport, ludb_profiles, mimic_profiles, ptbxl_profiles


def test_ptbxl_profiles_have_statement_views_and_measured_features(data_dir, tmp_path):
    report = BuildReport()
    corpus = ptbxl_profiles(str(data_dir / "ptb-xl"), fs=100, report=report)
    assert len(corpus) == 500 and report.profiles == 500
    first = corpus.profile(corpus.row_of()["ptbxl/00001"])
    assert first.codes == {"diagnostic": ("NORM",), "form": ("LVOLT",), "rhythm": ("SR",)}
    assert corpus.describe("LVOLT") == "low QRS voltages in the frontal and horizontal leads"
    summary = corpus_summary(corpus)
    assert summary["splits"] == {"train": 353, "validation": 81, "test": 66}
    # intervals are measured on (almost) every record; P is absent mostly where the rhythm is not sinus
    assert summary["features_measured"]["qrs_ms"] >= 495
    hr = corpus.features[:, 0]
    assert 40 < np.nanmedian(hr) < 100
    path = corpus.save(tmp_path / "profiles.npz")
    back = ProfileCorpus.load(path)
    for i in (0, 17, 499):
        assert back.profile(i) == corpus.profile(i) or np.isnan(list(corpus.profile(i).features.values())).any()
    np.testing.assert_array_equal(back.features, corpus.features)
    assert back.descriptions == corpus.descriptions and back.source == corpus.source


def test_ludb_profiles_group_the_diagnoses(data_dir):
    corpus = ludb_profiles(str(data_dir / "ludb"), measure=False)
    assert len(corpus) == 160
    p = corpus.profile(corpus.row_of()["ludb/006"])
    assert "Sinus bradycardia" in p.codes["rhythm"] and "Left ventricular hypertrophy" in p.codes["form"]
    assert all(math.isnan(v) for v in p.features.values())


def write_csv(path, header, rows, gz=False):
    text = ",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    if gz:
        with gzip.open(str(path) + ".gz", "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


@pytest.fixture()
def mimic_layout(tmp_path):
    """A MIMIC-IV-ECG + MIMIC-IV hosp layout in the published schema (column names and order), 2 patients."""
    ecg, hosp = tmp_path / "mimic-iv-ecg", tmp_path / "hosp"
    ecg.mkdir(), hosp.mkdir()
    write_csv(ecg / "record_list.csv", ["subject_id", "study_id", "file_name", "ecg_time", "path"], [
        [10000032, 40689238, 40689238, "2180-07-23 08:44:00", "files/p1000/p10000032/s40689238/40689238"],
        [10000032, 44458630, 44458630, "2180-07-24 09:00:00", "files/p1000/p10000032/s44458630/44458630"],
        [10000032, 49036311, 49036311, "2181-01-01 10:00:00", "files/p1000/p10000032/s49036311/49036311"],
        [10000084, 41000000, 41000000, "2160-11-20 23:30:00", "files/p1000/p10000084/s41000000/41000000"],
    ])
    reports = [f"report_{i}" for i in range(18)]
    write_csv(ecg / "machine_measurements.csv",
              ["subject_id", "study_id", "cart_id", "ecg_time"] + reports +
              ["bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end",
               "p_axis", "qrs_axis", "t_axis"], [
        [10000032, 40689238, 6848296, "2180-07-23 08:44:00", "Sinus rhythm"] + [""] * 17 +
        ["0.005-150Hz", "60 Hz notch", 1000, 40, 128, 200, 300, 600, 81, 77, 79],
        [10000032, 44458630, 6848296, "2180-07-24 09:00:00", "Sinus tachycardia"] + [""] * 17 +
        ["0.005-150Hz", "60 Hz notch", 600, 40, 128, 200, 290, 540, 81, 70, 79],
        [10000032, 49036311, 6848296, "2181-01-01 10:00:00", "Atrial fibrillation"] + [""] * 17 +
        ["0.005-150Hz", "60 Hz notch", 800, 29999, 29999, 200, 300, 580, 29999, -20, 79],
        [10000084, 41000000, 6848296, "2160-11-20 23:30:00", "Sinus rhythm"] + [""] * 17 +
        ["0.005-150Hz", "60 Hz notch", 857, 40, 130, 200, 290, 600, 60, 30, 50],
    ])
    write_csv(hosp / "patients.csv", ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
              [[10000032, "F", 52, 2180, "2014 - 2016", ""], [10000084, "M", 72, 2160, "2017 - 2019", ""]])
    write_csv(hosp / "admissions.csv", ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime",
                                        "admission_type", "admit_provider_id", "admission_location"], [
        [10000032, 22595853, "2180-07-23 12:35:00", "2180-07-25 17:55:00", "", "URGENT", "P874LG", "EMERGENCY ROOM"],
        [10000084, 23052089, "2160-11-21 01:56:00", "2160-11-25 14:52:00", "", "EW EMER.", "P060TX", "WALK-IN"],
    ], gz=True)
    write_csv(hosp / "diagnoses_icd.csv", ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"], [
        [10000032, 22595853, 1, "I10", 10], [10000032, 22595853, 2, "4019", 9], [10000084, 23052089, 1, "I10", 10],
    ], gz=True)
    write_csv(hosp / "procedures_icd.csv", ["subject_id", "hadm_id", "seq_num", "chartdate", "icd_code",
                                            "icd_version"], [[10000032, 22595853, 1, "2180-07-24", "3722", 9]], gz=True)
    write_csv(hosp / "prescriptions.csv", ["subject_id", "hadm_id", "pharmacy_id", "poe_id", "poe_seq",
                                           "order_provider_id", "starttime", "stoptime", "drug_type", "drug"], [
        [10000032, 22595853, 1, "p", 1, "x", "2180-07-23", "2180-07-24", "MAIN", "Metoprolol  Tartrate"],
        [10000032, 22595853, 2, "p", 2, "x", "2180-07-23", "2180-07-24", "MAIN", "metoprolol tartrate"],
        [10000084, 23052089, 3, "p", 3, "x", "2160-11-22", "2160-11-23", "MAIN", "Heparin"],
    ], gz=True)
    write_csv(hosp / "d_icd_diagnoses.csv", ["icd_code", "icd_version", "long_title"],
              [["I10", 10, "Essential (primary) hypertension"], ["4019", 9, "Unspecified essential hypertension"]])
    return str(ecg), str(hosp)


def test_mimic_profiles_link_ecgs_to_their_stay(mimic_layout):
    ecg_dir, hosp_dir = mimic_layout
    report = BuildReport()
    corpus = mimic_profiles(ecg_dir, hosp_dir, link_hours_before=24, report=report)
    assert corpus.views == HOSPITAL_VIEWS and len(corpus) == 4
    rows = corpus.row_of()
    before = corpus.profile(rows["mimic/40689238"])  # 4 h before admission: within the 24 h window
    during = corpus.profile(rows["mimic/44458630"])
    assert before.codes == during.codes == {
        "diagnosis": ("icd10:I10", "icd9:4019"), "medication": ("metoprolol tartrate",), "procedure": ("icd9p:3722",)}
    assert all(not c for c in corpus.profile(rows["mimic/49036311"]).codes.values())  # months later: no stay
    assert report.unlinked_ecgs == 1
    assert corpus.profile(rows["mimic/41000000"]).codes["medication"] == ("heparin",)
    assert corpus.describe("icd10:I10") == "Essential (primary) hypertension"
    assert during.features["hr_bpm"] == pytest.approx(100) and during.features["qrs_ms"] == 90
    assert during.features["qt_ms"] == 340 and during.features["pr_ms"] == 160
    af = corpus.profile(rows["mimic/49036311"]).features
    assert math.isnan(af["pr_ms"]) and af["qrs_axis_deg"] == -20  # 29999 = not measured
    assert during.sex == "female" and during.age == 52
    # a narrower window unlinks the ECG taken before admission
    assert mimic_profiles(ecg_dir, hosp_dir, link_hours_before=1).profile(rows["mimic/40689238"]).codes[
        "diagnosis"] == ()


def test_corpus_files_that_are_not_corpora_are_named(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        ProfileCorpus.load(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ProfileError, match="bad.npz"):
        ProfileCorpus.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ProfileError, match="not a profile corpus"):
        ProfileCorpus.load(other)
    with pytest.raises(ValueError, match="duplicate record id 'a'"):
        ProfileCorpus.from_profiles([Profile("a"), Profile("a")], ("diagnosis",))
    with pytest.raises(ValueError, match="view"):
        ProfileCorpus.from_profiles([Profile("a", codes={"labs": ("x",)})], ("diagnosis",))


def test_lead_amplitudes_round_trip_and_older_corpora_read_without_them(data_dir, tmp_path):
    """Amplitudes measured on real PTB-XL records at 100 Hz survive save/load (float16: 0.1 %); a version-1 file
    (no amplitude arrays) reads with none measured; bad tables are refused by name."""
    from sediff_jax.data.ptbxl import read_ptbxl
    from sediff_jax.experience.builders import add_amplitudes
    from sediff_jax.experience.profiles import FORMAT

    entries = read_ptbxl(str(data_dir / "ptb-xl"), fs=100)
    corpus = ptbxl_profiles(str(data_dir / "ptb-xl"), fs=100, measure=False)
    assert not corpus.has_amplitudes and "amplitude_fs" not in corpus_summary(corpus)
    measured = add_amplitudes(corpus, entries[:20], 100)
    assert measured.has_amplitudes and corpus_summary(measured)["amplitudes_measured"] == 20
    rows = measured.row_of()
    assert np.isfinite(measured.amplitudes[[rows[e.record_id] for e in entries[:20]]]).all()
    assert np.isnan(measured.amplitudes[rows[entries[20].record_id]]).all()
    assert 0.2 < np.median(measured.amplitudes[np.isfinite(measured.amplitudes)]) < 5  # mV
    back = ProfileCorpus.load(measured.save(tmp_path / "profiles.npz"))
    np.testing.assert_allclose(back.amplitudes, measured.amplitudes, rtol=1e-3)
    assert back.amplitude_fs == 100.0
    np.testing.assert_array_equal(back.take(np.array([3, 1])).amplitudes, back.amplitudes[[3, 1]])
    # what an amplitude-conditioned training run reads per batch (by record_id; NaN for one the corpus lacks)
    ids = [entries[2].record_id, "ptbxl/99999", entries[20].record_id, entries[0].record_id]
    looked_up = back.amplitudes_of(np.array(ids))
    np.testing.assert_array_equal(looked_up[[0, 3]], back.amplitudes[[rows[ids[0]], rows[ids[3]]]])
    assert np.isnan(looked_up[[1, 2]]).all() and looked_up.dtype == np.float32
    np.testing.assert_array_equal(back.amplitudes_of(ids, back.row_of()), looked_up)

    with np.load(tmp_path / "profiles.npz") as f:
        older = {k: f[k] for k in f.files if not k.startswith("amplitude")}
    older["format_version"] = np.int32(1)
    np.savez(tmp_path / "v1.npz", **older)
    v1 = ProfileCorpus.load(tmp_path / "v1.npz")
    assert str(older["format"]) == FORMAT and not v1.has_amplitudes and len(v1) == len(measured)

    with pytest.raises(ValueError, match="not in the corpus"):
        corpus.with_amplitudes({"ptbxl/99999": np.ones(12)}, 100)
    with pytest.raises(ValueError, match="must be > 0 mV"):
        corpus.with_amplitudes({entries[0].record_id: np.zeros(12)}, 100)
    with pytest.raises(ValueError, match="amplitude_fs=nan"):
        ProfileCorpus(**{**vars(measured), "amplitude_fs": float("nan")})
