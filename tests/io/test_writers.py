"""WFDB, NPZ and PNG writers: round trips, atomicity, clear errors."""

import os

import numpy as np
import pytest
import wfdb

from sediff_jax import io as ecg_io
from sediff_jax.io import wfdb_io
from sediff_jax.leads import LEAD_NAMES, lead_index, limb_lead_residuals


def _ecg(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    independent = np.cumsum(rng.normal(scale=0.02, size=(n, 8)), axis=0)
    from sediff_jax.leads import leads_from_independent

    return leads_from_independent(independent).astype(np.float32)


def test_wfdb_round_trip(tmp_path):
    ecg = _ecg()
    header, data = ecg_io.write_wfdb(tmp_path / "rec_0", ecg, fs=500, comments=["preset: normal_sinus", "seed: 3"])
    assert header.name == "rec_0.hea" and data.name == "rec_0.dat"
    record = wfdb.rdrecord(str(tmp_path / "rec_0"))
    assert record.fs == 500 and record.sig_name == list(LEAD_NAMES) and record.units == ["mV"] * 12
    assert record.comments == ["preset: normal_sinus", "seed: 3"]
    np.testing.assert_allclose(record.p_signal, ecg, atol=0.5 / wfdb_io.ADC_GAIN_PER_MV + 1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec_0.dat", "rec_0.hea"]  # no temporary left


@pytest.mark.data
def test_wfdb_round_trip_of_a_real_ptbxl_record(tmp_path, data_dir):
    path = data_dir / "ptb-xl" / "records500" / "00000" / "00001_hr"
    real = wfdb.rdrecord(str(path))
    order = [real.sig_name.index(n) if n in real.sig_name else real.sig_name.index(n.upper()) for n in LEAD_NAMES]
    ecg = real.p_signal[:, order]
    ecg_io.write_wfdb(tmp_path / "copy", ecg, fs=real.fs)
    back = wfdb.rdrecord(str(tmp_path / "copy"), physical=False)
    digital = wfdb.rdrecord(str(path), physical=False).d_signal
    np.testing.assert_array_equal(back.d_signal, digital[:, order])  # bit-exact: both 1 uV/LSB
    # PTB-XL stores all 12 leads, so its limb leads obey Einthoven only to quantisation and filtering.
    assert np.median(np.abs(limb_lead_residuals(ecg))) < 0.01


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((100, 12), np.nan), "non-finite value at sample 0"),
        (np.zeros((100, 11)), r"shape \(time, 12\)"),
        (np.full((100, 12), 40.0), "beyond"),
        (np.zeros((1, 12)), "at least 2 samples"),
    ],
)
def test_wfdb_refuses_bad_signals_and_writes_nothing(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        ecg_io.write_wfdb(tmp_path / "bad", bad, fs=500)
    assert list(tmp_path.iterdir()) == []


def test_wfdb_refuses_bad_names_and_comments(tmp_path):
    with pytest.raises(ValueError, match="record name"):
        ecg_io.write_wfdb(tmp_path / "a b", _ecg(), fs=500)
    with pytest.raises(ValueError, match="single lines"):
        ecg_io.write_wfdb(tmp_path / "ok", _ecg(), fs=500, comments=["two\nlines"])


def test_failed_write_keeps_previous_record_intact(tmp_path, monkeypatch):
    first = _ecg(seed=1)
    ecg_io.write_wfdb(tmp_path / "rec", first, fs=500)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(wfdb_io.wfdb, "wrsamp", crash)
    with pytest.raises(OSError, match="disk full"):
        ecg_io.write_wfdb(tmp_path / "rec", _ecg(seed=2), fs=500)
    record = wfdb.rdrecord(str(tmp_path / "rec"))
    np.testing.assert_allclose(record.p_signal, first, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.dat", "rec.hea"]


def test_npz_round_trip(tmp_path):
    ecg = np.stack([_ecg(seed=0), _ecg(seed=1)])
    path = ecg_io.write_npz(tmp_path / "batch.npz", ecg, fs=500, hr=np.array([60.0, 70.0]), preset="lvh")
    with np.load(path) as f:
        np.testing.assert_array_equal(f["ecg"], ecg)
        assert float(f["fs"]) == 500 and list(f["lead_names"]) == list(LEAD_NAMES)
        assert str(f["preset"]) == "lvh" and list(f["hr"]) == [60.0, 70.0]
    with pytest.raises(ValueError, match="NaN"):
        ecg_io.write_npz(tmp_path / "nan.npz", np.full((10, 12), np.nan), fs=500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.npz"]


def test_png_standard_layout(tmp_path):
    import matplotlib.image

    ecg = _ecg(5000)
    path = ecg_io.save_ecg_png(tmp_path / "ecg.png", ecg, fs=500, title="test", dpi=100)
    image = matplotlib.image.imread(path)
    height_in = (4 * 35 + 8) / 25.4
    width_in = (10 + 10 * 25) / 25.4
    assert image.shape[0] == pytest.approx(height_in * 100, abs=2)
    assert image.shape[1] == pytest.approx(width_in * 100, abs=2)
    rgb = image[..., :3]
    dark = (rgb.max(axis=-1) < 0.3).mean()
    pink = ((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.9) & (rgb[..., 1] > 0.4)).mean()
    assert 0.005 < dark < 0.2  # traces and labels
    assert pink > 0.05  # millimetre grid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ecg.png"]


def test_plot_geometry_is_25mm_per_s_and_10mm_per_mv():
    ecg = np.zeros((5000, 12), np.float32)
    ecg[:, lead_index("II")] = 1.0  # a 1 mV step in lead II
    fig = ecg_io.plot_ecg(ecg, fs=500)
    ax = fig.axes[0]
    traces = ax.collections[-1].get_segments()
    rhythm = max(traces, key=len)  # the full-length lead II strip
    assert rhythm[-1, 0] - rhythm[0, 0] == pytest.approx(25.0 * 4999 / 500)
    calibration = np.asarray(traces[0])  # first drawn: the calibration pulse of row 1
    assert np.ptp(calibration[:, 1]) == pytest.approx(10.0)  # 1 mV
    assert np.ptp(rhythm[:, 1]) == pytest.approx(0.0)  # the step is constant over the strip
    row_baseline = np.asarray(traces[-2])[0, 1]  # the rhythm row's calibration pulse starts on its baseline
    assert rhythm[0, 1] - row_baseline == pytest.approx(10.0)  # 1 mV of lead II drawn 10 mm above
    with pytest.raises(ValueError, match=r"\(time, 12\)"):
        ecg_io.plot_ecg(np.zeros((10, 3)), fs=500)


def test_atomic_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = ecg_io.write_npz(tmp_path / "a.npz", _ecg(), fs=500)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_wfdb_header_text_has_no_control_characters(tmp_path):
    """Report text with terminal escape codes goes into the header as plain text (no raw ESC, BEL, NUL)."""
    header, _ = ecg_io.write_wfdb(tmp_path / "esc", _ecg(), fs=500, comments=["text: a\x1b[2Jb\x07c\x00d\te"])
    raw = header.read_bytes()
    assert not any(b < 32 and b not in (10, 13) for b in raw), raw
    assert wfdb.rdheader(str(tmp_path / "esc")).comments == ["text: a [2Jb c d e"]
