"""Rhythm plans: the simulator's rhythm of a prompt, RR lists and records, bad rhythms refused by name, and the
scaffold the generator gives a model trained with it."""

import jax
import numpy as np
import pytest

from sediff_jax.diffusion.sampling import SamplerConfig
from sediff_jax.generation import (
    Generator,
    PromptError,
    RhythmError,
    make_prompt,
    read_prompts,
    rhythm_from_record,
    rhythm_from_rr,
    simulated_rhythm,
)
from sediff_jax.rhythm import rhythm_class
from sediff_jax.parallel import make_mesh
from sediff_jax.signal.phase import cardiac_phase, latent_times
from tests.generation.small_model import small_model


def _rr_cv(plan) -> float:
    rr = np.asarray(plan.rr_ms)
    return float(rr.std() / rr.mean())


@pytest.mark.parametrize("text, hr", [("sinus rhythm, normal ECG", 64.0), ("sinus tachycardia", 130.0),
                                      ("atrial fibrillation", 95.0), ("atrial flutter with 2:1 block", 150.0)])
def test_simulated_rhythm_has_the_requested_rate(text, hr):
    plan = simulated_rhythm(make_prompt(text, age=50, hr=hr), jax.random.key(0), 10.0)
    assert plan.source == "simulator" and plan.r_peaks_s[0] >= 0 and plan.r_peaks_s[-1] < 10.0
    assert abs(plan.hr_bpm - hr) < 0.5


def test_rhythm_classes_give_their_variability_and_are_seeded():
    def cvs(text, age=None):
        return [_rr_cv(simulated_rhythm(make_prompt(text, age=age), jax.random.key(s), 10.0)) for s in range(16)]

    assert np.median(cvs("sinus rhythm", age=40)) <= 0.06
    assert np.mean(cvs("atrial fibrillation")) >= 0.10
    assert np.median(cvs("sinus arrhythmia")) > np.median(cvs("sinus rhythm", age=40))
    assert np.median(cvs("atrial flutter")) < 0.03
    prompt = make_prompt("normal ECG")
    a, b = (simulated_rhythm(prompt, jax.random.key(5), 10.0) for _ in range(2))
    assert a == b and a != simulated_rhythm(prompt, jax.random.key(6), 10.0)
    assert abs(a.hr_bpm - 70.0) < 0.5  # the default rate when the prompt gives none
    assert rhythm_class("Atrial fibrillation with rapid ventricular response") == "atrial_fibrillation"
    assert rhythm_class("left bundle branch block") == "sinus"


def test_premature_ventricular_beat_is_early_with_a_compensatory_pause():
    plan = simulated_rhythm(make_prompt("sinus rhythm with premature ventricular contractions", hr=60),
                            jax.random.key(1), 10.0)
    rr = np.asarray(plan.rr_ms)
    short = int(np.argmin(rr))
    assert rr[short] < 0.75 * np.median(rr) and rr[short + 1] > 1.25 * np.median(rr)
    assert abs(rr[short] + rr[short + 1] - 2 * np.median(rr)) < 0.1 * np.median(rr)


@pytest.mark.parametrize("text, every, origin", [
    ("Sinus rhythm. Bigeminal pattern (unknown origin, SV or Ventricular). Ventricular premature complex.", 2,
     "ventricular"),
    ("Sinus rhythm. Bigeminal pattern (unknown origin, SV or Ventricular). Atrial premature complex.", 2, "atrial"),
    ("Sinus rhythm. Trigeminal pattern (unknown origin, SV or Ventricular).", 3, "ventricular"),
])
def test_bigeminal_and_trigeminal_patterns_make_every_second_or_third_beat_premature(text, every, origin):
    """PTB-XL's bigeminal records alternate short and long RR (successive differences alternate in sign, median
    1.0; short / long RR 0.48-0.62, interquartile). Every `every`-th beat comes at 0.65 of the RR: a ventricular
    one with a full compensatory pause (short + long = 2 RR), an atrial one resetting (long = 1 RR)."""
    from sediff_jax.rhythm.clinical import COUPLING, ectopic_origin

    assert ectopic_origin(text, "ventricular") == origin
    assert rhythm_class(text) == ("bigeminy" if every == 2 else "trigeminy")
    for seed in range(4):
        rr = np.asarray(simulated_rhythm(make_prompt(text, hr=72), jax.random.key(seed), 10.0).rr_ms)
        premature = np.flatnonzero(rr[:-1] < 0.8 * rr[1:])  # an RR well short of the next
        assert len(premature) >= len(rr) // every - 1 and np.all(np.diff(premature) == every)
        after = premature[premature + 1 < len(rr)]
        expected_long = (2 - COUPLING) if origin == "ventricular" else 1.0
        ratios = rr[after] / rr[after + 1]  # (each RR also varies as sinus rhythm does, CV ~0.03)
        np.testing.assert_allclose(ratios, COUPLING / expected_long, rtol=0.12)
        assert abs(np.median(ratios) / (COUPLING / expected_long) - 1) < 0.06
        if every == 2:
            signs = np.sign(np.diff(rr))
            assert np.all(signs[1:] * signs[:-1] < 0)  # strict alternation
    plan = simulated_rhythm(make_prompt(text, hr=72), jax.random.key(0), 10.0)
    assert abs(plan.hr_bpm - 72) < 0.5


