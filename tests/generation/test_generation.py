"""Model export/load, prompt validation and the generator: same seed, same ECGs on 1 and 8 devices."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from sediff_jax.diffusion.sampling import SamplerConfig
from sediff_jax.generation import Generator, PromptError, export_model, load_model, make_prompt, read_prompts
from sediff_jax.checkpoints import CheckpointError
from sediff_jax.checkpoints.spec import ExperienceSpec
from sediff_jax.parallel import make_mesh
from tests.generation.small_model import small_model

PROMPTS = [make_prompt("sinus rhythm, normal ECG", age=50, sex="F", hr=70),
           make_prompt("atrial fibrillation with rapid ventricular response", hr=120),
           make_prompt("sinus bradycardia", age=80, sex="M")]
SAMPLER = SamplerConfig(kind="ddim", num_steps=6, guidance_scale=2.0)


def test_export_then_load_gives_the_same_weights_and_config(exported_model_dir, model):
    original = small_model()
    for a, b in zip(jax.tree.leaves(original.denoiser_params), jax.tree.leaves(model.denoiser_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(original.vae_params), jax.tree.leaves(model.vae_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert model.spec.latent_scale == 2.0 and model.num_samples == 256 and len(model.id) == 12
    assert load_model(exported_model_dir).id == model.id
    with pytest.raises(FileExistsError):
        export_model(original, exported_model_dir)


def test_missing_corrupt_and_incompatible_checkpoints_name_the_problem(exported_model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no SE-Diff model here"):
        load_model(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(exported_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        load_model(broken)
    other = tmp_path / "other"
    shutil.copytree(exported_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["denoiser"]["channels"] = [16, 32]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="incompatible checkpoint, tensor .* has shape"):
        load_model(other)
    config["version"] = 99
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model version 99"):
        load_model(other)


def test_same_seed_gives_identical_ecgs_on_1_and_8_devices(model):
    assert len(jax.devices()) == 8
    one = Generator(model, mesh=make_mesh(jax.devices()[:1])).generate(PROMPTS, seed=3, sampler=SAMPLER)
    eight = Generator(model, mesh=make_mesh(jax.devices())).generate(PROMPTS, seed=3, sampler=SAMPLER)
    assert one.shape == (3, 256, 12) and np.all(np.isfinite(one))
    np.testing.assert_allclose(one, eight, rtol=1e-4, atol=1e-5)
    # Batching does not matter either: record i depends on (seed, i, prompt i) only.
    small_batches = Generator(model, mesh=make_mesh(jax.devices()[:1]), max_batch=1, chunk_steps=4)
    np.testing.assert_allclose(small_batches.generate(PROMPTS, seed=3, sampler=SAMPLER), one, rtol=1e-4, atol=1e-5)
    other_seed = Generator(model, mesh=make_mesh(jax.devices()[:1])).generate(PROMPTS, seed=4, sampler=SAMPLER)
    assert not np.allclose(other_seed, one, atol=1e-3)


def test_cads_and_per_group_guidance_change_samples_and_keep_each_record_s_own(model):
    """CADS anneals the text/experience tokens of each record with its own noise: samples differ from plain
    guidance, are reproducible, and a record's ECG does not depend on the batch it shares; per-group guidance with
    equal scales is plain guidance up to round-off."""
    prompts = [make_prompt("sinus rhythm", age=50, hr=70), make_prompt("atrial fibrillation", age=70, hr=110),
               make_prompt("left bundle branch block", age=65, sex="M")]
    mesh = make_mesh(jax.devices()[:1])
    generator = Generator(model, mesh=mesh, max_batch=8)
    plain = SamplerConfig(num_steps=6, guidance_scale=2.0, eta=1.0, exact_limb_leads=False)
    cads = dataclasses.replace(plain, cads_noise=0.5, cads_tau=(0.2, 0.6))
    a, b = generator.generate(prompts, 3, plain), generator.generate(prompts, 3, cads)
    assert np.all(np.isfinite(b)) and not np.allclose(a, b)
    np.testing.assert_array_equal(b, generator.generate(prompts, 3, cads))
    alone = Generator(model, mesh=mesh, max_batch=1).generate(prompts, 3, cads)
    np.testing.assert_allclose(alone, b, rtol=1e-5, atol=1e-5)
    groups = generator.generate(prompts, 3, dataclasses.replace(plain, group_scales=(2.0, 2.0, 2.0)))
    np.testing.assert_allclose(groups, a, rtol=1e-3, atol=1e-3)
    # exact limb leads: Einthoven/Goldberger hold to float rounding, the chest leads are untouched
    from sediff_jax.leads import limb_lead_residuals

    exact = generator.generate(prompts, 3, dataclasses.replace(plain, exact_limb_leads=True))
    assert np.abs(limb_lead_residuals(exact)).max() < 1e-5 < np.abs(limb_lead_residuals(a)).max()
    np.testing.assert_allclose(exact[..., 6:], a[..., 6:], rtol=1e-6, atol=1e-6)


def test_conditions_encode_prompts_with_unknowns_marked(model):
    generator = Generator(model, mesh=make_mesh(jax.devices()[:1]))
    c = generator.conditions(PROMPTS)
    np.testing.assert_array_equal(c["sex"], [1, -1, 0])
    assert np.isnan(c["age"][1]) and np.isnan(c["hr_bpm"][2]) and c["hr_bpm"][1] == 120
    assert c["text_tokens"].shape == (3, 8, 32) and not c["experience_mask"].any()
    names = [generator.class_names[i] for i in c["class_index"]]
    assert names == ["sediff/sinus_rhythm", "sediff/atrial_fibrillation", "sediff/bradycardia"], names


def test_prompt_validation_names_the_field():
    for kwargs, match in (({"text": "  "}, "--text must be a non-empty"), ({"text": "x", "age": 130}, "--age=130"),
                          ({"text": "x", "hr": 10}, "--hr=10"), ({"text": "x", "sex": "X"}, "--sex='X'"),
                          ({"text": "x", "age": "old"}, "--age must be a number")):
        with pytest.raises(PromptError, match=match):
            make_prompt(**kwargs)
    assert make_prompt("a  b\n c", sex="female").sex == "F"


def test_prompt_files_report_the_bad_row(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text("text,age,sex,hr\nnormal ECG,40,M,60\nsinus tachycardia,,,130\n")
    prompts = read_prompts(good)
    assert [p.hr for p in prompts] == [60.0, 130.0] and prompts[1].age is None
    bad = tmp_path / "bad.csv"
    bad.write_text("text,age,sex,hr\nnormal ECG,40,M,60\nsinus tachycardia,,,400\n")
    with pytest.raises(PromptError, match=r"bad.csv row 3: hr=400"):
        read_prompts(bad)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"text": "normal ECG", "age": 30}\n{"text": ""}\n')
    with pytest.raises(PromptError, match=r"p.jsonl row 2: text must be a non-empty"):
        read_prompts(jsonl)
    jsonl.write_text('{"text": "normal ECG"}\nnot json\n')
    with pytest.raises(PromptError, match="row 2: not valid JSON"):
        read_prompts(jsonl)
    headless = tmp_path / "h.csv"
    headless.write_text("report,age\nx,3\n")
    with pytest.raises(PromptError, match="'text' column"):
        read_prompts(headless)


def test_float16_export_halves_the_file_and_loads_as_float32(exported_model_dir, model, tmp_path):
    half = load_model(export_model(model, tmp_path / "half", dtype="float16"))
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "half") < 0.55 * size(exported_model_dir)
    assert half.spec.weights_dtype == "float16"
    for a, b in zip(jax.tree.leaves(model.denoiser_params), jax.tree.leaves(half.denoiser_params)):
        assert b.dtype == np.float32
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-4)


def test_the_model_latent_clip_is_the_default_and_inf_turns_it_off(model):
    generator = Generator(model, mesh=make_mesh(jax.devices()[:1]))
    assert generator.latent_clip == 3.0  # DEFAULT_LATENT_CLIP: the small model's config has none
    default = generator.generate(PROMPTS[:1], seed=0, sampler=SAMPLER)
    explicit = generator.generate(PROMPTS[:1], seed=0, sampler=dataclasses.replace(SAMPLER, clip_x0=3.0))
    np.testing.assert_array_equal(default, explicit)
    tight = generator.generate(PROMPTS[:1], seed=0, sampler=dataclasses.replace(SAMPLER, clip_x0=0.01))
    assert not np.allclose(tight, default, atol=1e-4)
    unclipped = generator.generate(PROMPTS[:1], seed=0, sampler=dataclasses.replace(SAMPLER, clip_x0=float("inf")))
    assert np.all(np.isfinite(unclipped))


def test_prompt_files_from_spreadsheets_and_hostile_text(tmp_path):
    excel = tmp_path / "excel.csv"  # Excel writes a UTF-8 byte-order mark; a quoted field may hold a newline
    excel.write_bytes("\ufefftext,hr\n\"Sinus rhythm.\nLeft axis deviation.\",60\n".encode("utf-8"))
    prompts = read_prompts(excel)
    assert [(p.text, p.hr) for p in prompts] == [("Sinus rhythm. Left axis deviation.", 60.0)]
    escape = make_prompt("normal\x1b[31m ECG\x07\ttext")
    assert escape.text == "normal [31m ECG text" and all(c.isprintable() for c in escape.text)
    with pytest.raises(PromptError, match="only control characters"):
        make_prompt("\x1b\x07")
    huge = tmp_path / "huge.csv"
    huge.write_text('text\n"' + "x" * 200_000 + '"\n')
    with pytest.raises(PromptError, match=r"huge.csv line \d+: not a readable CSV row"):
        read_prompts(huge)
    with pytest.raises(PromptError, match="at most 10000"):
        make_prompt("word " * 3000)


def test_sample_overwrite_replaces_only_its_own_outputs(model, tmp_path):
    """--overwrite removes exactly the files an earlier run entered in the folder's record: a user's records named
    like ours (ecg_patient1.hea/.dat) are refused, never deleted; the manifest is strict JSON."""
    from experiments.sample import generate_files
    from sediff_jax.io.outputs import LEDGER_FILE, OutputError, output_dir

    out = tmp_path / "out"
    generator = Generator(model, max_batch=8)
    sampler = SamplerConfig(num_steps=2, guidance_scale=1.0)
    prompts = [make_prompt("normal ECG"), make_prompt("sinus tachycardia")]
    generate_files(output_dir(out, tool="sample"), prompts, generator, sampler, seed=0, num_samples=1,
                   png=False, experience="auto")
    first = sorted(p.name for p in out.iterdir())
    assert first == sorted(["ecg_000_00.dat", "ecg_000_00.hea", "ecg_001_00.dat", "ecg_001_00.hea",
                            "manifest.json", "samples.npz", LEDGER_FILE])
    generate_files(output_dir(out, tool="sample", overwrite=True), prompts[:1], generator, sampler, seed=0,
                   num_samples=1, png=False, experience="auto")  # the second prompt's earlier files go too
    assert sorted(p.name for p in out.iterdir()) == sorted(["ecg_000_00.dat", "ecg_000_00.hea", "manifest.json",
                                                            "samples.npz", LEDGER_FILE])
    manifest = json.loads((out / "manifest.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert manifest["records"][0]["files"] == ["ecg_000_00.hea", "ecg_000_00.dat"]

    (out / "ecg_patient1.hea").write_text("a user's real record")
    (out / "ecg_patient1.dat").write_bytes(b"\x01\x02")
    with pytest.raises(OutputError, match="holds ecg_patient1.dat, which sample did not write"):
        output_dir(out, tool="sample", overwrite=True)
    (out / "ecg_patient1.hea").unlink(), (out / "ecg_patient1.dat").unlink()
    (out / "samples.npz").write_bytes(b"edited by hand")
    with pytest.raises(OutputError, match="samples.npz was changed after sample wrote it"):
        output_dir(out, tool="sample", overwrite=True)
    assert (out / "samples.npz").read_bytes() == b"edited by hand"


def test_a_model_trained_with_experience_needs_its_corpus(model, tmp_path):
    from sediff_jax.generation.model import experience_profiles_path

    trained_with = dataclasses.replace(model, spec=model.spec.replace(experience=ExperienceSpec(used=True)),
                                       source=str(tmp_path))
    with pytest.raises(CheckpointError, match="trained with experience but its corpus is missing"):
        experience_profiles_path(trained_with)
    generator = Generator(trained_with, max_batch=8)
    with pytest.raises(CheckpointError, match="corpus is missing"):
        generator.experience_reports([make_prompt("normal ECG")], "auto")
    assert generator.experience_reports([make_prompt("normal ECG")], "off") == [""]


def test_an_exported_model_s_vae_serves_as_stage_1(exported_model_dir, model):
    """Stage 2 can start from a shipped model's VAE: load_vae reads it from the export like a VAE stage."""
    from sediff_jax.checkpoints.trained import load_vae

    _, params, config, fs = load_vae(str(exported_model_dir))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(model.vae_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert config == model.spec.vae and fs == model.fs and config.beat_r_index == 20
    broken = exported_model_dir.parent / "truncated_weights"
    broken.mkdir(exist_ok=True)
    shutil.copy(exported_model_dir / "config.json", broken)
    (broken / "model.safetensors").write_bytes((exported_model_dir / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable weights"):
        load_vae(str(broken))
