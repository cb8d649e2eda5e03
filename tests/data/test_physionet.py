"""PhysioNet records by name (`pn://...`), with the network replaced at wfdb's downloader: the examples/ records
served as a PhysioNet folder."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from wfdb.io import download

from sediff_jax.data.wfdb_reader import RecordError, fetch_physionet_record, read_record

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "records"
FOLDER_URL = download.PN_CONTENT_URL + "fake-db/1.0.0/records/"


@pytest.fixture
def physionet(monkeypatch, tmp_path):
    """Downloads served from examples/records; returns the list of URLs fetched."""
    fetched = []

    def dl_full_file(url, save_file_name):
        fetched.append(url)
        assert url.startswith(FOLDER_URL), url
        source = EXAMPLES / url[len(FOLDER_URL):]
        if not source.exists():
            raise FileNotFoundError(f"404 for {url}")
        shutil.copyfile(source, save_file_name)

    monkeypatch.setattr(download, "dl_full_file", dl_full_file)
    monkeypatch.setenv("SEDIFF_PHYSIONET_CACHE", str(tmp_path / "cache"))
    return fetched


def test_a_physionet_record_is_downloaded_once_and_reads_like_the_local_copy(physionet, tmp_path):
    spec = "pn://fake-db/1.0.0/records/sinus_arrhythmia_0"
    remote = read_record(spec)
    local = read_record(EXAMPLES / "sinus_arrhythmia_0")
    np.testing.assert_array_equal(remote.signal, local.signal)
    assert remote.fs == 500 and remote.lead_names == local.lead_names
    assert remote.path == str(tmp_path / "cache" / "fake-db" / "1.0.0" / "records" / "sinus_arrhythmia_0")
    assert physionet == [FOLDER_URL + "sinus_arrhythmia_0.hea", FOLDER_URL + "sinus_arrhythmia_0.dat"]
    read_record(spec + ".hea")  # cached: nothing fetched again
    assert len(physionet) == 2


def test_bad_names_and_failed_downloads_are_errors_naming_them_and_leave_no_partial_file(physionet, tmp_path):
    for spec in ("pn://ptb-xl/records500/00000/00001_hr", "pn://ptb-xl/1.0.3", "pn://ptb-xl/1.0.3/../../etc/passwd"):
        with pytest.raises(RecordError, match="not a PhysioNet record; expected pn://<database>/<version>"):
            read_record(spec)
    assert physionet == []
    with pytest.raises(RecordError, match=f"{FOLDER_URL}missing_0.hea: download failed"):
        fetch_physionet_record("pn://fake-db/1.0.0/records/missing_0", tmp_path / "other")
    assert [p for p in (tmp_path / "other").rglob("*") if p.is_file()] == []
