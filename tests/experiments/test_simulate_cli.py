"""experiments/simulate.py end to end, in a subprocess as a user runs it."""

import subprocess
import sys

import numpy as np
import pytest
import wfdb

from sediff_jax.leads import LEAD_NAMES


def _run(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.simulate", *args], cwd=repo_root, capture_output=True, text=True,
        timeout=300,
    )


def test_writes_wfdb_npz_png(repo_root, tmp_path):
    out = tmp_path / "sub" / "af"
    result = _run(repo_root, "--preset=atrial_fibrillation", "--num=2", "--duration=2", "--fs=250", "--seed=4",
                  "--noise", f"--out={out}")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert names == sorted([f"af_{i}.{ext}" for i in range(2) for ext in ("hea", "dat", "npz", "png")]
                           + [".sediff_outputs.json"])
    record = wfdb.rdrecord(str(tmp_path / "sub" / "af_1"))
    assert record.fs == 250 and record.sig_len == 500 and record.sig_name == list(LEAD_NAMES)
    assert "preset: atrial_fibrillation" in record.comments
    with np.load(tmp_path / "sub" / "af_1.npz") as f:
        np.testing.assert_allclose(f["ecg"], record.p_signal, atol=1e-3)
        assert float(f["hr_bpm"]) == 100.0
    with np.load(tmp_path / "sub" / "af_0.npz") as f0, np.load(tmp_path / "sub" / "af_1.npz") as f1:
        assert np.abs(f0["ecg"] - f1["ecg"]).max() > 0.01  # different records
    # --overwrite replaces only this tool's own files (io.outputs.output_files, tested there): a user's survives
    (tmp_path / "sub" / "mine_0.hea").write_text("a user's record")
    refused = _run(repo_root, "--num=1", "--duration=1", "--fs=100", "--overwrite",
                   f"--out={tmp_path / 'sub' / 'mine'}")
    assert refused.returncode == 2 and "mine_0.hea exists and simulate did not write it" in refused.stderr
    assert (tmp_path / "sub" / "mine_0.hea").read_text() == "a user's record"


def test_many_records_in_uneven_chunks(repo_root, tmp_path):
    result = _run(repo_root, "--num=66", "--duration=0.5", "--fs=100", "--nopng", "--seed=1",
                  f"--out={tmp_path / 'x'}")  # 64 + 2: the last chunk is padded
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("x_*.hea"))) == 66
    with np.load(tmp_path / "x_64.npz") as a, np.load(tmp_path / "x_65.npz") as b:
        assert a["ecg"].shape == (50, 12) and np.abs(a["ecg"] - b["ecg"]).max() > 1e-4


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--hr=400", "--hr must be within [20, 300] bpm"),
        ("--hr=10", "--hr must be within [20, 300] bpm"),
        ("--duration=0", "--duration must be a finite number in [0.1, 3600]"),
        ("--duration=0.001", "--duration must be a finite number in [0.1, 3600]"),
        ("--fs=20", "--fs must be a finite number in [50, 10000]"),
        ("--preset=vfib", "--preset"),
        ("--hr_std=40", "--hr_std=40 must be at most a third"),
        ("--num=0", "--num must be >= 1"),
    ],
)
def test_impossible_input_names_the_flag(repo_root, tmp_path, flag, message):
    result = _run(repo_root, flag, f"--out={tmp_path / 'x'}")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
