"""Lead amplitudes of a retrieved patient (`SamplerConfig(lead_amplitudes='retrieved')`): the robust
peak-to-peak measure against NumPy, the rescaling on real PTB-XL records, the per-prompt draw, and the generator
end to end against the same sampler with the model's own amplitudes."""

import dataclasses

import numpy as np
import pytest
import wfdb

from sediff_jax.checkpoints import CheckpointError
from sediff_jax.checkpoints.spec import ExperienceSpec
from sediff_jax.data.ptbxl import read_ptbxl
from sediff_jax.diffusion.sampling import SamplerConfig
from sediff_jax.experience import Profile, ProfileCorpus
from sediff_jax.generation import AmplitudeError, Generator, make_prompt
from sediff_jax.generation.outputs import sampler_summary
from sediff_jax.generation.amplitudes import (MAX_GAIN, draw_neighbour_amplitudes, match_lead_amplitudes,
                                             model_draws_amplitudes)
from sediff_jax.leads import LEAD_NAMES, limb_lead_residuals, project_to_lead_space
from sediff_jax.signal import lead_amplitudes

CHEST = slice(6, 12)


def _real_records(data_dir, count=6):
    """`count` PTB-XL 100 Hz records read with wfdb, (count, 1000, 12) mV in LEAD_NAMES order."""
    out = []
    for entry in read_ptbxl(str(data_dir / "ptb-xl"), fs=100)[:count]:
        record = wfdb.rdrecord(entry.path)
        names = [n.upper() for n in record.sig_name]
        out.append(record.p_signal[:1000, [names.index(n.upper()) for n in LEAD_NAMES]])
    return np.nan_to_num(np.stack(out)).astype(np.float32)


def test_lead_amplitudes_are_the_percentile_range_per_lead(data_dir):
    ecg = _real_records(data_dir, 3)
    expected = np.percentile(ecg, 99.5, axis=1) - np.percentile(ecg, 0.5, axis=1)
    np.testing.assert_allclose(lead_amplitudes(ecg), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lead_amplitudes(ecg[0], quantile=0.0), np.ptp(ecg[0], axis=0), rtol=1e-6)
    spiked = ecg[0].copy()
    spiked[100, 1] += 20.0  # one sample of a 1,000 does not set the amplitude
    assert abs(lead_amplitudes(spiked)[1] - lead_amplitudes(ecg[0])[1]) < 0.05
    with pytest.raises(ValueError, match="NaN or inf"):
        lead_amplitudes(np.where(np.arange(1000)[:, None] == 5, np.nan, ecg[0]))
    with pytest.raises(ValueError, match="quantile"):
        lead_amplitudes(ecg, quantile=0.5)


def test_matching_gives_each_lead_the_target_amplitude_of_another_real_record(data_dir):
    ecg = _real_records(data_dir, 6)
    source, donor = ecg[:3], ecg[3:]
    target = lead_amplitudes(donor)
    free = match_lead_amplitudes(source, target, exact_limb_leads=False, max_gain=100)  # (00001 is low-voltage)
    np.testing.assert_allclose(lead_amplitudes(free), target, rtol=1e-4)  # every lead exact without the projection
    # the waveform is kept: each lead is its source lead times a positive constant
    gains = free[:, 300] / source[:, 300]
    np.testing.assert_allclose(free, source * gains[:, None], rtol=1e-4, atol=1e-5)
    exact = match_lead_amplitudes(source, target, max_gain=100)
    assert np.abs(limb_lead_residuals(exact)).max() < 1e-5  # Einthoven and Goldberger hold after the rescaling
    np.testing.assert_allclose(lead_amplitudes(exact)[:, CHEST], target[:, CHEST], rtol=1e-4)
    limb_error = np.abs(lead_amplitudes(exact)[:, :6] / target[:, :6] - 1)
    assert np.median(limb_error) < 0.1  # the limb leads come close (six targets, two degrees of freedom)
    # a consistent ECG already at its target is left as it is
    consistent = project_to_lead_space(source)
    np.testing.assert_allclose(match_lead_amplitudes(consistent, lead_amplitudes(consistent)), consistent,
                               rtol=1e-4, atol=1e-5)


