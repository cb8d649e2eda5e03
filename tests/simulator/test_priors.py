"""Per-class priors: building, the file format, loading errors, and the shipped PTB-XL prior."""

import json

import jax
import numpy as np
import pytest

from sediff_jax import simulator as sim
from sediff_jax.data.classes import SEDIFF_CLASSES
from sediff_jax.simulator import priors
from sediff_jax.simulator.priors import PriorError, RecordFit


def _fits(n, seed=0):
    rng = np.random.default_rng(seed)
    base = sim.dipole_params().waves
    fits = []
    for k in range(n):
        values = {f: np.asarray(getattr(base, f)) + rng.normal(0, 0.01, (3, 6)).astype(np.float32)
                  for f in priors.WAVE_FIELDS}
        values.update(hr_mean=np.float32(60 + k), hr_std=np.float32(1.0 + 0.1 * k))
        fits.append(RecordFit(values, median_correlation=0.95 - 0.2 * (k == 0), loss=0.001 * (k + 1), converged=k % 2 == 0))
    return fits


def test_build_prior_means_spreads_and_quality():
    fits = _fits(6)
    labels = [("sediff/sinus_rhythm",), ("sediff/sinus_rhythm", "x"), ("sediff/sinus_rhythm",), ("x",), ("x",), ("y",)]
    prior = priors.build_prior(fits, labels, {"note": "test"}, min_count=2, min_correlation=0.8)
    assert set(prior.class_names) == {"all", "sediff/sinus_rhythm", "x"}  # 'y' has 1 fit, below min_count
    sinus = prior["sediff/sinus_rhythm"]
    usable = [fits[1], fits[2]]  # fits[0] has median correlation 0.75: excluded from the mean
    assert sinus.count == 2 and sinus.quality["excluded"] == 1
    np.testing.assert_allclose(sinus.mean["theta"], np.mean([f.values["theta"] for f in usable], 0), rtol=1e-6)
    np.testing.assert_allclose(sinus.std["amplitude"], np.std([f.values["amplitude"] for f in usable], 0), rtol=1e-5)
    assert float(sinus.mean["hr_mean"]) == pytest.approx(61.5)
    assert sinus.quality["median_correlation"]["p50"] == pytest.approx(0.95)
    assert prior["all"].count == 5 and prior["all"].quality["converged_fraction"] == pytest.approx(0.5)


def test_save_load_round_trip(tmp_path):
    prior = priors.build_prior(_fits(4), [("a",)] * 4, {"dataset": "unit"}, min_count=2)
    path = priors.save_prior(prior, tmp_path / "p.json")
    back = priors.load_prior(path)
    assert back.class_names == prior.class_names and back.provenance == {"dataset": "unit"}
    for f in priors.FIELDS:
        np.testing.assert_allclose(back["a"].mean[f], prior["a"].mean[f], atol=1e-5)
    ecg = sim.simulate(back.params("a", hr_mean=75.0), jax.random.key(0), sim.SimulatorConfig(duration_s=1.0, fs=100.0))
    assert ecg.shape == (100, 12) and np.all(np.isfinite(ecg))
    table = back.wave_table(["a", "all"])
    assert table.theta.shape == (2, 3, 6)


def test_load_errors_name_the_file_and_problem(tmp_path):
    with pytest.raises(PriorError, match="prior file not found"):
        priors.load_prior(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PriorError, match="bad.json: cannot read"):
        priors.load_prior(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(PriorError, match="not a simulator prior"):
        priors.load_prior(other)
    data = priors.build_prior(_fits(4), [()] * 4, {}).to_json()
    data["version"] = 99
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(data))
    with pytest.raises(PriorError, match="prior version 99"):
        priors.load_prior(newer)
    prior = priors.build_prior(_fits(4), [()] * 4, {})
    with pytest.raises(PriorError, match="'sediff/af' is not in this prior"):
        prior["sediff/af"]
    with pytest.raises(ValueError, match="hr_mean=500"):
        prior.params("all", hr_mean=500.0)


def test_shipped_prior_is_the_ptbxl_train_split():
    prior = priors.load_prior()
    prov = prior.provenance
    assert prov["dataset"] == "ptbxl" and prov["split"] == "train" and prov["records_fitted"] >= 300
    assert prov["git_commit"] and prov["fit_config"]["mode"] == "beat"
    for name in ("all", "superclass/NORM", "superclass/MI", "sediff/sinus_rhythm", "sediff/atrial_fibrillation"):
        assert prior[name].count >= 3, name
    everyone = prior["all"]
    assert everyone.quality["median_correlation"]["p50"] > 0.95
    assert 55 < float(everyone.mean["hr_mean"]) < 85
    # Physiology of the mean normal heart: upright R and T in lead II, P before R, T after.
    ecg = np.asarray(sim.simulate(prior.params("superclass/NORM", hr_mean=60.0, hr_std=0.0), jax.random.key(0),
                                  sim.SimulatorConfig(duration_s=2.0, fs=500.0)))
    _, per_lead = __import__("sediff_jax.simulator.fitting", fromlist=["x"]).wave_peak_times(
        prior["superclass/NORM"].params().waves, 60.0)
    lead_ii = ecg[:, 1]
    assert lead_ii.max() > 0.5 and lead_ii.max() == pytest.approx(np.abs(lead_ii).max())
    assert per_lead[1, 0] < -80 and 150 < per_lead[1, 4] < 400


def test_shipped_priors_load_by_name_and_the_full_ptbxl_one_covers_19_classes():
    assert set(priors.shipped_priors()) >= {"ptbxl500_train_v1", "ptbxl100_full_train_v2"}
    assert priors.prior_path("default") == priors.prior_path(None) == priors.DEFAULT_PRIOR_PATH
    assert priors.prior_path("ptbxl500_train_v1") == priors.DEFAULT_PRIOR_PATH
    full = priors.load_prior("ptbxl100_full_train_v2")
    assert full.provenance["max_per_class"] == 100 and full.provenance["records_in_split"] == 17418
    assert full["all"].count >= 1400 and full["all"].quality["median_correlation"]["p50"] > 0.95
    covered = {name.removeprefix("sediff/") for name in full.class_names if name.startswith("sediff/")}
    assert covered == set(SEDIFF_CLASSES) - {"ventricular_tachycardia"}  # PTB-XL has no VT record
    for name in ("sediff/atrial_flutter", "sediff/wolff_parkinson_white", "sediff/left_bundle_branch_block"):
        assert full[name].count >= 10, name
    with pytest.raises(PriorError, match="no such shipped prior.*ptbxl100_full_train_v2"):
        priors.load_prior("ptbxl_nope")

