"""The builders of both training stages from a (resolved) training config: models, optimisers, jitted steps, stage
2's conditions, the recipe a resumed run must share, and the meta (stage 2: the `ModelSpec`) each stage's
checkpoints record. Data sources and loaders are in `training.sources`; a stage's run is put together from these
in `training.stage_runs`.

The stage runs, the train-step, TPU-compile and device benchmarks and the ablation runner build both stages here,
so a benchmark times exactly the step that training runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.checkpoints.spec import ExperienceSpec, ModelSpec
from sediff_jax.conditioning import ConditionBuilder
from sediff_jax.diffusion.losses import DiffusionLossConfig
from sediff_jax.diffusion.schedule import NoiseSchedule, make_schedule
from sediff_jax.experience.profiles import ProfileCorpus
from sediff_jax.experience.reports import ExperienceTable
from sediff_jax.io import jsonio
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser
from sediff_jax.models.vae import ECGVAE, VAEConfig
from sediff_jax.models.vae_losses import VAELossConfig
from sediff_jax.simulator.params import WaveParams
from sediff_jax.simulator.priors import load_prior
from sediff_jax.text import TextCache, make_text_encoder
from sediff_jax.training.config import ConfigError, base_config
from sediff_jax.training.state import OptimizerConfig, PyTree, make_optimizer, split_params
from sediff_jax.training.steps import DiffusionStepConfig, make_diffusion_steps, make_vae_steps

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def from_config(cls, config: ml_collections.ConfigDict | dict, **overrides):
    """Instantiate dataclass `cls` from the matching fields of `config` (lists become tuples)."""
    values = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in dict(config).items():
        if key in names:
            values[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    values.update(overrides)
    return cls(**values)


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The models' compute precision of `config.precision`: 'float32', or 'bfloat16' (mixed precision: bfloat16
    convolutions, attention and matmuls; float32 parameters, optimiser, losses, simulator and ODE solve)."""
    precision = config.precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


@dataclasses.dataclass(frozen=True)
class StageModel:
    """A stage's model as (graphdef, float32 params) and its optimiser."""

    graphdef: nnx.GraphDef
    params: PyTree
    optimizer: OptimizerConfig
    tx: optax.GradientTransformation


def _optimizer(stage_config: ml_collections.ConfigDict) -> tuple[OptimizerConfig, optax.GradientTransformation]:
    opt = from_config(OptimizerConfig, stage_config.optimizer, total_steps=int(stage_config.training.num_steps))
    return opt, make_optimizer(opt)


# -- stage 1 -------------------------------------------------------------------------------------------------

def vae_loss_config(config: ml_collections.ConfigDict) -> VAELossConfig:
    return from_config(VAELossConfig, config.vae.loss, fs=float(config.data.fs))


def vae_config(config: ml_collections.ConfigDict) -> VAEConfig:
    """The VAE of `config`; its decoded beat spans the loss's beat window (R at `beat_r_index`)."""
    before, after = vae_loss_config(config).beat_window
    return from_config(VAEConfig, config.vae.model, beat_samples=before + after, beat_r_index=before)


def build_vae(config: ml_collections.ConfigDict, seed: int) -> ECGVAE:
    return ECGVAE(vae_config(config), dtype=compute_dtype(config), rngs=nnx.Rngs(seed))


def vae_model(config: ml_collections.ConfigDict, seed: int) -> StageModel:
    graphdef, params = split_params(build_vae(config, seed))
    return StageModel(graphdef, params, *_optimizer(config.vae))


# Settings a resumed run may change: how long and how often, where caches and inputs live, how data is read.
RESUMABLE_KEYS = ("stage", "data.source_dir", "data.prepared_dir", "data.prepare_if_missing", "data.num_workers",
                  "data.prefetch", "data.loader_workers", "text.cache_dir")
RESUMABLE_TRAINING_KEYS = ("num_steps", "log_every", "eval_every", "checkpoint_every", "max_to_keep",
                           "max_eval_batches", "tensorboard", "progress_bar", "halt_at_step", "max_minutes", "eval_samples",
                           "eval_sample_steps")
_STAGE_PATH_KEYS = {"diffusion": ("vae_checkpoint", "latent_cache", "latent_cache_dtype", "init_from")}


