"""R-peak detection against the cardiologists' QRS marks in LUDB (AAMI EC57 matching window, 150 ms)."""

import numpy as np

from sediff_jax.data.ludb import read_ludb, read_wave_annotations
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm
from sediff_jax.data.wfdb_reader import read_record

TOLERANCE_S = 0.15


def test_r_peaks_match_ludb_qrs_annotations(data_dir):
    entries = read_ludb(str(data_dir / "ludb"))
    assert len(entries) == 160
    tp = fp = fn = 0
    offsets = []
    for entry in entries:
        record = read_record(entry.path, expected_fs=500)
        marks = read_wave_annotations(entry.path, "II")
        reference = marks.qrs[:, 1]
        if reference.size == 0:
            continue
        # LUDB marks a central stretch of each record; score detections inside it.
        lo, hi = marks.qrs[:, 0].min(), marks.qrs[:, 2].max()
        found = detect_r_peaks(record.signal, record.fs)
        found = found[(found >= lo) & (found <= hi)]
        close = np.abs(found[:, None] - reference[None, :]) <= TOLERANCE_S * record.fs
        tp += close.any(axis=1).sum()
        fp += (~close.any(axis=1)).sum()
        fn += (~close.any(axis=0)).sum()
        d = np.abs(found[:, None] - reference[None, :]).min(axis=1)
        offsets.extend(d[d <= TOLERANCE_S * record.fs] / record.fs)
    sensitivity, ppv = tp / (tp + fn), tp / (tp + fp)
    assert sensitivity > 0.995 and ppv > 0.995, (sensitivity, ppv)
    # Most peaks sit on the lead-II QRS peak the cardiologists marked.
    assert np.median(offsets) < 0.01


def test_heart_rate_from_peaks():
    assert heart_rate_bpm(np.array([0, 500, 1000, 1500]), 500) == 60.0
    assert np.isnan(heart_rate_bpm(np.array([10]), 500))
    assert detect_r_peaks(np.zeros((5000, 12)), 500).size == 0
