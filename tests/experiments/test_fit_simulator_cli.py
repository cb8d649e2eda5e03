"""experiments/fit_simulator.py end to end (subprocess), on simulated and real records, with every bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.data.wfdb_fixtures import simulated_ecg, write_record


def _run(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.fit_simulator", *args], cwd=repo_root, capture_output=True, text=True,
        timeout=600,
    )


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_round_trip_and_bad_records(repo_root, tmp_path, data_dir):
    records = tmp_path / "records"
    good = write_record(str(records), "good", simulated_ecg(fs=500.0, duration_s=6.0, hr=75.0), 500.0)
    flat = simulated_ecg(fs=500.0, duration_s=6.0)
    flat[:, 8] = 0.0
    write_record(str(records), "flat", flat, 500.0)
    write_record(str(records), "short", simulated_ecg(fs=500.0, duration_s=6.0)[:300], 500.0)
    t = np.arange(3000)[:, None] / 500.0
    write_record(str(records), "no_peaks", np.tile(0.3 * np.sin(2 * np.pi * 0.2 * t), (1, 12)), 500.0)
    write_record(str(records), "not_ecg", np.random.default_rng(0).normal(size=(3000, 2)), 500.0,
                 lead_names=["ABP", "PLETH"], units="mmHg")
    # A 2-lead Holter record is not a 12-lead ECG.
    holter = data_dir / "wfdb-samples" / "100"
    real = data_dir / "ptb-xl" / "records100" / "00000" / "00001_lr"
    listing = tmp_path / "list.txt"
    listing.write_text("# simulated and real records\nrecords/good\nrecords/flat\nrecords/short\n"
                       f"records/no_peaks\nrecords/not_ecg\nrecords/missing\n{real}\n{holter}\n")
    out = tmp_path / "out"
    result = _run(repo_root, f"--records_file={listing}", f"--out_dir={out}", "--max_iterations=60")
    assert result.returncode == 1, result.stderr  # some records could not be fitted
    errors = result.stderr
    assert "records/flat: cannot fit: flat signal" in errors
    assert "records/short: cannot fit: too short" in errors
    assert "records/no_peaks: cannot fit: no detectable R peaks" in errors
    assert "records/not_ecg: cannot fit: not an ECG header" in errors and "'ABP'" in errors
    assert "records/missing.hea: header file not found" in errors
    assert "wfdb-samples/100: cannot fit: not a 12-lead ECG header" in errors and "'MLII'" in errors
    assert "6 of 8 record(s) could not be fitted; 2 written" in errors
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.{e}" for n in ("good", "00001_lr") for e in ("json", "npz", "png")] + [".sediff_outputs.json"])
    recorded = json.loads((out / ".sediff_outputs.json").read_text())["files"]
    assert sorted(recorded) == sorted(f"{n}.{e}" for n in ("good", "00001_lr") for e in ("json", "npz", "png"))
    assert all(v["tool"] == "fit_simulator" and v["sha256"] for v in recorded.values())

    summary = json.loads((out / "good.json").read_text())
    assert summary["record"] == good and summary["record_fs_hz"] == 500.0 and summary["mode"] == "beat"
    assert set(summary["wave_times_ms"]) == set("PQRST")
    assert summary["parameters"]["heart_rate_bpm"] == pytest.approx(75.0, abs=1.5)
    assert summary["parameters"]["waves"]["R"]["X"]["amplitude_mv"] > 0
    assert isinstance(summary["converged"], bool) and summary["iterations"] <= 60
    assert summary["quality"]["median_correlation"] > 0.95
    assert len(summary["quality"]["lead_rmse_mv"]) == 12
    with np.load(out / "good.npz") as f:
        assert f["real"].shape == f["fitted"].shape == (600, 12) and f["real"].dtype == np.float32
        assert float(f["fs"]) == 500.0
    # A real 100 Hz PTB-XL record: outputs at the record's rate.
    with np.load(out / "00001_lr.npz") as f:
        assert float(f["fs"]) == 100.0 and f["fitted"].shape == (120, 12)
        r = [np.corrcoef(f["real"][:, k], f["fitted"][:, k])[0, 1] for k in range(12)]
        assert np.median(r) > 0.9
    assert _is_png(out / "good.png") and _is_png(out / "00001_lr.png")
    assert [p.name for p in out.glob(".*")] == [".sediff_outputs.json"]  # no temporary files left behind


def test_flag_errors(repo_root, tmp_path):
    result = _run(repo_root, f"--out_dir={tmp_path}")
    assert result.returncode != 0 and "pass exactly one of --record and --records_file" in result.stderr
    result = _run(repo_root, f"--records_file={tmp_path / 'nope.txt'}", f"--out_dir={tmp_path}")
    assert result.returncode != 0 and "nope.txt" in result.stderr
    listing = tmp_path / "dup.txt"
    listing.write_text("a/rec\nb/rec\n")
    result = _run(repo_root, f"--records_file={listing}", f"--out_dir={tmp_path}")
    assert result.returncode != 0 and "several records are named rec" in result.stderr


def test_strip_fits_keep_each_records_own_length(repo_root, tmp_path):
    """Records of different lengths are batched apart in strip mode (a short record no longer cuts the others),
    and together in beat mode. In a subprocess: experiments/ modules each define their own absl flags."""
    write_record(str(tmp_path), "short", simulated_ecg(fs=500.0, duration_s=3.0), 500.0)
    write_record(str(tmp_path), "long", simulated_ecg(fs=500.0, duration_s=8.0), 500.0)
    write_record(str(tmp_path), "long2", simulated_ecg(fs=500.0, duration_s=8.0, hr=80.0), 500.0)
    script = (
        "from experiments.fit_simulator import fitting_groups, load_for_fitting\n"
        f"loaded = [(p, *load_for_fitting(p, None, 600.0, 0.0, 1.0)) for p in "
        f"['{tmp_path}/short', '{tmp_path}/long', '{tmp_path}/long2']]\n"
        "for mode in ('strip', 'beat'):\n"
        "    print(mode, sorted((k, [p.rsplit('/', 1)[1] for p, _, _ in v]) for k, v in "
        "fitting_groups(loaded, mode).items()))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    strip, beat = done.stdout.splitlines()
    assert strip == "strip [((500.0, 1500), ['short']), ((500.0, 4000), ['long', 'long2'])]"
    assert beat == "beat [((500.0, 0), ['short', 'long', 'long2'])]"


def test_the_readme_fit_runs_from_a_fresh_clone_and_a_capped_fit_says_so(repo_root, tmp_path):
    """examples/records ships with the code, so the README's fit command needs no download; a fit stopped by
    --max_iterations is reported as such, not as converged."""
    result = _run(repo_root, "--record=examples/records/sinus_arrhythmia_0", "--max_iterations=20", "--nopng",
                  f"--out_dir={tmp_path / 'fits'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "20 iterations (stopped at the iteration cap (not converged))" in result.stdout
    summary = json.loads((tmp_path / "fits" / "sinus_arrhythmia_0.json").read_text())
    assert summary["converged"] is False and summary["iterations"] == 20
