"""The training loop end to end on the tiny config: checkpoints, metrics, resume that reproduces the
uninterrupted run bit for bit, the NaN guard, and configs."""

import importlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import common
from experiments.configs import tiny
from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.training.config import ConfigError
from sediff_jax.checkpoints.spec import ModelSpec
from sediff_jax.checkpoints.trained import load_vae
from sediff_jax.training.loop import TrainingDiverged, run_loop, train
from sediff_jax.training.stage_runs import StageParts
from sediff_jax.training.metrics import THROUGHPUT_KEYS, read_metrics

STEPS = 4


def _config(prepared_dir, vae_halt=0, diffusion_halt=0, samples=0):
    c = tiny.get_config()
    c.data.prepared_dir = prepared_dir
    c.data.num_synthetic = 48
    c.data.test_split = ""  # the test-split evaluation is the validation code path again; skipped for time
    for stage, halt in ((c.vae, vae_halt), (c.diffusion, diffusion_halt)):
        stage.training.update(num_steps=STEPS, log_every=1, eval_every=2, checkpoint_every=2, halt_at_step=halt,
                              progress_bar=False)
    c.diffusion.training.update(eval_samples=samples, eval_sample_steps=3)  # generated ECGs at each evaluation
    return c


def _fine_tuning_config(prepared_dir, model_dir):
    """Two stage-2 steps from the model at `model_dir` (its VAE too) at learning rate 1e-12: the weights stay the
    model's to float32 rounding."""
    config = _config(prepared_dir)
    config.stage = "diffusion"
    config.diffusion.vae_checkpoint = str(model_dir)
    config.diffusion.init_from = str(model_dir)
    config.diffusion.optimizer.learning_rate = 1e-12
    config.diffusion.training.update(num_steps=2, eval_every=2, checkpoint_every=2)
    return config