def test_rr_lists_give_their_beats_and_bad_ones_are_refused_by_name():
    plan = rhythm_from_rr([800, 850, 900], 10.0)
    np.testing.assert_allclose(plan.r_peaks_s, [0.3, 1.1, 1.95, 2.85])
    np.testing.assert_allclose(plan.rr_ms, [800, 850, 900])
    with pytest.raises(RhythmError, match="at least 2 beats"):
        rhythm_from_rr([], 10.0)
    with pytest.raises(RhythmError, match="RR interval 2 is 150 ms, outside 200-3000"):
        rhythm_from_rr([800, 150], 10.0)
    with pytest.raises(RhythmError, match="more than fit the 10 s record"):
        rhythm_from_rr([1000] * 10, 10.0)


def test_prompts_take_rr_lists_from_flags_and_files(tmp_path):
    prompt = make_prompt("normal ECG", rr_ms="800, 820 780")
    assert prompt.rr_ms == (800.0, 820.0, 780.0) and abs(prompt.hr - 75.0) < 0.01  # hr token from the RR list
    assert make_prompt("normal ECG", hr=73, rr_ms=[800]).hr == 73  # within 5 % of the list's 75 bpm
    with pytest.raises(PromptError, match=r"--hr=150 bpm disagrees with --rr_ms \(mean RR 1200 ms = 50 bpm\)"):
        make_prompt("normal ECG", hr=150, rr_ms=[1200])
    for bad, message in [("800,abc", "rr_ms must be a number"), ("100", r"rr_ms\[0\]=100.0 is outside"),
                         ({"a": 1}, "must be a list")]:
        with pytest.raises(PromptError, match=message):
            make_prompt("normal ECG", rr_ms=bad)
    path = tmp_path / "prompts.csv"
    path.write_text('text,hr,rr_ms\nnormal ECG,,"900,910"\nsinus tachycardia,120,\n')
    prompts = read_prompts(path)
    assert prompts[0].rr_ms == (900.0, 910.0) and prompts[1].rr_ms is None
    path.write_text('text,rr_ms\nnormal ECG,"900,5000"\n')
    with pytest.raises(PromptError, match=r"row 2: rr_ms\[1\]=5000.0 is outside"):
        read_prompts(path)


def test_rhythm_from_a_real_record_follows_its_r_peaks(data_dir):
    from sediff_jax.data.canonical import CanonicalConfig, canonicalize
    from sediff_jax.data.wfdb_reader import read_record

    path = str(data_dir / "ptb-xl" / "records100" / "00000" / "00001_lr")
    plan = rhythm_from_record(path, 10.0)
    raw = read_record(path)
    record = canonicalize(raw, CanonicalConfig(fs=raw.fs, duration_s=10.0))
    np.testing.assert_allclose(plan.r_peaks_s, record.r_peaks / record.fs)
    assert plan.source == f"record:{path}" and 40 < plan.hr_bpm < 120
    with pytest.raises(RhythmError, match="--rhythm_from=.*nowhere"):
        rhythm_from_record(str(data_dir / "nowhere"), 10.0)


def test_a_record_whose_rhythm_runs_out_is_refused_not_extrapolated(tmp_path):
    """A 2 s record for a 10 s ECG gave 11 beats, 2 of them the record's; a record whose beats stop early the same."""
    from tests.data.wfdb_fixtures import simulated_ecg, write_record

    write_record(str(tmp_path), "short", simulated_ecg(fs=500.0, duration_s=2.0), 500.0)
    with pytest.raises(RhythmError, match=r"short: the record has 2.00 s of signal, the ECG is 10 s"):
        rhythm_from_record(str(tmp_path / "short"), 10.0)
    ecg = simulated_ecg(fs=500.0, duration_s=10.0).copy()
    ecg[600:] = ecg[600:].mean(axis=0) + 0.001 * np.sin(np.arange(ecg.shape[0] - 600))[:, None]  # beats stop
    write_record(str(tmp_path), "stops", ecg, 500.0)
    with pytest.raises(RhythmError, match=r"stops: the record has no detected beats for .* s at its end"):
        rhythm_from_record(str(tmp_path / "stops"), 10.0)
    write_record(str(tmp_path), "whole", simulated_ecg(fs=500.0, duration_s=10.0), 500.0)
    assert rhythm_from_record(str(tmp_path / "whole"), 10.0).hr_bpm == pytest.approx(70, abs=3)