def test_strength_moves_each_lead_part_way_on_a_log_scale(data_dir):
    ecg = _real_records(data_dir, 6)
    source, target = ecg[:3], lead_amplitudes(ecg[3:])
    half = match_lead_amplitudes(source, target, exact_limb_leads=False, strength=0.5, max_gain=100)
    np.testing.assert_allclose(lead_amplitudes(half), np.sqrt(lead_amplitudes(source) * target), rtol=1e-4)
    np.testing.assert_array_equal(match_lead_amplitudes(source, target, strength=0.0), source)
    with pytest.raises(ValueError, match="strength=1.5 must be in"):
        match_lead_amplitudes(source, target, strength=1.5)
    with pytest.raises(ValueError, match="amplitude_strength=-0.1"):
        SamplerConfig(amplitude_strength=-0.1)


def test_matching_keeps_leads_without_a_target_and_clips_the_gain(data_dir):
    ecg = _real_records(data_dir, 2)
    target = lead_amplitudes(ecg) * 10.0
    target[0, 7] = np.nan
    out = match_lead_amplitudes(ecg, target, exact_limb_leads=False)
    np.testing.assert_array_equal(out[0, :, 7], ecg[0, :, 7])
    np.testing.assert_allclose(lead_amplitudes(out)[1], lead_amplitudes(ecg)[1] * MAX_GAIN, rtol=1e-4)
    with pytest.raises(ValueError, match="must be > 0 mV"):
        match_lead_amplitudes(ecg, np.zeros((2, 12)))
    with pytest.raises(ValueError, match=r"target must be \(2, 12\)"):
        match_lead_amplitudes(ecg, np.ones((3, 12)))
    with pytest.raises(ValueError, match=r"ecg must be \(batch, time, 12\)"):
        match_lead_amplitudes(ecg[..., :8], np.ones((2, 12)))