def model_defaults(stage: str | None) -> dict[str, Any]:
    """The defaults of stage `stage`'s network config (DenoiserConfig, VAEConfig) as its checkpoints' meta
    records them: what a checkpoint written before a field existed ran with ({} for another stage)."""
    cls = {"diffusion": DenoiserConfig, "vae": VAEConfig}.get(stage)
    return {} if cls is None else jsonio.strict(dataclasses.asdict(cls()))


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """{"group.key": value} of every leaf, tuples as lists (as JSON holds them)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def recipe(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
    """The settings that define stage `stage`'s run, flattened ("diffusion.optimizer.learning_rate": 2e-4), as its
    checkpoints record them: everything of the stage's group and the shared groups but the resumable keys (a
    resumed run whose recipe differs would silently mix two runs)."""
    flat = _flatten(config)
    other = "diffusion" if stage == "vae" else "vae"
    skip = set(RESUMABLE_KEYS) | {f"{stage}.training.{k}" for k in RESUMABLE_TRAINING_KEYS} | {
        f"{stage}.{k}" for k in _STAGE_PATH_KEYS.get(stage, ())}
    return jsonio.strict({k: v for k, v in sorted(flat.items())
                          if k not in skip and not k.startswith(other + ".")
                          and not (stage == "vae" and k.split(".")[0] in ("text", "experience", "variant"))})


def _schema_defaults() -> dict[str, Any]:
    """Every key of the training config schema (`config.base_config`) with its default, flattened like `recipe`."""
    return jsonio.strict(_flatten(base_config()))


def check_recipe(saved_meta: dict, recipe: dict | None, stage_dir: str, step: int) -> None:
    """CheckpointError naming the differing settings when a stage's checkpoint was trained with another recipe
    (`stages.recipe`; checkpoints written before it was recorded are not checked)."""
    saved = saved_meta.get("recipe")
    if not isinstance(saved, dict) or recipe is None:
        return
    # a setting added to the schema after that checkpoint was written ran at its default there (the schema's
    # defaults keep earlier behaviour), so a run that keeps the default resumes
    was = {**_schema_defaults(), **saved}
    differing = [k for k in sorted(set(saved) | set(recipe)) if was.get(k) != recipe.get(k)]
    if differing:
        shown = "; ".join(f"{k}: {was.get(k)!r} there, {recipe.get(k)!r} now" for k in differing[:4])
        more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
        raise ckpt.CheckpointError(
            f"{stage_dir}: the run there (step {step}) was trained with other settings ({shown}{more}); resuming "
            "would mix two runs and replace its results. Use a new workdir for the new settings, or rerun with the "
            "old ones (only steps, intervals, paths and loader settings may change on resume)")


def check_resumable(config: ml_collections.ConfigDict, workdir: str, stages_run: tuple[str, ...]) -> None:
    """Before anything is written: every stage this run resumes was trained with this run's recipe."""
    for stage in stages_run:
        stage_dir = os.path.join(workdir, stage)
        if not os.path.isdir(os.path.join(stage_dir, "checkpoints")):
            continue
        try:
            saved_meta, step = ckpt.read_meta(stage_dir)
        except ckpt.CheckpointError:
            continue  # (no complete checkpoint yet: nothing to mix)
        check_recipe(saved_meta, recipe(config, stage), stage_dir, step)


