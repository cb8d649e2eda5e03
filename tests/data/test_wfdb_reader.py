"""read_record: the two reference records, and bad files that must fail with a message naming the file."""

import os

import numpy as np
import pytest
import wfdb

from sediff_jax.data.wfdb_reader import RecordError, read_record
from tests.data.wfdb_fixtures import simulated_ecg, write_record


def test_mit_bih_100_reads_as_published(data_dir):
    record = read_record(data_dir / "wfdb-samples" / "100")
    assert record.signal.shape == (650000, 2)
    assert record.lead_names == ("MLII", "V5") and record.fs == 360
    # The first samples of record 100 are -0.145 and -0.065 mV (format 212, gain 200, baseline 1024).
    np.testing.assert_allclose(record.signal[0], [-0.145, -0.065], atol=1e-6)
    np.testing.assert_allclose(record.signal, wfdb.rdrecord(str(data_dir / "wfdb-samples" / "100")).p_signal, atol=1e-6)


def test_ptb_s0010_re_reads_all_15_channels(data_dir):
    record = read_record(data_dir / "wfdb-samples" / "s0010_re.hea")
    assert record.signal.shape == (38400, 15) and record.fs == 1000
    assert record.lead_names[:3] == ("i", "ii", "iii") and record.lead_names[-3:] == ("vx", "vy", "vz")
    np.testing.assert_allclose(record.signal[0, :2], [-489 / 2000, -458 / 2000], atol=1e-6)
    assert any("age: 81" in c for c in record.comments)


def test_nan_samples_round_trip(tmp_path):
    ecg = simulated_ecg()
    ecg[100:110, 3] = np.nan
    path = write_record(str(tmp_path), "gap", ecg, 500)
    record = read_record(path)
    assert np.isnan(record.signal[100:110, 3]).all()
    assert not np.isnan(np.delete(record.signal, 3, axis=1)).any()
    np.testing.assert_allclose(record.signal[:100], ecg[:100], atol=6e-4)  # 1 uV resolution


def test_microvolt_units_become_millivolts(tmp_path):
    ecg = simulated_ecg()
    path = write_record(str(tmp_path), "uv", ecg * 1000.0, 500, units="uV", gain=1.0)
    np.testing.assert_allclose(read_record(path).signal, ecg, atol=1e-3)


@pytest.fixture
def good_record(tmp_path):
    return write_record(str(tmp_path), "rec", simulated_ecg(), 500)


def test_truncated_dat(good_record):
    with open(good_record + ".dat", "r+b") as f:
        f.truncate(10000)
    with pytest.raises(RecordError, match=r"rec\.dat: truncated") as e:
        read_record(good_record)
    assert e.value.reason == "truncated"


def test_header_data_length_mismatch(good_record):
    with open(good_record + ".dat", "ab") as f:
        f.write(b"\x00" * 24 * 10)
    with pytest.raises(RecordError, match=r"rec\.dat: header/data length mismatch") as e:
        read_record(good_record)
    assert e.value.reason == "length_mismatch"


def test_wrong_sampling_rate_in_header(good_record):
    with pytest.raises(RecordError, match=r"rec\.hea: header says 500 Hz, expected 100 Hz") as e:
        read_record(good_record, expected_fs=100)
    assert e.value.reason == "wrong_fs"


def test_corrupted_samples_fail_the_checksum(good_record):
    with open(good_record + ".dat", "r+b") as f:
        f.seek(5000)
        f.write(b"\x7f\x7f")
    with pytest.raises(RecordError, match=r"rec\.dat: checksum mismatch") as e:
        read_record(good_record)
    assert e.value.reason == "checksum"


def test_missing_files(tmp_path, good_record):
    with pytest.raises(RecordError, match="header file not found"):
        read_record(tmp_path / "nothing")
    os.remove(good_record + ".dat")
    with pytest.raises(RecordError, match=r"rec\.dat: data file named in .*rec\.hea not found"):
        read_record(good_record)


def test_garbage_header(tmp_path):
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(RecordError, match=r"bad\.hea") as e:
        read_record(tmp_path / "bad")
    assert e.value.reason == "bad_header"


def test_unknown_units(tmp_path):
    path = write_record(str(tmp_path), "furlong", simulated_ecg(), 500, units="furlong")
    with pytest.raises(RecordError, match="unknown units 'furlong'"):
        read_record(path)


def test_mis_scaled_records_are_refused(tmp_path):
    """A record whose header gain makes it +-1e6 mV (or any amplitude beyond 16-bit uV range) is not an ECG."""
    ecg = simulated_ecg()
    path = write_record(str(tmp_path), "scaled", ecg * 1e6, 500, gain=0.001)
    with pytest.raises(RecordError, match=r"scaled: signal '.*' reaches [\d.]+e\+06 mV") as error:
        read_record(path)
    assert error.value.reason == "amplitude"
    assert read_record(write_record(str(tmp_path), "ok", ecg, 500)).signal.shape == ecg.shape


@pytest.mark.parametrize("rate", ["-250", "0", "nan", "abc"])
def test_an_unreadable_or_negative_sampling_rate_is_refused_not_read_as_250_hz(good_record, rate):
    header = good_record + ".hea"
    first, rest = open(header).read().split("\n", 1)
    fields = first.split()
    fields[2] = rate
    open(header, "w").write(" ".join(fields) + "\n" + rest)
    with pytest.raises(RecordError, match="invalid sampling rate"):
        read_record(good_record)