def test_each_prompt_draws_one_neighbour_of_its_own_uniformly():
    table = np.arange(1, 61, dtype=np.float32).reshape(5, 12)
    neighbours = [table, table[:0], np.vstack([table[:2], np.full((1, 12), np.nan)])]
    drawn = draw_neighbour_amplitudes(neighbours, seed=3)
    assert any((drawn[0] == row).all() for row in table)
    assert np.isnan(drawn[1]).all()  # no neighbour: keep the model's amplitudes
    assert any((drawn[2] == row).all() for row in table[:2])  # a row with an unmeasured lead is never drawn
    np.testing.assert_array_equal(draw_neighbour_amplitudes(neighbours, seed=3), drawn)
    np.testing.assert_array_equal(draw_neighbour_amplitudes(neighbours[:1], seed=3), drawn[:1])  # batch-independent
    assert np.isfinite(draw_neighbour_amplitudes(neighbours[:1], seed=-7)).all()  # any integer seed, as jax's keys
    counts = np.bincount([int(draw_neighbour_amplitudes([table], seed)[0, 0] - 1) // 12 for seed in range(1000)],
                         minlength=5)
    assert counts.min() > 150 and counts.max() < 250  # uniform over the 5 (binomial sd 13)


@pytest.fixture
def experience_model(model, tmp_path):
    """The small model as if trained with experience, its corpus (10 training profiles: 5 NORM, 5 AFIB, each with
    its own lead amplitudes at 100 Hz) in its experience directory."""
    profiles = [Profile(f"p/{i:02d}", f"patient{i}", "train", 40.0 + i, "male" if i % 2 else "female",
                        {"diagnostic": ("NORM",) if i < 5 else (), "rhythm": ("AFIB",) if i >= 5 else ()})
                for i in range(10)]
    corpus = ProfileCorpus.from_profiles(profiles, ("diagnostic", "rhythm"),
                                         {"NORM": "normal ECG", "AFIB": "atrial fibrillation"}, "test")
    amplitudes = {f"p/{i:02d}": np.full(12, 0.5 + 0.1 * i, np.float32) for i in range(10)}
    corpus.with_amplitudes(amplitudes, 100.0).save(tmp_path / "profiles.npz")
    spec = model.spec.replace(experience=ExperienceSpec(used=True, dir=str(tmp_path), max_tokens=16))
    return dataclasses.replace(model, spec=spec, source=str(tmp_path / "model")), corpus, tmp_path


def test_the_generator_rescales_its_own_ecgs_to_a_retrieved_patient(experience_model):
    model, corpus, where = experience_model
    prompts = [make_prompt("normal ECG", age=42, sex="F", hr=70), make_prompt("atrial fibrillation", hr=110),
               make_prompt("sinus bradycardia", hr=50)]  # the last names nothing the corpus knows
    generator = Generator(model, max_batch=8)
    plain = SamplerConfig(kind="ddim", num_steps=4, guidance_scale=2.0, lead_amplitudes="model")
    drawn = generator.retrieved_amplitudes(prompts, seed=5)
    assert (drawn[0] >= 0.5).all() and (drawn[0] <= 0.9 + 1e-6).all()  # a NORM patient's (0.5-0.9 mV)
    assert (drawn[1] >= 1.0 - 1e-6).all()  # an AFIB patient's (1.0-1.4 mV)
    assert np.isnan(drawn[2]).all()
    own = generator.generate(prompts, seed=5, sampler=plain)
    retrieved = generator.generate(prompts, seed=5, sampler=dataclasses.replace(
        plain, lead_amplitudes="retrieved", amplitude_strength=1.0))
    np.testing.assert_array_equal(retrieved, match_lead_amplitudes(own, drawn))  # the same noise, rescaled
    np.testing.assert_array_equal(retrieved[2], own[2])
    part = dataclasses.replace(plain, lead_amplitudes="retrieved", amplitude_strength=0.75)
    np.testing.assert_array_equal(generator.generate(prompts, seed=5, sampler=part),
                                  match_lead_amplitudes(own, drawn, strength=0.75))
    assert "(strength 0.75)" in part.describe()
    # the default sampler ('auto', strength 0.75) retrieves here, as the corpus has amplitudes
    np.testing.assert_array_equal(generator.generate(prompts, seed=5, sampler=SamplerConfig(num_steps=4)),
                                  generator.generate(prompts, seed=5, sampler=part))
    assert model_draws_amplitudes(model)
    assert generator.lead_amplitude_source(SamplerConfig()) == "retrieved"
    assert generator.lead_amplitude_source(SamplerConfig(), experience="off") == "model"
    summary = sampler_summary(SamplerConfig(), 3.0, generator.lead_amplitude_source(SamplerConfig()))
    assert summary["lead_amplitudes"] == "retrieved" and summary["amplitude_strength"] == 0.75
    assert sampler_summary(plain, 3.0)["amplitude_strength"] is None  # the model's: no strength applies
    named = sampler_summary(plain, 3.0, "model", from_records=True)  # ... but prompts naming a record take theirs
    assert named["amplitudes_from_records"] and named["amplitude_strength"] == plain.amplitude_strength
    auto = dataclasses.replace(plain, lead_amplitudes="auto", amplitude_strength=1.0)
    assert generator.has_retrieved_amplitudes
    np.testing.assert_array_equal(generator.generate(prompts, seed=5, sampler=auto), retrieved)
    np.testing.assert_array_equal(generator.generate(prompts, seed=5, sampler=auto, experience="off"),
                                  generator.generate(prompts, seed=5, sampler=plain, experience="off"))
    assert dataclasses.replace(plain, lead_amplitudes="retrieved", amplitude_strength=1.0).describe().endswith(
        "lead amplitudes of a retrieved patient")

    corpus.save(where / "profiles.npz")  # the same corpus without amplitudes: 'auto' keeps the model's
    assert not Generator(model, max_batch=8).has_retrieved_amplitudes and not model_draws_amplitudes(model)
    with pytest.raises(CheckpointError, match="no lead amplitudes; rebuild it with .* --amplitude_fs=100"):
        Generator(model, max_batch=8).retrieved_amplitudes(prompts)
    corpus.with_amplitudes({"p/00": np.ones(12)}, 500.0).save(where / "profiles.npz")
    with pytest.raises(CheckpointError, match="measured at 500 Hz, the model generates at 100 Hz"):
        Generator(model, max_batch=8).retrieved_amplitudes(prompts)


def test_a_model_without_experience_cannot_draw_retrieved_amplitudes(model):
    generator = Generator(model, max_batch=8)
    assert not generator.has_retrieved_amplitudes and not model_draws_amplitudes(model)
    plain = SamplerConfig(num_steps=2, lead_amplitudes="model")
    np.testing.assert_array_equal(  # 'auto' falls back to the model's amplitudes
        generator.generate([make_prompt("normal ECG")], sampler=dataclasses.replace(plain, lead_amplitudes="auto")),
        generator.generate([make_prompt("normal ECG")], sampler=plain))
    with pytest.raises(CheckpointError, match="trained without experience"):
        generator.generate([make_prompt("normal ECG")], sampler=dataclasses.replace(plain, lead_amplitudes="retrieved"))
    with pytest.raises(ValueError, match="lead_amplitudes='patient'"):
        SamplerConfig(lead_amplitudes="patient")


def test_an_amplitude_conditioned_model_is_told_the_drawn_patient_amplitudes(experience_model):
    """A denoiser trained with amplitude_leads=12 is told the retrieved patient's amplitudes it draws (the same draw
    the gain uses), unknown (NaN) with lead_amplitudes='model' or where nothing was retrieved; being told changes
    the ECG before any gain (strength 0)."""
    from tests.generation.small_model import small_model

    _, corpus, where = experience_model
    base = small_model(amplitudes=True)
    spec = base.spec.replace(experience=ExperienceSpec(used=True, dir=str(where), max_tokens=16))
    model = dataclasses.replace(base, spec=spec, source=str(where / "model"))
    generator = Generator(model, max_batch=8)
    assert generator.uses_amplitudes and not Generator(experience_model[0], max_batch=8).uses_amplitudes
    prompts = [make_prompt("normal ECG", age=42, sex="F", hr=70), make_prompt("sinus bradycardia", hr=50)]
    told = []
    conditions = generator.conditions
    generator.conditions = lambda *args: told.append(args[3]) or conditions(*args)
    sampler = SamplerConfig(kind="ddim", num_steps=3, guidance_scale=2.0, lead_amplitudes="retrieved",
                            amplitude_strength=0.0)
    informed = generator.generate(prompts, seed=2, sampler=sampler)
    np.testing.assert_array_equal(told[-1][:2], generator.retrieved_amplitudes(prompts, seed=2))  # (then padding)
    assert np.isfinite(told[-1][0]).all() and np.isnan(told[-1][1]).all()
    uninformed = generator.generate(prompts, seed=2, sampler=dataclasses.replace(sampler, lead_amplitudes="model"))
    assert np.isnan(told[-1]).all()
    assert np.abs(informed[0] - uninformed[0]).max() > 1e-4  # told a patient's amplitudes: another ECG
    np.testing.assert_array_equal(informed[1], uninformed[1])  # nothing retrieved: unknown either way
    given = np.stack([np.full(12, np.nan, np.float32), np.linspace(0.4, 2.0, 12, dtype=np.float32)])
    generator.generate(prompts, seed=2, sampler=sampler, amplitudes=given)  # given where finite, else the draw
    np.testing.assert_array_equal(told[-1][0], generator.retrieved_amplitudes(prompts, seed=2)[0])
    np.testing.assert_array_equal(told[-1][1], given[1])
    with pytest.raises(ValueError, match=r"expected shape \(2, 12\)"):
        generator.generate(prompts, seed=2, sampler=sampler, amplitudes=given[:1])
    partial = given.copy()
    partial[1, 3] = np.nan
    for bad in (partial, -given):
        with pytest.raises(AmplitudeError, match="12 positive lead amplitudes"):
            generator.amplitude_targets(prompts, sampler, amplitudes=bad)
    batch = generator.conditions(prompts, "auto", None, None)
    assert batch["amplitudes"].shape == (2, 12) and np.isnan(batch["amplitudes"]).all()
    with pytest.raises(ValueError, match="positive and finite"):
        generator.conditions(prompts, "auto", None, -np.ones((2, 12)))
    with pytest.raises(ValueError, match=r"shape \(1, 12\) for 2 prompts"):
        generator.conditions(prompts, "auto", None, np.ones((1, 12)))


def _write_record(directory, name, ecg, fs=500):
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(LEAD_NAMES), p_signal=ecg.astype(np.float64),
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(directory))
    return str(directory / name)


