"""The paired protocol on real PTB-XL records: a record against itself scores zero everywhere, a known
offset gives that MAE, and experiments/evaluate.py writes its JSON and Markdown report."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.data.prepare import PrepareConfig, read_entries
from sediff_jax.evaluation.paired import (markdown_table, paired_differences, paired_metrics,
                                          paired_per_record, real_pairs)
from sediff_jax.evaluation.physiology import summarize


@pytest.fixture(scope="module")
def pairs(data_dir):
    canonical = CanonicalConfig(fs=100.0, duration_s=10.0)
    entries = read_entries(PrepareConfig(dataset="ptbxl", out_dir="", source_dir=str(data_dir / "ptb-xl"),
                                         canonical=canonical))
    return real_pairs(entries, canonical, "test", limit=6)


def test_a_record_against_itself_scores_zero_and_an_offset_is_its_mae(pairs):
    assert len(pairs.record_ids) == 6 and pairs.ecg.shape == (6, 1000, 12)
    assert all(p.text and p.hr for p in pairs.prompts)
    hr = [p.hr for p in pairs.prompts]
    same = paired_metrics(pairs.ecg, pairs.ecg, pairs.fs, hr)
    assert same["mae_mv"]["mean"] == 0 and same["nrmse"]["mean"] == 0
    assert same["hr_error_bpm"]["mean"] < 1e-9 and same["unmeasurable_hr"] == 0
    for name, summary in same["intervals"].items():
        assert summary["n"] >= 4 and summary["mean"] == 0, name
    shifted = paired_metrics(pairs.ecg + 0.1, pairs.ecg, pairs.fs, hr)
    assert shifted["mae_mv"]["median"] == pytest.approx(0.1, rel=1e-5)
    # a constant offset in every lead breaks Einthoven (I - II + III = 0.1 mV, ...)
    assert shifted["limb_residual_mv"]["median"] > 0.05 > same["limb_residual_mv"]["median"]
    table = markdown_table(shifted)
    assert "| MAE (mV) | 0.1 | 0.1 | 6 |" in table and "| QT error (ms) |" in table


def test_per_record_values_summarise_to_the_metrics_and_differ_record_by_record(pairs):
    hr = [p.hr for p in pairs.prompts]
    scale = np.linspace(0.01, 0.1, 6, dtype=np.float32)[:, None, None]  # records of unequal difficulty
    noise = np.random.default_rng(0).normal(0, 1, pairs.ecg.shape).astype(np.float32) * scale
    rows = paired_per_record(pairs.ecg + noise, pairs.ecg, pairs.fs, hr)
    assert rows["mae_mv"].shape == (6,) and len(rows["intervals_generated"]) == 6
    np.testing.assert_allclose(rows["mae_mv"], np.abs(noise).mean(axis=(1, 2)), rtol=1e-5)
    assert (paired_metrics(pairs.ecg + noise, pairs.ecg, pairs.fs, hr, rows)
            == paired_metrics(pairs.ecg + noise, pairs.ecg, pairs.fs, hr))
    # 20 % more noise in every record: 20 % more MAE in each, so the differences are 0.2 x each record's MAE and
    # their spread (the paired standard error) is a fifth of the records' own.
    worse = paired_per_record(pairs.ecg + 1.2 * noise, pairs.ecg, pairs.fs, hr)
    difference, alone = paired_differences(worse, rows)["mae_mv"], summarize(rows["mae_mv"])
    assert difference["n"] == 6
    assert difference["mean"] == pytest.approx(0.2 * alone["mean"], rel=1e-4)
    assert difference["sem"] == pytest.approx(0.2 * alone["sem"], rel=1e-3)
    assert paired_differences(rows, rows)["mae_mv"]["mean"] == 0
    with pytest.raises(ValueError, match="not the same records"):
        paired_differences({"mae_mv": rows["mae_mv"][:3]}, rows)


def test_score_detects_r_peaks_once_per_generated_ecg_and_returns_its_rows(pairs, monkeypatch):
    """`score` measures each generated ECG once (R peaks -> heart rate and median beat) and takes the real
    records' stored peaks; its rows are the paired summary's own per-record values."""
    import sediff_jax.evaluation.physiology as physiology
    import sediff_jax.evaluation.rhythm as rhythm
    import sediff_jax.signal.delineation as delineation
    import sediff_jax.signal.measurement as measurement
    from sediff_jax.evaluation.runner import score
    from sediff_jax.signal.rpeaks import detect_r_peaks

    calls = []

    def counted(ecg, fs, **kwargs):
        calls.append(len(ecg))
        return detect_r_peaks(ecg, fs, **kwargs)

    for module in (physiology, rhythm, delineation, measurement):
        monkeypatch.setattr(module, "detect_r_peaks", counted)
    generated = pairs.ecg + np.float32(0.02) * np.random.default_rng(1).normal(size=pairs.ecg.shape).astype(np.float32)
    summary, rows = score(generated, pairs)
    assert len(calls) == len(pairs.record_ids) == 6
    assert summary["paired"] == paired_metrics(generated, pairs.ecg, pairs.fs, pairs.requested_hr_bpm, rows)
    assert summary["distribution"]["computed"] is False and rows["mae_mv"].shape == (6,)
    assert sum(bool(i) for i in rows["intervals_real"]) >= 5


def test_evaluate_cli_writes_metrics_and_report(repo_root, exported_model_dir, data_dir, tmp_path):
    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--checkpoint={exported_model_dir}",
                             f"--source_dir={data_dir / 'ptb-xl'}", "--num_samples=3", "--steps=2", f"--out={out}",
                             "--save_generated", "--vae_reference"], cwd=repo_root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "generated.npz") as saved:  # the ECGs that were scored, with what they were made from
        assert saved["ecg"].shape[::2] == (3, 12) and np.all(np.isfinite(saved["ecg"])) and saved["fs"] > 0
        assert saved["record_ids"].tolist() == metrics["records"] and all(saved["texts"])
        assert np.all((saved["hr_bpm"] > 30) & (saved["hr_bpm"] < 200))
        spread = np.ptp(saved["ecg"].astype(np.float64), axis=1).std(axis=0).mean()  # the generated amplitudes'
    amplitude = metrics["amplitude"]                                                   # spread, as written
    assert amplitude["std_generated_mv"] == pytest.approx(spread, rel=1e-4)
    assert amplitude["spread_ratio"] == pytest.approx(amplitude["std_generated_mv"] / amplitude["std_real_mv"])
    assert "Amplitude spread" in (out / "report.md").read_text()
    assert len(metrics["records"]) == 3 and metrics["paired"]["n"] == 3 and metrics["split"] == "test"
    assert np.isfinite(metrics["paired"]["mae_mv"]["mean"])
    assert "| MAE (mV) |" in (out / "report.md").read_text()
    assert not metrics["distribution"]["computed"] and "3 records" in metrics["distribution"]["why"]
    bad_encoder = tmp_path / "encoder.safetensors"
    bad_encoder.write_bytes(b"not a safetensors file")
    bad = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--checkpoint={exported_model_dir}",
                          f"--encoder={bad_encoder}", f"--out={tmp_path / 'y'}"], cwd=repo_root, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--encoder" in bad.stderr and "encoder.safetensors" in bad.stderr
    assert not (tmp_path / "y").exists()
    bad = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--checkpoint={tmp_path / 'none'}",
                          f"--out={tmp_path / 'x'}"], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--checkpoint" in bad.stderr and not (tmp_path / "x").exists()


def test_record_rhythm_gives_a_scaffold_model_each_records_own_beats(pairs, model):
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation.runner import generate_paired
    from sediff_jax.generation.model import SEDiffModel
    from sediff_jax.generation.rhythm import RhythmError
    from tests.generation.small_model import small_model

    plans = pairs.rhythms(10.0)
    assert sum(p is not None for p in plans) >= 5
    for plan, peaks, record_id in zip(plans, pairs.r_peaks, pairs.record_ids):
        if plan is not None:
            np.testing.assert_allclose(plan.r_peak_samples(pairs.fs), peaks, atol=1e-9)
            assert plan.source == f"record:{record_id}" and plan.rhythm == "given"
    sampler = SamplerConfig(kind="ddim", num_steps=2, guidance_scale=1.0)
    scaffold = small_model(rhythm=True)
    assert isinstance(scaffold, SEDiffModel)
    n = scaffold.num_samples  # the small model makes 2.56 s: the records' first 2.56 s and their beats
    pairs = dataclasses.replace(pairs, ecg=pairs.ecg[:, :n], r_peaks=[p[p < n] for p in pairs.r_peaks])
    assert sum(p is not None for p in pairs.rhythms(scaffold.spec.duration_s)) >= 4
    from_record, _ = generate_paired(scaffold, pairs, sampler, seed=0, experience="off", rhythm="record")
    again, _ = generate_paired(scaffold, pairs, sampler, seed=0, experience="off", rhythm="record")
    planned, _ = generate_paired(scaffold, pairs, sampler, seed=0, experience="off", rhythm="plan")
    np.testing.assert_array_equal(from_record, again)
    assert from_record.shape == pairs.ecg.shape and not np.allclose(from_record, planned)
    with pytest.raises(RhythmError, match="without the rhythm scaffold"):
        generate_paired(model, pairs, sampler, seed=0, experience="off", rhythm="record")
    with pytest.raises(ValueError, match="rhythm 'nope'"):
        generate_paired(model, pairs, sampler, rhythm="nope")


def test_record_amplitudes_give_each_ecg_its_records_lead_amplitudes(pairs, model):
    """amplitudes='record' rescales each generated ECG to its own record's lead amplitudes (`lead_amplitudes` of
    the record, what a prompt naming it in amplitudes_from gets): the same ECGs as the model's own rescaled by
    `match_lead_amplitudes`, the chest leads (untouched by the limb projection) at exactly the record's amplitude
    at strength 1 wherever the gain is within its clip. With lead_amplitudes='model' it is an error."""
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation.runner import generate_paired
    from sediff_jax.generation import AmplitudeError
    from sediff_jax.generation.amplitudes import MAX_GAIN, match_lead_amplitudes
    from sediff_jax.signal import lead_amplitudes

    n = model.num_samples
    pairs = dataclasses.replace(pairs, ecg=pairs.ecg[:, :n], r_peaks=[p[p < n] for p in pairs.r_peaks])
    sampler = SamplerConfig(kind="ddim", num_steps=2, guidance_scale=1.0, amplitude_strength=1.0)
    own, _ = generate_paired(model, pairs, sampler, seed=3, experience="off")  # no corpus: the model's own
    fitted, _ = generate_paired(model, pairs, sampler, seed=3, experience="off", amplitudes="record")
    target = lead_amplitudes(pairs.ecg)
    np.testing.assert_array_equal(fitted, match_lead_amplitudes(own, target, True, 1.0))
    gain = target / lead_amplitudes(own)
    free = (gain > 1 / MAX_GAIN) & (gain < MAX_GAIN)
    free[:, :6] = False  # limb leads: the Einthoven projection mixes them after scaling
    assert free.sum() >= 12
    np.testing.assert_allclose(lead_amplitudes(fitted)[free], target[free], rtol=1e-4)
    with pytest.raises(AmplitudeError, match="lead amplitudes are given, and lead_amplitudes='model'"):
        generate_paired(model, pairs, dataclasses.replace(sampler, lead_amplitudes="model"), amplitudes="record")
    with pytest.raises(ValueError, match="amplitudes 'nope'"):
        generate_paired(model, pairs, sampler, amplitudes="nope")


def test_take_keeps_each_records_fields_together(pairs):
    sub = pairs.take([4, 1])
    assert sub.record_ids == [pairs.record_ids[4], pairs.record_ids[1]] and sub.fs == pairs.fs
    np.testing.assert_array_equal(sub.ecg, pairs.ecg[[4, 1]])
    assert sub.prompts == [pairs.prompts[4], pairs.prompts[1]]
    assert sub.superclasses == [pairs.superclasses[4], pairs.superclasses[1]]
    np.testing.assert_array_equal(sub.r_peaks[0], pairs.r_peaks[4])
    assert list(sub.labelled) == [pairs.labelled[4], pairs.labelled[1]]
