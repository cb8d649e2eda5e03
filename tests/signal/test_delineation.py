"""Median-beat delineation against the cardiologists' marks in LUDB, and its errors.

The thresholds in `sediff_jax.signal.delineation` were chosen on LUDB records 1-60; the accuracy test scores the
held-out records 61-160 only.
"""

import math

import numpy as np
import pytest

from sediff_jax.signal.delineation import Delineation, DelineationError, delineate
from sediff_jax.data.ludb import annotated_intervals_ms, read_ludb
from sediff_jax.data.wfdb_reader import read_record


def test_intervals_match_ludb_cardiologists_on_held_out_records(data_dir):
    entries = [e for e in read_ludb(str(data_dir / "ludb")) if int(e.record_id.split("/")[1]) > 60]
    assert len(entries) == 100
    errors = {"pr": [], "qrs": [], "qt": []}
    p_missed = p_invented = 0
    for entry in entries:
        record = read_record(entry.path, expected_fs=500)
        ours = delineate(record.signal, record.fs, where=entry.record_id)
        reference = annotated_intervals_ms(entry.path)
        measured = {"pr": ours.pr_ms, "qrs": ours.qrs_ms, "qt": ours.qt_ms}
        for name in errors:
            if np.isfinite(reference[name]) and np.isfinite(measured[name]):
                errors[name].append(measured[name] - reference[name])
        p_missed += bool(np.isfinite(reference["pr"]) and not np.isfinite(ours.pr_ms))
        p_invented += bool(not np.isfinite(reference["pr"]) and np.isfinite(ours.pr_ms))
    median_abs = {k: float(np.median(np.abs(v))) for k, v in errors.items()}
    bias = {k: float(np.mean(v)) for k, v in errors.items()}
    print("LUDB 61-160 median |error| ms", median_abs, "bias", bias, "P missed", p_missed, "invented", p_invented,
          "of", len(errors["pr"]) + p_missed, "with P")
    assert median_abs["pr"] < 10 and median_abs["qrs"] < 10 and median_abs["qt"] < 25, median_abs
    assert all(abs(b) < 15 for b in bias.values()), bias
    assert len(errors["qt"]) >= 95 and p_missed <= 10, (len(errors["qt"]), p_missed)
    assert p_invented <= 10, p_invented


def test_axis_and_corrected_qt_follow_their_definitions(data_dir):
    entry = read_ludb(str(data_dir / "ludb"))[0]
    record = read_record(entry.path, expected_fs=500)
    d = delineate(record.signal, record.fs)
    rr_s = d.rr_ms / 1000
    assert d.qtc_bazett_ms == pytest.approx(d.qt_ms / math.sqrt(rr_s))
    assert d.qtc_fridericia_ms == pytest.approx(d.qt_ms / rr_s ** (1 / 3))
    # Swapping the sign of every lead turns the QRS axis by 180 degrees.
    flipped = delineate(-record.signal, record.fs)
    turn = (flipped.qrs_axis_deg - d.qrs_axis_deg) % 360
    assert turn == pytest.approx(180, abs=1)
    assert set(d.intervals()) == {"hr_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "qtc_fridericia_ms",
                                  "qrs_axis_deg"}


def test_bad_records_are_named_in_the_error():
    fs = 500.0
    with pytest.raises(DelineationError, match="rec-1.*shape"):
        delineate(np.zeros((5000, 3)), fs, where="rec-1")
    nan = np.zeros((5000, 12))
    nan[10, 3] = np.nan
    with pytest.raises(DelineationError, match="rec-2.*NaN"):
        delineate(nan, fs, where="rec-2")
    with pytest.raises(DelineationError, match="rec-3.*R peaks"):
        delineate(np.zeros((5000, 12)), fs, where="rec-3")


def test_missing_waves_are_nan_not_numbers():
    d = Delineation(hr_bpm=60, rr_ms=1000, p_onset_ms=math.nan, p_peak_ms=math.nan, qrs_onset_ms=-40,
                    qrs_offset_ms=50, t_peak_ms=250, t_end_ms=360, qrs_axis_deg=45, num_beats=9)
    assert math.isnan(d.pr_ms) and d.qrs_ms == 90 and d.qt_ms == 400 and d.qtc_bazett_ms == 400