def test_a_record_gives_its_lead_amplitudes_as_the_corpus_measures_them(data_dir, tmp_path):
    """amplitudes_from_record equals the corpus's own measurement of the record (`measure_amplitudes`, 100 Hz) and
    is close to the percentile range of wfdb's signal; a truncated, too short or flat-lead record is refused by
    name."""
    from sediff_jax.experience.builders import measure_amplitudes
    from sediff_jax.generation.amplitudes import amplitudes_from_record

    entries = read_ptbxl(str(data_dir / "ptb-xl"), fs=100)[:3]
    for entry in entries:
        got = amplitudes_from_record(entry.path, 100.0, 10.0)
        np.testing.assert_array_equal(got, measure_amplitudes([entry], 100.0)[entry.record_id])
        raw = wfdb.rdrecord(entry.path)
        names = [n.upper() for n in raw.sig_name]
        signal = raw.p_signal[:, [names.index(n.upper()) for n in LEAD_NAMES]]
        wfdb_range = np.percentile(signal, 99.5, axis=0) - np.percentile(signal, 0.5, axis=0)
        assert 0.9 < np.median(got / wfdb_range) < 1.1
    ecg = _real_records(data_dir, 1)[0]
    five_hundred = np.repeat(ecg, 5, axis=0)
    with open(_write_record(tmp_path, "short", five_hundred[:500]) + ".hea") as f:
        assert "500" in f.read()
    with pytest.raises(AmplitudeError, match="short: the record has 1.00 s of signal; .* at least 2 s"):
        amplitudes_from_record(str(tmp_path / "short"), 100.0, 10.0)
    flat = five_hundred.copy()
    flat[:, 8] = 0.0
    with pytest.raises(AmplitudeError, match="amplitudes_from=.*flat: .*lead V3 is flat"):
        amplitudes_from_record(_write_record(tmp_path, "flat", flat), 100.0, 10.0)
    whole = _write_record(tmp_path, "cut", five_hundred)
    with open(whole + ".dat", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(AmplitudeError, match="amplitudes_from=.*cut"):
        amplitudes_from_record(whole, 100.0, 10.0)


def test_a_prompt_takes_the_lead_amplitudes_of_the_record_it_names(experience_model, model, data_dir, tmp_path):
    """A prompt's amplitudes_from record replaces the retrieved draw for that prompt (the others keep theirs);
    for a model without a corpus ('auto' keeps the model's amplitudes) it rescales that prompt alone; with
    lead_amplitudes='model' it is an error; prompt files resolve the column like rhythm_from."""
    from sediff_jax.generation import read_prompts
    from sediff_jax.generation.amplitudes import amplitudes_from_record

    record = read_ptbxl(str(data_dir / "ptb-xl"), fs=100)[0].path
    own = amplitudes_from_record(record, 100.0, 2.56)
    with_corpus, _, _ = experience_model
    prompts = [make_prompt("normal ECG", hr=70, amplitudes_from=record), make_prompt("atrial fibrillation", hr=110)]
    generator = Generator(with_corpus, max_batch=8)
    sampler = SamplerConfig(kind="ddim", num_steps=3, lead_amplitudes="auto", amplitude_strength=1.0)
    targets = generator.amplitude_targets(prompts, sampler, seed=4)
    np.testing.assert_array_equal(targets[0], own)
    np.testing.assert_array_equal(targets[1], generator.retrieved_amplitudes(prompts, seed=4)[1])
    plain = Generator(model, max_batch=8)  # no corpus: 'auto' is the model's own, except where a record is named
    mine = plain.generate(prompts, seed=4, sampler=sampler)
    unnamed = [dataclasses.replace(prompts[0], amplitudes_from=None), prompts[1]]
    reference = plain.generate(unnamed, seed=4, sampler=sampler)
    np.testing.assert_array_equal(mine[1], reference[1])
    np.testing.assert_array_equal(mine, match_lead_amplitudes(reference, np.stack([own, np.full(12, np.nan)])))
    with pytest.raises(AmplitudeError, match="lead_amplitudes='model' keeps the model's own"):
        plain.generate(prompts, seed=4, sampler=dataclasses.replace(sampler, lead_amplitudes="model"))
    (tmp_path / "prompts.csv").write_text("text,amplitudes_from\nnormal ECG,rec/one\nsinus rhythm,\n")
    read = read_prompts(tmp_path / "prompts.csv")
    assert read[0].amplitudes_from == str(tmp_path / "rec" / "one") and read[1].amplitudes_from is None