def _saved_state(stage_dir, step):
    path = os.path.join(stage_dir, "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(prepared_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    results = train(_config(prepared_dir, samples=2), workdir)
    return workdir, results


def test_tiny_run_writes_checkpoints_metrics_and_config(uninterrupted):
    workdir, results = uninterrupted
    assert [r.stage for r in results] == ["vae", "diffusion"]
    assert all(r.step == STEPS and not r.stopped_early for r in results)
    assert np.isfinite(results[0].eval_metrics["mae_mv"])
    assert {"ddpm", "euler", "interlead", "sim", "total"} <= set(results[1].last_metrics)
    for stage in ("vae", "diffusion"):
        stage_dir = os.path.join(workdir, stage)
        assert sorted(int(s) for s in os.listdir(os.path.join(stage_dir, "checkpoints"))) == [2, 4]
        assert len(os.listdir(os.path.join(stage_dir, "best"))) == 1
        train_lines = read_metrics(os.path.join(stage_dir, "metrics.jsonl"))
        assert [r["step"] for r in train_lines] == list(range(1, STEPS + 1))
        timed = read_metrics(os.path.join(stage_dir, "metrics.jsonl"), throughput=True)
        assert all(set(THROUGHPUT_KEYS) <= set(r) and set(THROUGHPUT_KEYS).isdisjoint(plain)
                   for r, plain in zip(timed, train_lines))
        for r in timed:  # examples/s is steps/s times the batch; the loader's share of the time is a fraction
            assert r["steps_per_sec"] > 0 and 0 <= r["loader_wait_fraction"] <= 1
            batch = tiny.get_config()[stage].training.batch_size
            np.testing.assert_allclose(r["examples_per_sec"], r["steps_per_sec"] * batch, rtol=1e-6)
        assert len(read_metrics(os.path.join(stage_dir, "metrics.jsonl"), "validation")) == 2
        assert os.listdir(os.path.join(stage_dir, "tensorboard"))
    meta, step = ckpt.read_meta(os.path.join(workdir, "diffusion"))
    assert step == STEPS and meta["latent_scale"] > 0 and meta["stage"] == "diffusion"
    # the model as stage 2 records it is the model its meta's fields describe (the reader of older checkpoints)
    recorded = ModelSpec.from_json(meta["spec"], "meta")
    legacy = ModelSpec.from_training(meta, {"step": step, "workdir": workdir})
    assert recorded.latent_scale == meta["latent_scale"]
    assert recorded.replace(provenance={}) == legacy.replace(provenance={})
    assert json.load(open(os.path.join(workdir, "config.json")))["variant"] == "full"
    assert os.path.exists(os.path.join(workdir, "text_cache_minilm.npz"))
    vae = load_vae(os.path.join(workdir, "vae"))
    assert vae.config == recorded.vae and vae.fs == recorded.fs and jax.tree.leaves(vae.params)


def test_stage_2_writes_ecgs_generated_from_validation_records_at_each_evaluation(uninterrupted, prepared_dir):
    """`diffusion.training.eval_samples`: at every evaluation step, ECGs generated from the first validation
    records' conditions beside those records' own ECGs (NPZ + PNG, a TensorBoard image) and their amplitude
    ratio as a validation metric."""
    from sediff_jax.training import sources
    from sediff_jax.training.config import resolve

    workdir, _ = uninterrupted
    samples = os.path.join(workdir, "diffusion", "samples")
    assert sorted(os.listdir(samples)) == [f"step_000000{k}.{ext}" for k in (2, 4) for ext in ("npz", "png")]
    with np.load(os.path.join(samples, "step_0000004.npz")) as f:
        generated, reference, reports, step = f["ecg"], f["reference"], f["reports"], int(f["step"])
    assert step == STEPS and generated.shape == reference.shape == (2, 1000, 12) and np.isfinite(generated).all()
    validation = sources.split_source(resolve(_config(prepared_dir)), "validation")
    for k in range(2):  # the reference is the real record the conditions came from
        np.testing.assert_array_equal(reference[k], np.asarray(validation[k]["ecg"], np.float32))
        text = validation[k]["text"]
        assert reports[k] == (text.decode() if isinstance(text, bytes) else text)
    with np.load(os.path.join(samples, "step_0000002.npz")) as f:
        assert not np.array_equal(f["ecg"], generated)  # the model changed between the evaluations
    lines = read_metrics(os.path.join(workdir, "diffusion", "metrics.jsonl"), "validation")
    ratios = [line["samples_std_ratio"] for line in lines]
    assert len(ratios) == 2 and all(0 < r < 100 for r in ratios)
    assert "samples_std_ratio" not in read_metrics(os.path.join(workdir, "vae", "metrics.jsonl"), "validation")[0]


def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_one(uninterrupted, prepared_dir, tmp_path):
    reference, _ = uninterrupted
    workdir = str(tmp_path / "resumed")
    first = train(_config(prepared_dir, vae_halt=2, samples=2), workdir)  # "killed" after step 2 of stage 1
    assert [(r.stage, r.step, r.stopped_early) for r in first] == [("vae", 2, True)]
    second = train(_config(prepared_dir, diffusion_halt=2, samples=2), workdir)  # resumes stage 1, stops 2 at 2
    assert [(r.stage, r.step, r.stopped_early) for r in second] == [("vae", STEPS, False), ("diffusion", 2, True)]
    third = train(_config(prepared_dir, samples=2), workdir)
    assert [(r.stage, r.step) for r in third] == [("vae", STEPS), ("diffusion", STEPS)]
    for stage in ("vae", "diffusion"):
        _assert_trees_equal(_saved_state(os.path.join(reference, stage), STEPS),
                            _saved_state(os.path.join(workdir, stage), STEPS))
        ref = read_metrics(os.path.join(reference, stage, "metrics.jsonl"))
        got = read_metrics(os.path.join(workdir, stage, "metrics.jsonl"))
        assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # no duplicated steps after resume
        assert ref == got
    for k in (2, STEPS):  # the generated samples too, bit for bit
        name = f"step_{k:07d}.npz"
        with np.load(os.path.join(reference, "diffusion", "samples", name)) as a, \
                np.load(os.path.join(workdir, "diffusion", "samples", name)) as b:
            np.testing.assert_array_equal(a["ecg"], b["ecg"])


def test_a_run_refuses_a_workdir_of_another_model(uninterrupted, prepared_dir, tmp_path):
    reference, _ = uninterrupted
    config = _config(prepared_dir)
    config.vae.model.channels = (8, 16, 16)
    before = open(os.path.join(reference, "config.json")).read()
    with pytest.raises(ckpt.CheckpointError, match="model"):
        train(config, reference)
    assert open(os.path.join(reference, "config.json")).read() == before  # the refused run changed nothing


def test_a_resumed_run_with_another_recipe_is_refused_before_anything_is_written(uninterrupted, prepared_dir):
    """Two runs on one workdir with different learning rates both exited 0 and the first run's results were lost:
    a second run whose recipe differs is refused naming the setting; steps and intervals may change."""
    reference, _ = uninterrupted
    config = _config(prepared_dir)
    config.diffusion.optimizer.learning_rate = 1e-3
    listing = {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, files in os.walk(reference) for p in files}
    with pytest.raises(ckpt.CheckpointError, match=r"diffusion.optimizer.learning_rate: 0.0002 there, 0.001 now"):
        train(config, reference)
    assert {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, files in os.walk(reference)
            for p in files} == listing  # nothing written, config.json and metrics included
    config = _config(prepared_dir)
    config.vae.training.update(log_every=3, eval_every=4)  # a resume may change how often it logs
    config.stage = "vae"
    assert [(r.stage, r.step) for r in train(config, reference)] == [("vae", STEPS)]


def test_train_refuses_an_exported_model_or_a_foreign_folder_as_its_workdir(uninterrupted, prepared_dir, tmp_path):
    from sediff_jax.generation import export_model, load_model
    from sediff_jax.io.outputs import OutputError

    workdir, _ = uninterrupted
    model_dir = export_model(load_model(workdir), tmp_path / "model")
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    with pytest.raises(OutputError, match="is an exported model, not a training workdir"):
        train(_config(prepared_dir), str(model_dir))
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    foreign = tmp_path / "papers"
    foreign.mkdir()
    (foreign / "draft.tex").write_text("mine")
    with pytest.raises(OutputError, match=r"holds no train run of ours \(it has draft.tex"):
        train(_config(prepared_dir), str(foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["draft.tex"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        load_vae(str(tmp_path / "nowhere"))


def test_nan_loss_stops_with_the_step_and_term(prepared_dir, tmp_path):
    from sediff_jax.checkpoints.stage import Checkpointer

    class Loader:
        def __init__(self):
            self.k = 0

        def __next__(self):
            self.k += 1
            return {"x": np.float32(np.nan if self.k == 3 else 1.0)}

        def state(self):
            from sediff_jax.data.loader import LoaderState

            return LoaderState(0, self.k, 0, 1, 0, 1, 1)

        def close(self):
            pass

    def step(state, batch):
        loss = batch["x"] * 2.0
        return {"w": state["w"] + 1}, {"total": loss, "reconstruction": loss, "finite": np.isfinite(loss)}

    config = _config(prepared_dir).vae
    config.training.num_steps = 10
    checkpointer = Checkpointer(str(tmp_path / "stage"))
    with pytest.raises(TrainingDiverged, match=r"vae step 3: reconstruction = nan, total = nan not finite.*last checkpoint: step 2"):
        parts = StageParts(train_step=step, loader=Loader(), evaluators=(lambda s, k: {"mae_mv": 0.0},),
                           best_metric="mae_mv", test=None, meta={})
        run_loop(stage="vae", stage_dir=str(tmp_path / "stage"), config=config, state={"w": np.zeros(2)}, start_step=0,
                 parts=parts, checkpointer=checkpointer)
    checkpointer.close()


@pytest.mark.parametrize("name", ["tiny", "synthetic", "ptbxl100", "ptbxl100_full", "ptbxl500", "mimic", "pod"])
def test_configs_load_with_every_variant(name):
    module = importlib.import_module(f"experiments.configs.{name}")
    for variant in common.VARIANTS:
        c = module.get_config(variant)
        assert c.variant == variant
        assert c.vae.training.batch_size > 0 and c.diffusion.training.num_steps > 0
    assert module.get_config("no_interlead").diffusion.loss.interlead_weight == 0.0
    assert module.get_config("no_simulator").diffusion.loss.euler_weight == 0.0
    with pytest.raises(ValueError, match="variant"):
        module.get_config("no_such_variant")


def test_a_trained_run_generates_and_exports_to_the_same_model(uninterrupted, tmp_path):
    """The workdir loads for generation (best EMA denoiser + its VAE); exporting it and loading the export gives
    the same weights and the same ECGs."""
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.generation import Generator, export_model, load_model, make_prompt
    from sediff_jax.parallel import make_mesh

    workdir, _ = uninterrupted
    from_run = load_model(workdir)
    exported = load_model(export_model(from_run, tmp_path / "model"))
    assert exported.id == from_run.id and exported.spec.latent_scale == from_run.spec.latent_scale
    prompts = [make_prompt("sinus rhythm", age=40, sex="F", hr=65)]
    sampler = SamplerConfig(num_steps=3, guidance_scale=2.0)
    mesh = make_mesh(jax.devices()[:1])
    a = Generator(from_run, mesh=mesh).generate(prompts, seed=1, sampler=sampler)
    b = Generator(exported, mesh=mesh, text_encoder=None).generate(prompts, seed=1, sampler=sampler)
    assert a.shape == (1, int(from_run.num_samples), 12) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)


def test_a_kept_checkpoint_of_any_step_loads_for_a_learning_curve(uninterrupted, tmp_path):
    """load_model(workdir, step=N) (export_model --step) reads the EMA denoiser of checkpoints/N, not the latest
    one; a step that was not kept, or a step of an exported model, is a CheckpointError naming it."""
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.generation import export_model, load_model

    workdir, _ = uninterrupted
    early, late = load_model(workdir, step=2), load_model(workdir, step=STEPS)
    assert early.spec.training["step"] == 2 and late.spec.training["step"] == STEPS and early.id != late.id
    ema = ocp.StandardCheckpointer().restore(os.path.join(workdir, "diffusion", "checkpoints", "2", "ema"))
    _assert_trees_equal(early.denoiser_params, ema)
    assert load_model(workdir, which="latest").id == late.id
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 3 \(has \[2, 4\]\)"):
        load_model(workdir, step=3)
    with pytest.raises(CheckpointError, match="an exported model has one set of weights"):
        load_model(export_model(early, tmp_path / "early"), step=2)


def test_a_run_trained_with_experience_ships_its_corpus_and_samples_with_reports(uninterrupted, prepared_dir,
                                                                                  tmp_path):
    """Stage 2 with an experience directory: the run records it, the export carries the profile corpus, and
    sample.py --experience=auto retrieves a report per prompt (listed in the manifest) that changes the ECG."""
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.experience import ExperienceIndex
    from sediff_jax.experience.distill import OfflineDistiller
    from sediff_jax.experience.reports import build_reports, save_experience
    from sediff_jax.generation import Generator, export_model, load_model, make_prompt
    from sediff_jax.generation.model import EXPERIENCE_PROFILES_FILE
    from sediff_jax.parallel import make_mesh
    from tests.experience.test_distill import corpus_of_neighbours

    workdir, _ = uninterrupted
    corpus = corpus_of_neighbours(n=12, record_ids=[f"synthetic/train/{i:06d}" for i in range(12)])
    index = ExperienceIndex(corpus)
    entries = build_reports(corpus, index, OfflineDistiller())
    save_experience(tmp_path / "exp", corpus, index, entries, dataset="test")
    c = _config(prepared_dir)
    c.stage = "diffusion"
    c.diffusion.vae_checkpoint = os.path.join(workdir, "vae")
    c.diffusion.training.num_steps = 2
    c.experience.dir = str(tmp_path / "exp")
    train(c, str(tmp_path / "run"))

    model = load_model(export_model(load_model(str(tmp_path / "run")), tmp_path / "model"))
    assert model.spec.experience.used and model.spec.experience.records == 12
    assert (tmp_path / "model" / EXPERIENCE_PROFILES_FILE).is_file()
    assert model.spec.experience.dir is None  # the export stands alone
    generator = Generator(model, mesh=make_mesh(jax.devices()[:1]))
    prompt = make_prompt("Sinus rhythm. Left ventricular hypertrophy.", age=60, sex="M", hr=70)
    report, = generator.experience_reports([prompt])
    assert report.startswith("Experience from") and "left ventricular hypertrophy" in report
    sampler = SamplerConfig(num_steps=2, guidance_scale=1.0)
    with_experience = generator.generate([prompt], seed=0, sampler=sampler, experience="auto")
    without = generator.generate([prompt], seed=0, sampler=sampler, experience="off")
    assert np.all(np.isfinite(with_experience)) and not np.array_equal(with_experience, without)

    from experiments.sample import generate_files
    from sediff_jax.io.outputs import output_dir

    manifest = generate_files(output_dir(tmp_path / "out", tool="sample"), [prompt], generator, sampler, seed=0,
                              num_samples=1, png=False, experience="auto")
    assert manifest["experience"] == {"mode": "auto", "used": True, "reports": [report]}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["experience"] == manifest["experience"]


def test_a_warm_start_adds_the_lead_amplitude_condition_and_the_ectopic_channel(uninterrupted, prepared_dir,
                                                                                  tmp_path):
    """diffusion.model.amplitude_leads=12 and rhythm_channels 3 -> 4, fine-tuned from a model without either: every
    tensor the model had starts from it (learning rate 1e-12: they stay to float32 rounding), the new embedding
    starts fresh with its zero output layer, the input layer gains a zero input channel; the tuned model generates.
    Each training record's amplitudes come from the experience corpus, which must have them at the run's rate (else
    a ConfigError naming the file and the rebuild); without experience.dir the config is refused; a run without the
    scaffold cannot start from a scaffold model."""
    from sediff_jax.checkpoints.weights import flatten_params
    from sediff_jax.experience import ExperienceIndex
    from sediff_jax.experience.distill import OfflineDistiller
    from sediff_jax.experience.reports import build_reports, save_experience
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.generation import Generator, export_model, load_model, make_prompt
    from tests.experience.test_distill import corpus_of_neighbours

    reference, _ = uninterrupted
    model_dir = export_model(load_model(reference), tmp_path / "model")
    source = load_model(model_dir)
    ids = [f"synthetic/train/{i:06d}" for i in range(12)]
    corpus = corpus_of_neighbours(n=12, record_ids=ids)
    index = ExperienceIndex(corpus)
    entries = build_reports(corpus, index, OfflineDistiller())
    amplitudes = {r: np.full(12, 0.5 + 0.1 * i, np.float32) for i, r in enumerate(ids)}
    save_experience(tmp_path / "exp", corpus.with_amplitudes(amplitudes, 100.0), index, entries, dataset="test")
    config = _fine_tuning_config(prepared_dir, model_dir)
    config.diffusion.model.amplitude_leads = 12
    config.diffusion.model.rhythm_channels = 4
    config.experience.dir = str(tmp_path / "exp")
    result, = train(config, str(tmp_path / "tuned"))
    assert result.step == 2 and np.isfinite(result.last_metrics["ddpm"])
    tuned = load_model(tmp_path / "tuned", which="latest")
    assert tuned.spec.denoiser.amplitude_leads == 12 and source.spec.denoiser.amplitude_leads == 0
    assert tuned.spec.denoiser.rhythm_channels == 4 and source.spec.denoiser.rhythm_channels == 3
    before, after = flatten_params(source.denoiser_params, "d"), flatten_params(tuned.denoiser_params, "d")
    added = sorted(set(after) - set(before))
    assert added and all(name.startswith("d/amplitude_embed/") for name in added) and set(before) < set(after)
    grown = "d/conv_in/kernel"
    for name in before:
        if name != grown:
            np.testing.assert_allclose(after[name], before[name], rtol=0, atol=1e-6, err_msg=name)
    assert np.abs(after["d/amplitude_embed/out/kernel"]).max() < 1e-6
    assert after[grown].shape[1] == before[grown].shape[1] + 1
    np.testing.assert_allclose(after[grown][:, :-1], before[grown], rtol=0, atol=1e-6)
    assert np.abs(after[grown][:, -1]).max() < 1e-6
    ecg = Generator(tuned).generate([make_prompt("ventricular bigeminy", hr=70)], seed=0, experience="off",
                                    sampler=SamplerConfig(kind="ddim", num_steps=2, lead_amplitudes="model"))
    assert ecg.shape == (1, tuned.num_samples, 12) and np.isfinite(ecg).all()
    config.diffusion.model.rhythm_channels = 0
    with pytest.raises(ckpt.CheckpointError, match="cannot start this run"):
        train(config, str(tmp_path / "no_scaffold"))
    config.diffusion.model.rhythm_channels = 4

    save_experience(tmp_path / "exp", corpus, index, entries, dataset="test")  # no amplitudes
    with pytest.raises(ConfigError, match="profiles.npz: diffusion.model.amplitude_leads needs .* at 100 Hz "
                                          "\\(none measured\\); rebuild with .*--amplitude_fs=100"):
        train(config, str(tmp_path / "no_amplitudes"))
    config.experience.dir = ""
    with pytest.raises(ConfigError, match="amplitude_leads > 0 reads each record's amplitudes from the experience"):
        train(config, str(tmp_path / "no_experience"))


def test_stage_2_from_a_latent_cache_trains_like_encoding_in_the_step(uninterrupted, prepared_dir, tmp_path):
    """The cache holds the frozen VAE's encoding of every record; stage 2 trained from it (float32) takes the same
    steps as the run that encodes each batch in the step (same batches, same latent scale, same losses up to
    float rounding); 'auto' builds the cache once beside the prepared dataset and reuses it; a cache of another
    VAE is refused by name."""
    from flax import nnx

    from sediff_jax.data.latents import MANIFEST, LatentCacheError, LatentSource
    from sediff_jax.training import sources, stages
    from sediff_jax.training.config import resolve

    reference, _ = uninterrupted
    vae_dir = os.path.join(reference, "vae")
    config = resolve(_config(prepared_dir))
    config.stage = "diffusion"
    config.diffusion.vae_checkpoint = vae_dir
    cache, info = sources.build_latent_cache(config, vae_dir, str(tmp_path / "cache"), dtype="float32")
    graphdef, params, _, _ = load_vae(vae_dir)
    source = sources.split_source(config, "validation")
    ecg = np.stack([source[i]["ecg"] for i in range(len(source))])
    np.testing.assert_allclose(LatentSource(cache, "validation").latent_mean,
                               nnx.merge(graphdef, params).encode(ecg)[0], rtol=1e-5, atol=1e-5)
    assert info.latent_shape == (125, stages.vae_config(config).latent_channels) and info.downsampling == 8

    config.diffusion.latent_cache = cache
    result, = train(config, str(tmp_path / "run"))
    assert result.step == STEPS and not result.stopped_early
    reference_meta, _ = ckpt.read_meta(os.path.join(reference, "diffusion"))
    meta, _ = ckpt.read_meta(str(tmp_path / "run" / "diffusion"))
    np.testing.assert_allclose(meta["latent_scale"], reference_meta["latent_scale"], rtol=1e-5)
    expected = read_metrics(os.path.join(reference, "diffusion", "metrics.jsonl"))
    got = read_metrics(str(tmp_path / "run" / "diffusion" / "metrics.jsonl"))
    assert len(got) == len(expected) == STEPS
    for name in ("ddpm", "euler", "interlead", "sim", "total"):  # step 1 sees identical weights: tight
        np.testing.assert_allclose(got[0][name], expected[0][name], rtol=1e-4, err_msg=name)
        np.testing.assert_allclose(got[-1][name], expected[-1][name], rtol=2e-2, err_msg=name)

    config.diffusion.latent_cache = "auto"
    auto = sources.latent_cache(config, vae_dir, params)
    assert auto == sources.latent_cache_dir(config, info.vae_id) and auto.startswith(prepared_dir)
    built = os.path.getmtime(os.path.join(auto, MANIFEST))
    assert sources.latent_cache(config, vae_dir, params) == auto and os.path.getmtime(os.path.join(auto, MANIFEST)) == built

    manifest = json.loads(open(os.path.join(cache, MANIFEST)).read())
    with open(os.path.join(cache, MANIFEST), "w") as f:
        json.dump(dict(manifest, vae_id="ffffffffffff"), f)
    config.diffusion.latent_cache = cache
    with pytest.raises(LatentCacheError, match=f"weights ffffffffffff.*this run's VAE has weights {info.vae_id}"):
        train(config, str(tmp_path / "refused"))



def test_encode_latents_cli_writes_a_cache_and_reports_a_missing_vae(uninterrupted, prepared_dir, tmp_path, repo_root):
    import subprocess
    import sys

    from sediff_jax.data.latents import read_info

    reference, _ = uninterrupted
    command = [sys.executable, "-m", "experiments.encode_latents", "--config=experiments/configs/tiny.py",
               f"--config.data.prepared_dir={prepared_dir}", "--config.data.num_synthetic=48"]
    done = subprocess.run(command + [f"--workdir={reference}", f"--out={tmp_path / 'cache'}"], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = read_info(str(tmp_path / "cache"))
    assert f"VAE weights {info.vae_id}" in done.stdout and info.dtype == "float16" and sum(info.splits.values()) == 48
    missing = subprocess.run(command + [f"--workdir={tmp_path / 'nowhere'}", f"--out={tmp_path / 'other'}"],
                             cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "nowhere" in missing.stderr
    assert not (tmp_path / "other").exists()


def test_stage_2_fine_tunes_from_a_trained_model_and_refuses_one_that_cannot_start_it(uninterrupted, prepared_dir,
                                                                                        tmp_path):
    """diffusion.init_from: stage 2 starts from an exported model's EMA denoiser and latent scale (with a learning
    rate of 1e-12 the run's weights stay the model's to float32 rounding; the model's weights are the trained
    run's moved by 0.1, so a run that started from its own initialisation would be 0.1 away),
    records which model it started from, fine-tunes an epsilon model into a v-prediction one (the same start, the
    model it gives predicts v), and refuses a missing model, another denoiser, or a model whose VAE is not the
    run's frozen VAE."""
    import dataclasses

    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.generation import export_model, load_model

    reference, _ = uninterrupted
    trained = load_model(reference)
    source = dataclasses.replace(trained, denoiser_params=jax.tree.map(lambda x: x + 0.1, trained.denoiser_params))
    model_dir = export_model(source, tmp_path / "model")
    source = load_model(model_dir)
    config = _fine_tuning_config(prepared_dir, model_dir)
    result, = train(config, str(tmp_path / "tuned"))
    assert result.step == 2 and np.isfinite(result.last_metrics["ddpm"])
    tuned = load_model(tmp_path / "tuned", which="latest")
    for a, b in zip(jax.tree.leaves(tuned.denoiser_params), jax.tree.leaves(source.denoiser_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert tuned.spec.latent_scale == source.spec.latent_scale
    meta, _ = ckpt.read_meta(str(tmp_path / "tuned" / "diffusion"))
    assert meta["init_from"]["model_id"] == source.id and meta["init_from"]["source"] == str(model_dir)
    assert source.spec.prediction == meta["init_from"]["prediction"] == "epsilon"
    # the exported model keeps which model it started from (the local path stays in the run's meta)
    assert load_model(export_model(tuned, tmp_path / "tuned_model")).spec.training["init_from"] == {
        "model_id": source.id, "step": source.spec.training.get("step"), "prediction": "epsilon"}

    config.diffusion.loss.prediction = "v"
    train(config, str(tmp_path / "to_v"))
    to_v = load_model(tmp_path / "to_v", which="latest")
    assert to_v.spec.prediction == "v" and to_v.spec.latent_scale == source.spec.latent_scale
    for a, b in zip(jax.tree.leaves(to_v.denoiser_params), jax.tree.leaves(source.denoiser_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    config.diffusion.loss.prediction = "epsilon"

    config.diffusion.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="init_from=.*nowhere' is not an existing model"):
        train(config, str(tmp_path / "missing"))
    other_vae = dataclasses.replace(source, vae_params=jax.tree.map(lambda x: x + 0.01, source.vae_params))
    config.diffusion.init_from = str(export_model(other_vae, tmp_path / "other_vae"))
    with pytest.raises(CheckpointError, match="its VAE is not this run's frozen VAE"):
        train(config, str(tmp_path / "refused_vae"))
    config.diffusion.init_from = str(model_dir)
    config.diffusion.model.time_embed_dim = 48
    with pytest.raises(CheckpointError, match="cannot start this run \\(denoiser"):
        train(config, str(tmp_path / "refused_denoiser"))


def test_posthoc_ema_combines_the_kept_checkpoints_and_the_cli_exports_the_best_on_real_validation(
        uninterrupted, tmp_path, repo_root, data_dir):
    """load_posthoc_ema rebuilds a power-function EMA from the run's kept EMA snapshots (steps 2 and 4) with
    fit_profile's coefficients, applied to what orbax restores, and records it. The CLI builds the same models and,
    with --validation_records, scores every width and the run's own EMA by the denoising loss on the same real
    PTB-XL validation records, and exports the row with the lowest loss."""
    import subprocess
    import sys

    from sediff_jax.checkpoints.posthoc_ema import fit_profile, power_profile
    from sediff_jax.generation import load_model
    from sediff_jax.generation.model import load_posthoc_ema

    workdir, _ = uninterrupted
    decay = tiny.get_config().diffusion.optimizer.ema_decay
    own, [(model, fit)] = load_posthoc_ema(workdir, [0.2])
    expected_fit = fit_profile([2, STEPS], decay, power_profile(STEPS, 0.2))
    np.testing.assert_allclose(fit.coefficients, expected_fit.coefficients)
    assert fit.steps == (2, STEPS) and 0 < fit.relative_error < 1
    snapshots = [ocp.StandardCheckpointer().restore(os.path.join(workdir, "diffusion", "checkpoints", str(s), "ema"))
                 for s in fit.steps]
    expected = jax.tree.map(lambda a, b: (fit.coefficients[0] * np.asarray(a, np.float64)
                                          + fit.coefficients[1] * np.asarray(b, np.float64)).astype(np.float32),
                            *snapshots)
    for got, want in zip(jax.tree.leaves(model.denoiser_params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    assert model.id != own.id == load_model(workdir, step=STEPS).id
    assert model.spec.training["posthoc_ema"] == {"sigma_rel": 0.2, "snapshot_steps": [2, STEPS, 2],
                                                  "profile_error": round(fit.relative_error, 5)}

    out, report = tmp_path / "chosen", tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "experiments.posthoc_ema", f"--workdir={workdir}",
                           "--sigma_rel=0.1,0.2", "--validation_records=6", f"--source_dir={data_dir / 'ptb-xl'}",
                           f"--out={out}", f"--report={report}"], cwd=repo_root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(report.read_text())["rows"]
    assert [r["sigma_rel"] for r in rows] == [None, 0.1, 0.2] and len({r["id"] for r in rows}) == 3
    assert rows[0]["id"] == own.id and rows[2]["id"] == model.id  # the CLI's models are the library's
    best = min(rows, key=lambda r: r["validation_loss"])
    assert rows[0]["minus_own"] == 0 and all(np.isfinite(r["validation_loss"]) for r in rows)
    exported = load_model(out)
    assert exported.id == best["id"] and exported.spec.training["posthoc_ema"]["chosen"] == best["model"]
    assert f"chosen: {best['model']}" in done.stdout and "post-hoc sigma_rel=0.2" in done.stdout
    assert exported.spec.training["posthoc_ema"].get("sigma_rel") == best["sigma_rel"]


@pytest.mark.slow  # (~60 s; the pieces are tested fast below and in tests/diffusion, tests/models)
def test_stage_2_with_repa_trains_with_its_term_in_the_total(uninterrupted, prepared_dir, tmp_path):
    """The repa variant: the step reports L_REPA = 1 - cos in [0, 2] and adds 0.5 x it to the total, in training
    and in evaluation; bad teachers are refused by name."""
    from sediff_jax.training.config import resolve

    reference, _ = uninterrupted
    config = resolve(common.apply_variant(_config(prepared_dir), "repa"))
    config.stage = "diffusion"
    config.diffusion.vae_checkpoint = os.path.join(reference, "vae")
    assert config.diffusion.repa_teacher == "shipped"  # the variant's default teacher
    workdir = tmp_path / "run"
    result, = train(config, str(workdir))
    assert result.step == STEPS and not result.stopped_early
    for r in read_metrics(str(workdir / "diffusion" / "metrics.jsonl")):  # (uniform L_DDPM, simulator terms on)
        assert 0.0 <= r["repa"] <= 2.0
        np.testing.assert_allclose(r["total"], r["ddpm"] + 0.5 * r["repa"] + 0.05 * (r["euler"] + r["interlead"]
                                                                                   + r["sim"]), rtol=1e-5)
    assert "repa" in read_metrics(str(workdir / "diffusion" / "metrics.jsonl"), "validation")[0]
    bad = resolve(config)
    bad.diffusion.model.repa_dim = 64
    with pytest.raises(ValueError, match="has 128 features per time step; set diffusion.model.repa_dim=128"):
        train(bad, str(tmp_path / "bad_dim"))
    bad.diffusion.model.repa_dim, bad.diffusion.repa_teacher = 128, str(tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match="none.safetensors: no such file"):
        train(bad, str(tmp_path / "no_teacher"))


def test_repa_targets_are_the_teachers_features_computed_once_and_looked_up_by_record(prepared_dir, tmp_path):
    """The teacher's features of every record of a split are written once (float16), read back by a later run
    instead of recomputed, and looked up by record_id in any order (bytes or str); an unknown record is named."""
    from sediff_jax.evaluation.clip import SHIPPED_CLIP, load_clip
    from sediff_jax.training import sources
    from sediff_jax.training.config import resolve
    from sediff_jax.training.repa import AlignmentTargets

    config = resolve(_config(prepared_dir))
    teacher = load_clip(SHIPPED_CLIP)
    source = sources.split_source(config, "validation")
    AlignmentTargets(teacher, tmp_path).add_split(source, "validation")
    saved = tmp_path / f"{teacher.id}_validation.npz"
    mtime = os.path.getmtime(saved)
    targets = AlignmentTargets(teacher, tmp_path)
    targets.add_split(source, "validation")  # read back, not recomputed
    assert os.path.getmtime(saved) == mtime
    records = [source[i] for i in (3, 0, 3)]
    expected = teacher.ecg_feature_tokens(np.stack([r["ecg"] for r in records]))
    got = targets.lookup([r["record_id"] for r in records])
    assert got.shape == (3, 63, 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())  # (stored float16)
    with pytest.raises(KeyError, match="'nope' has no REPA target"):
        targets.lookup(["nope"])


def test_a_checkpoint_from_before_new_model_and_recipe_fields_resumes(uninterrupted, prepared_dir, tmp_path):
    """A stage-2 checkpoint written before DenoiserConfig.repa_dim / repa_hidden and the loss's repa_weight
    existed (its meta lacks them) resumes under today's code, which runs them at their defaults."""
    import shutil

    reference, _ = uninterrupted
    workdir = tmp_path / "old"
    shutil.copytree(reference, workdir)
    for meta_file in (workdir / "diffusion" / "checkpoints").glob("*/meta/metadata"):
        meta = json.loads(meta_file.read_text())
        for key in ("repa_dim", "repa_hidden"):
            meta["model"].pop(key)
        meta["recipe"] = {k: v for k, v in meta["recipe"].items() if "repa" not in k}
        meta_file.write_text(json.dumps(meta))
    config = _config(prepared_dir)
    config.diffusion.training.num_steps = STEPS + 2
    results = train(config, str(workdir))
    assert [(r.stage, r.step) for r in results] == [("vae", STEPS), ("diffusion", STEPS + 2)]


def test_an_oversampled_stage_2_killed_and_resumed_reproduces_the_uninterrupted_run(uninterrupted, prepared_dir,
                                                                                   tmp_path):
    """Rare findings oversampled (`training.oversample_power`): the weighted epoch's position travels in the
    checkpoint, so a run stopped after step 2 and resumed ends bit for bit where the uninterrupted one does, and
    a resume that changes the weights is refused by name before anything is written."""
    from sediff_jax.data import sampling
    from sediff_jax.training import sources
    from sediff_jax.training.config import resolve

    reference, _ = uninterrupted

    def config(halt=0, power=1.0):
        c = _config(prepared_dir, diffusion_halt=halt)
        c.stage = "diffusion"
        c.diffusion.vae_checkpoint = os.path.join(reference, "vae")
        c.diffusion.training.update(oversample_power=power, oversample_reference=8, oversample_max=3.0)
        return c

    weights = sources.sampling_weights(resolve(config()).diffusion, sources.split_source(resolve(config()), "train"))
    assert weights is not None and weights.max() > weights.min() >= 1.0  # the tiny set's presets are drawn unequally
    whole, = train(config(), str(tmp_path / "whole"))
    first, = train(config(halt=2), str(tmp_path / "resumed"))
    assert (first.step, first.stopped_early) == (2, True)
    with pytest.raises(ckpt.CheckpointError, match="oversample_power: 1.0 there, 0.5 now"):
        train(config(power=0.5), str(tmp_path / "resumed"))
    second, = train(config(), str(tmp_path / "resumed"))
    assert whole.step == second.step == STEPS and not second.stopped_early
    _assert_trees_equal(_saved_state(str(tmp_path / "whole" / "diffusion"), STEPS),
                        _saved_state(str(tmp_path / "resumed" / "diffusion"), STEPS))
    assert read_metrics(str(tmp_path / "whole" / "diffusion" / "metrics.jsonl")) == \
        read_metrics(str(tmp_path / "resumed" / "diffusion" / "metrics.jsonl"))
    uniform = read_metrics(os.path.join(reference, "diffusion", "metrics.jsonl"))
    assert read_metrics(str(tmp_path / "whole" / "diffusion" / "metrics.jsonl"))[0]["total"] != uniform[0]["total"]
    assert sampling.weights_id(weights) != sampling.UNIFORM