def test_the_generator_gives_a_scaffold_model_the_planned_phase():
    model = small_model(rhythm=True)
    generator = Generator(model, mesh=make_mesh(jax.devices()[:1]), max_batch=8)
    prompts = [make_prompt("sinus rhythm", hr=70), make_prompt("normal ECG", rr_ms=[600, 700])]
    plans = generator.plan_rhythms(prompts, seed=3)
    assert plans[0].source == "simulator" and plans[1].rr_ms == pytest.approx((600.0, 700.0))
    assert plans == generator.plan_rhythms(prompts, seed=3)
    features = generator.rhythm_condition(plans)
    length = generator.latent_shape[0]
    assert features.shape == (2, length, 3)
    phase, _ = cardiac_phase(plans[1].r_peak_samples(model.fs), latent_times(length, model.num_samples // length))
    np.testing.assert_allclose(features[1, :, 0], np.cos(np.asarray(phase)), atol=1e-5)
    sampler = SamplerConfig(kind="ddim", num_steps=3, guidance_scale=2.0)
    ecg = generator.generate(prompts, seed=0, sampler=sampler)
    assert ecg.shape == (2, model.num_samples, 12) and np.all(np.isfinite(ecg))
    other = generator.generate(prompts, seed=0, sampler=sampler,
                               rhythms=[plans[0], rhythm_from_rr([400, 400, 400, 400], model.spec.duration_s)])
    assert np.abs(other[1] - ecg[1]).max() > 1e-4  # the scaffold reaches the output
    with pytest.raises(RhythmError, match="more than fit the 2.56 s record"):
        generator.plan_rhythms([make_prompt("normal ECG", rr_ms=[1000, 1000, 1000])])


def test_a_model_without_the_scaffold_refuses_a_given_rhythm(model):
    generator = Generator(model, mesh=make_mesh(jax.devices()[:1]), max_batch=8)
    assert generator.plan_rhythms([make_prompt("normal ECG")]) == [None]
    with pytest.raises(RhythmError, match="trained without the rhythm scaffold"):
        generator.plan_rhythms([make_prompt("normal ECG", rr_ms=[800])])


def test_beat_placement_accounts_for_every_requested_beat():
    """A simulated ECG's own R peaks are all placed; a requested beat where the ECG has none is counted as missed
    and sets the largest distance, whatever the median says."""
    from sediff_jax.signal.measurement import beat_placement
    from sediff_jax.signal.rpeaks import detect_r_peaks
    from tests.data.wfdb_fixtures import simulated_ecg

    ecg = simulated_ecg(fs=100.0, duration_s=10.0, hr=60.0)
    peaks = detect_r_peaks(ecg, 100.0) / 100.0
    placed = beat_placement(ecg, 100.0, peaks)
    assert placed["beats_placed"] == placed["beats_requested"] == len(peaks) >= 8 and placed["max_ms"] <= 20
    extra = np.sort(np.append(peaks, peaks[3] + 0.5))  # half-way between two beats: no R peak there
    missed = beat_placement(ecg, 100.0, extra)
    assert missed["beats_requested"] == len(peaks) + 1 and missed["beats_placed"] == len(peaks)
    assert missed["max_ms"] >= 400 and missed["median_ms"] <= 20
    assert beat_placement(np.zeros((1000, 12), np.float32), 100.0, peaks)["median_ms"] is None


def test_prompts_name_records_for_their_rhythm(tmp_path, repo_root):
    """A prompt's rhythm_from record (a CSV column, relative to the file) is planned like rhythm_from_record,
    each record read once; it cannot be combined with rr_ms, and a model without the scaffold refuses it."""
    records = repo_root / "examples" / "records"
    (tmp_path / "ecgs").symlink_to(records)
    prompts_file = tmp_path / "prompts.csv"
    prompts_file.write_text("text,hr,rhythm_from\n"
                            "left bundle branch block,,ecgs/atrial_fibrillation_0\n"
                            "normal ECG,70,\n"
                            f"sinus rhythm,,{records / 'sinus_arrhythmia_0'}\n"
                            "atrial fibrillation,,ecgs/atrial_fibrillation_0\n")
    prompts = read_prompts(prompts_file)
    assert prompts[0].rhythm_from == str(tmp_path / "ecgs" / "atrial_fibrillation_0") and prompts[1].rhythm_from is None
    generator = Generator(small_model(rhythm=True), mesh=make_mesh(jax.devices()[:1]), max_batch=8)
    duration = generator.model.spec.duration_s
    plans = generator.plan_rhythms(prompts, seed=1)
    assert plans[0] == rhythm_from_record(prompts[0].rhythm_from, duration) == plans[3]
    assert plans[1].source == "simulator" and plans[2].source == f"record:{records / 'sinus_arrhythmia_0'}"
    with pytest.raises(PromptError, match="rr_ms and --rhythm_from both give the rhythm"):
        make_prompt("normal ECG", rr_ms=[800, 800], rhythm_from="x")
    with pytest.raises(RhythmError, match="--rhythm_from=.*nowhere"):
        generator.plan_rhythms([make_prompt("normal ECG", rhythm_from=str(tmp_path / "nowhere"))])
    plain = Generator(small_model(), mesh=make_mesh(jax.devices()[:1]), max_batch=8)
    with pytest.raises(RhythmError, match="trained without the rhythm scaffold"):
        plain.plan_rhythms(prompts[:1])