def vae_meta(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What stage 1's checkpoints record (JSON types): the VAE config, fs, loss settings, precision, recipe."""
    return jsonio.strict({"stage": "vae", "model": dataclasses.asdict(vae_config(config)), "fs": float(config.data.fs),
                          "loss": dataclasses.asdict(vae_loss_config(config)), "precision": config.precision,
                          "recipe": recipe(config, "vae")})


def vae_steps(config: ml_collections.ConfigDict, model: StageModel, mesh: Mesh) -> tuple[Callable, Callable]:
    """(train_step(state, batch), eval_step(params, batch)) of stage 1 (`training.steps.make_vae_steps`)."""
    return make_vae_steps(model.graphdef, model.tx, vae_loss_config(config), model.optimizer.ema_decay, mesh)


# -- stage 2 -------------------------------------------------------------------------------------------------

def denoiser_config(config: ml_collections.ConfigDict, latent_channels: int, context_dim: int) -> DenoiserConfig:
    return from_config(DenoiserConfig, config.diffusion.model, latent_channels=latent_channels,
                       context_dim=context_dim)


def diffusion_model(config: ml_collections.ConfigDict, latent_channels: int, context_dim: int, seed: int
                    ) -> StageModel:
    denoiser = LatentDenoiser(denoiser_config(config, latent_channels, context_dim), dtype=compute_dtype(config),
                              rngs=nnx.Rngs(seed))
    graphdef, params = split_params(denoiser)
    return StageModel(graphdef, params, *_optimizer(config.diffusion))


def diffusion_loss_config(config: ml_collections.ConfigDict, vae: VAEConfig | None = None, **overrides
                          ) -> DiffusionLossConfig:
    """Stage 2's loss settings; the decoded beat's R position is the frozen VAE's (`vae`, default: `config`'s)."""
    vae = vae_config(config) if vae is None else vae
    fs = float(config.data.fs)
    return from_config(DiffusionLossConfig, config.diffusion.loss, fs=fs, beat_before_s=vae.beat_r_index / fs,
                       **overrides)


def schedule(config: ml_collections.ConfigDict) -> NoiseSchedule:
    """Stage 2's training noise schedule."""
    return make_schedule(config.diffusion.schedule.kind, int(config.diffusion.schedule.num_steps))


def diffusion_step_config(config: ml_collections.ConfigDict, latent_scale: float) -> DiffusionStepConfig:
    """Stage 2's step settings: the latent scale, the condition and rhythm-scaffold dropout."""
    dcfg = config.diffusion
    return DiffusionStepConfig(latent_scale=float(latent_scale), condition_dropout=tuple(dcfg.condition_dropout),
                               rhythm=int(dcfg.model.rhythm_channels) > 0, rhythm_dropout=float(dcfg.rhythm_dropout),
                               amplitudes=int(dcfg.model.amplitude_leads) > 0,
                               amplitude_dropout=float(dcfg.amplitude_dropout))


def diffusion_steps(config: ml_collections.ConfigDict, model: StageModel, vae_graphdef: nnx.GraphDef,
                    loss_config: DiffusionLossConfig, step_config: DiffusionStepConfig,
                    wave_table: WaveParams, mesh: Mesh) -> tuple[Callable, Callable]:
    """(train_step(state, vae_params, batch), eval_step(params, vae_params, key, batch)) of stage 2
    (`training.steps.make_diffusion_steps`); `step_config`: `diffusion_step_config`."""
    return make_diffusion_steps(model.graphdef, vae_graphdef, model.tx, schedule(config), loss_config, step_config,
                                wave_table, model.optimizer.ema_decay, mesh)


@dataclasses.dataclass
class DiffusionConditions:
    """Stage 2's conditioning: the text encoder and its cache, the simulator prior's classes and wave table, the
    experience table (if `experience.dir`) and what the checkpoint records of it."""

    encoder: Any
    builder: ConditionBuilder
    class_names: tuple[str, ...]
    wave_table: WaveParams
    experience: dict[str, Any]
    caches: tuple[TextCache, ...]

    def save_caches(self) -> None:
        """Persist the text encodings (process 0 only: one writer of the shared workdir)."""
        if jax.process_index() == 0:
            for cache in self.caches:
                cache.save()


def diffusion_conditions(config: ml_collections.ConfigDict, workdir: str) -> DiffusionConditions:
    """Text encoder, encodings caches (in `text.cache_dir`, default `workdir`), prior classes and experience."""
    encoder = make_text_encoder(config.text.encoder, max_length=config.text.max_length)
    cache_dir = config.text.cache_dir or workdir
    os.makedirs(cache_dir, exist_ok=True)
    text_cache = TextCache(encoder, os.path.join(cache_dir, f"text_cache_{config.text.encoder}.npz"))
    prior = load_prior(config.diffusion.prior or None)
    class_names = tuple(prior.class_names)
    table, experience_cache, recorded = None, None, {"used": False}
    if config.experience.dir:
        directory = config.experience.dir
        table = ExperienceTable.load(os.path.join(directory, "experience.jsonl"))
        max_tokens = int(config.experience.max_tokens)
        experience_cache = TextCache(make_text_encoder(config.text.encoder, max_length=max_tokens),
                                     os.path.join(cache_dir, f"experience_cache_{config.text.encoder}.npz"))
        recorded = {"used": True, "dir": os.path.abspath(directory), "max_tokens": max_tokens, "records": len(table)}
        reports = [e["report"] for e in table.entries.values() if e["report"].strip()]
        new = experience_cache.add(reports)  # once, in large batches: no training step waits for the encoder
        if new:
            logging.info("encoded %d experience reports into %s", new, experience_cache.cache_path)
            if jax.process_index() == 0:
                experience_cache.save()
        manifest = os.path.join(directory, "manifest.json")
        if os.path.exists(manifest):
            with open(manifest) as f:
                built = json.load(f)
            recorded.update(retrieval=built.get("retrieval"), distiller=built.get("distiller"))
    caches = (text_cache,) if experience_cache is None else (text_cache, experience_cache)
    amplitudes = record_amplitudes(config) if int(config.diffusion.model.amplitude_leads) else None
    return DiffusionConditions(encoder, ConditionBuilder(text_cache, class_names, table, experience_cache,
                                                         amplitudes),
                               class_names, prior.wave_table(class_names), recorded, caches)


def record_amplitudes(config: ml_collections.ConfigDict) -> ProfileCorpus:
    """The profile corpus an amplitude-conditioned denoiser reads each training record's lead amplitudes from
    (`experience.dir`/profiles.npz); it must have them measured at the run's `data.fs`."""
    if not config.experience.dir:
        raise ConfigError("config diffusion.model.amplitude_leads > 0 reads each record's amplitudes from the "
                          "experience corpus: set experience.dir (experiments/build_experience.py output)")
    path = os.path.join(config.experience.dir, "profiles.npz")
    corpus = ProfileCorpus.load(path)
    fs = float(config.data.fs)
    if not corpus.has_amplitudes_at(fs):
        measured = (f"measured at {corpus.amplitude_fs:g} Hz" if corpus.has_amplitudes else "none measured")
        raise ConfigError(f"{path}: diffusion.model.amplitude_leads needs each record's lead amplitudes at "
                          f"{fs:g} Hz ({measured}); rebuild with experiments.build_experience --amplitude_fs={fs:g}")
    known = np.isfinite(corpus.amplitudes).all(axis=1)
    logging.info("lead amplitudes of %d of %d corpus records (%s, %g Hz)", known.sum(), len(corpus), path, fs)
    return corpus


def diffusion_spec(config: ml_collections.ConfigDict, model: DenoiserConfig, vae: VAEConfig,
                   loss: DiffusionLossConfig, conditions: DiffusionConditions, latent_scale: float) -> ModelSpec:
    """The trained model stage 2 makes, as its checkpoints record it (meta `spec`) and `export_model` writes it."""
    dcfg = config.diffusion
    return ModelSpec(
        fs=float(config.data.fs), duration_s=float(config.data.duration_s), vae=vae, denoiser=model,
        schedule_kind=dcfg.schedule.kind, schedule_steps=int(dcfg.schedule.num_steps), prediction=loss.prediction,
        latent_scale=float(latent_scale), text_encoder=conditions.encoder.id, prior=str(dcfg.prior or "default"),
        prior_classes=tuple(conditions.class_names), experience=ExperienceSpec.from_json(conditions.experience),
        provenance={"loss": jsonio.strict(dataclasses.asdict(loss))})


def diffusion_meta(config: ml_collections.ConfigDict, model: DenoiserConfig, vae_dir: str, vae: VAEConfig,
                   loss: DiffusionLossConfig, conditions: DiffusionConditions) -> dict[str, Any]:
    """What stage 2's checkpoints record (JSON types); the loop adds the latent scale and `spec` (`diffusion_spec`,
    what `generation.load_training_run` reads)."""
    dcfg = config.diffusion
    return jsonio.strict({
        "stage": "diffusion", "model": dataclasses.asdict(model),
        "vae": {"directory": os.path.abspath(vae_dir), "model": dataclasses.asdict(vae)},
        "schedule": {"kind": dcfg.schedule.kind, "num_steps": int(dcfg.schedule.num_steps)},
        "loss": dataclasses.asdict(loss), "fs": float(config.data.fs), "duration_s": float(config.data.duration_s),
        "text_encoder": conditions.encoder.id, "prior": str(dcfg.prior or "default"),
        "prior_classes": list(conditions.class_names), "experience": conditions.experience,
        "precision": config.precision, "recipe": recipe(config, "diffusion")})
