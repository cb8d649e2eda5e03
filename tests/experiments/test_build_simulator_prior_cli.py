"""experiments/build_simulator_prior.py: MIMIC-IV-ECG layout and real PTB-XL records, fits file round trip."""

import subprocess
import sys

import numpy as np
import pytest

from sediff_jax.simulator.priors import FIELDS, load_prior
from tests.data.test_datasets import write_mimic_fixture


def _run(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.build_simulator_prior", *args], cwd=repo_root, capture_output=True,
        text=True, timeout=600,
    )


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_mimic_prior_and_rebuild_from_fits(repo_root, tmp_path):
    root = write_mimic_fixture(tmp_path / "mimic")
    out, fits = tmp_path / "prior.json", tmp_path / "fits.npz"
    result = _run(repo_root, "--dataset=mimic", f"--source_dir={root}", f"--out={out}", f"--fits_out={fits}",
                  "--min_count=1", "--max_iterations=30")
    assert result.returncode == 0, result.stderr[-3000:]
    prior = load_prior(out)
    # Every fixture report reads "Sinus rhythm. Possible anterior infarct ..." -> both SE-Diff classes.
    assert {"all", "sediff/sinus_rhythm", "sediff/infarct"} <= set(prior.class_names)
    assert prior.provenance["dataset"] == "mimic" and prior.provenance["split"] == "train"
    n = prior["all"].count
    assert n == prior.provenance["records_fitted"] >= 1
    assert abs(float(prior["all"].mean["hr_mean"]) - 70.0) < 2.0  # the fixture is simulated at 70 bpm

    rebuilt_path = tmp_path / "rebuilt.json"
    result = _run(repo_root, f"--from_fits={fits}", f"--out={rebuilt_path}", "--min_count=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rebuilt = load_prior(rebuilt_path)
    assert rebuilt.class_names == prior.class_names
    assert rebuilt.provenance["fit_config"] == prior.provenance["fit_config"]
    for f in FIELDS:
        np.testing.assert_array_equal(rebuilt["all"].mean[f], prior["all"].mean[f])


def test_ptbxl_prior_from_real_records(repo_root, tmp_path, data_dir):
    out = tmp_path / "ptbxl.json"
    result = _run(repo_root, f"--source_dir={data_dir / 'ptb-xl'}", "--fs=100", "--max_records=12",
                  "--max_iterations=40", "--min_count=2", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    prior = load_prior(out)
    assert prior.provenance["records_fitted"] == 12 and prior.provenance["fit_config"]["fs"] == 100.0
    assert {"all", "superclass/NORM", "statement/SR", "sediff/sinus_rhythm"} <= set(prior.class_names)
    assert prior["all"].quality["median_correlation"]["p50"] > 0.85


def test_bad_flags(repo_root, tmp_path):
    result = _run(repo_root, f"--source_dir={tmp_path / 'nope'}", f"--out={tmp_path / 'p.json'}")
    assert result.returncode != 0 and "is not a folder" in result.stderr
    result = _run(repo_root, f"--from_fits={tmp_path / 'nope.npz'}", f"--out={tmp_path / 'p.json'}")
    assert result.returncode != 0 and "not a per-record fits file" in result.stderr
    assert not (tmp_path / "p.json").exists()
