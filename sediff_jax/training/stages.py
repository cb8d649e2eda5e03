"""The builders of both training stages from a (resolved) training config: data sources and loaders, models,
optimisers, jitted steps, stage 2's conditions, and the meta each stage's checkpoints record.

The loop (`sediff_jax.training.loop`), the train-step and device benchmarks and the ablation runner build both
stages here, so a benchmark times exactly the step that training runs.
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
import optax
from flax import nnx
from jax.sharding import Mesh

from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.checkpoints.trained import load_vae
from sediff_jax.checkpoints.weights import flatten_params, weights_id
from sediff_jax.conditioning import ConditionBuilder
from sediff_jax.data import latents
from sediff_jax.data.builder import VERSION, config_name, open_split
from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.data.loader import BatchLoader, LoaderState
from sediff_jax.data.prepare import PrepareConfig, prepare
from sediff_jax.diffusion.losses import DiffusionLossConfig
from sediff_jax.diffusion.schedule import make_schedule
from sediff_jax.experience.reports import ExperienceTable
from sediff_jax.io import jsonio
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser
from sediff_jax.models.vae import ECGVAE, VAEConfig
from sediff_jax.models.vae_losses import VAELossConfig
from sediff_jax.simulator.params import WaveParams
from sediff_jax.simulator.priors import load_prior
from sediff_jax.text import TextCache, make_text_encoder
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


# -- data -----------------------------------------------------------------------------------------------------

def canonical_config(config: ml_collections.ConfigDict) -> CanonicalConfig:
    return CanonicalConfig(fs=float(config.data.fs), duration_s=float(config.data.duration_s),
                           highpass_hz=config.data.highpass_hz)


def prepared_path(config: ml_collections.ConfigDict) -> str:
    """The prepared dataset of `config.data`; built first when missing and `data.prepare_if_missing`."""
    data = config.data
    path = os.path.join(data.prepared_dir, data.dataset, config_name(canonical_config(config)), VERSION)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return path
    if not data.prepare_if_missing:
        raise FileNotFoundError(f"{path}: prepared dataset not found (run experiments/prepare_data.py or set "
                                "data.prepare_if_missing)")
    if jax.process_count() > 1:
        raise FileNotFoundError(f"{path}: prepare the dataset before a multi-host run")
    if data.dataset != "synthetic" and not data.source_dir:
        raise ValueError(f"data.source_dir is needed to prepare {data.dataset}")
    logging.info("preparing %s into %s", data.dataset, path)
    report = prepare(PrepareConfig(dataset=data.dataset, out_dir=data.prepared_dir, source_dir=data.source_dir,
                                   canonical=canonical_config(config), num_synthetic=data.num_synthetic,
                                   seed=data.synthetic_seed, num_workers=data.num_workers))
    logging.info("%s", report.summary())
    return path


def split_source(config: ml_collections.ConfigDict, split: str):
    """The random-access source of one split of the prepared dataset."""
    return open_split(prepared_path(config), split)


def stage2_source(config: ml_collections.ConfigDict, split: str, latent_dir: str | None = None):
    """Stage 2's source of one split: the latent cache's at `latent_dir`, else the prepared dataset's."""
    return split_source(config, split) if not latent_dir else latents.LatentSource(latent_dir, split)


def cache_splits(config: ml_collections.ConfigDict) -> dict[str, int]:
    """split -> records of the prepared dataset, for the training, evaluation and test splits of `config`."""
    names = dict.fromkeys(s for s in (config.data.train_split, config.data.eval_split, config.data.test_split) if s)
    return {split: len(split_source(config, split)) for split in names}


def vae_weights_id(params: PyTree) -> str:
    """The id of a VAE's weights (`checkpoints.weights_id`): what a latent cache records of its encoder."""
    return weights_id(flatten_params(jax.device_get(params), "vae"))


def latent_cache_dir(config: ml_collections.ConfigDict, vae_id: str) -> str:
    """Where `diffusion.latent_cache=auto` keeps the cache of the VAE with weights `vae_id`: beside the prepared
    dataset (`<prepared version dir>_latents/<vae_id>`)."""
    return f"{prepared_path(config)}_latents/{vae_id}"


def build_latent_cache(config: ml_collections.ConfigDict, vae_dir: str, directory: str | None = None,
                       dtype: str | None = None, batch_size: int = 64) -> tuple[str, latents.LatentCacheInfo]:
    """Encode every record of the config's splits with the VAE at `vae_dir` (its best EMA weights, float32) into
    a latent cache at `directory` (default: `latent_cache_dir`); returns (directory, info)."""
    graphdef, params, meta = load_vae(vae_dir, which="best", dtype=jnp.float32)
    vae_id = vae_weights_id(params)
    directory = directory or latent_cache_dir(config, vae_id)
    vae = nnx.merge(graphdef, params)
    encode = jax.jit(lambda ecg: vae.encode(ecg)[0])
    downsampling = vae.config.downsampling
    num_samples = canonical_config(config).num_samples
    info = latents.LatentCacheInfo(
        vae_id=vae_id, vae_dir=os.path.abspath(vae_dir), dataset=os.path.abspath(prepared_path(config)),
        fs=float(config.data.fs), num_samples=num_samples,
        latent_shape=(num_samples // downsampling, vae.config.latent_channels), downsampling=downsampling,
        dtype=dtype or config.diffusion.latent_cache_dtype, splits=cache_splits(config))
    logging.info("encoding %s into the latent cache %s", dict(info.splits), directory)
    info = latents.write_cache(directory, lambda split: eval_loader(split_source(config, split), batch_size),
                              encode, info)
    logging.info("latent cache written in %.0f s", info.seconds)
    return directory, info


def latent_cache(config: ml_collections.ConfigDict, vae_dir: str, vae_params: PyTree) -> str | None:
    """The latent cache stage 2 trains from (`diffusion.latent_cache`): None for '' (encode every batch), the
    cache beside the prepared dataset for 'auto' (built by process 0 when missing), or the given directory. It
    must have been made by this VAE (its weights id) from the same prepared dataset (its split sizes)."""
    setting = config.diffusion.latent_cache
    if not setting:
        return None
    vae_id = vae_weights_id(vae_params)
    directory = latent_cache_dir(config, vae_id) if setting == "auto" else setting
    if setting == "auto" and not os.path.exists(os.path.join(directory, "manifest.json")):
        if jax.process_count() > 1:
            raise latents.LatentCacheError(f"{directory}: build the latent cache before a multi-host run "
                                           "(python -m experiments.encode_latents)")
        build_latent_cache(config, vae_dir, directory)
    latents.check_matches(latents.read_info(directory), directory, vae_id=vae_id, splits=cache_splits(config))
    return directory


def train_loader(config: ml_collections.ConfigDict, stage_config: ml_collections.ConfigDict, source,
                 state: LoaderState | None) -> BatchLoader:
    """The shuffled, repeating, per-host training loader of a stage, resumed at `state`."""
    return BatchLoader(source, stage_config.training.batch_size, seed=config.seed, state=state,
                       prefetch=config.data.prefetch, workers=config.data.loader_workers)


def eval_loader(source, batch_size: int) -> BatchLoader:
    """One ordered pass over `source`, the last batch padded (its mask says which rows are real)."""
    return BatchLoader(source, batch_size, shuffle=False, drop_remainder=False, num_epochs=1, prefetch=1)


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
                           "max_eval_batches", "tensorboard", "progress_bar", "halt_at_step")
_STAGE_PATH_KEYS = {"diffusion": ("vae_checkpoint", "latent_cache", "latent_cache_dtype", "init_from")}


def recipe(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
    """The settings that define stage `stage`'s run, flattened ("diffusion.optimizer.learning_rate": 2e-4), as its
    checkpoints record them: everything of the stage's group and the shared groups but the resumable keys (a
    resumed run whose recipe differs would silently mix two runs)."""
    flat: dict[str, Any] = {}

    def walk(group, prefix):
        for key, value in group.items():
            name = f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, name + ".")
            else:
                flat[name] = list(value) if isinstance(value, tuple) else value

    walk(config, "")
    other = "diffusion" if stage == "vae" else "vae"
    skip = set(RESUMABLE_KEYS) | {f"{stage}.training.{k}" for k in RESUMABLE_TRAINING_KEYS} | {
        f"{stage}.{k}" for k in _STAGE_PATH_KEYS.get(stage, ())}
    return jsonio.strict({k: v for k, v in sorted(flat.items())
                          if k not in skip and not k.startswith(other + ".")
                          and not (stage == "vae" and k.split(".")[0] in ("text", "experience", "variant"))})


def check_recipe(saved_meta: dict, recipe: dict | None, stage_dir: str, step: int) -> None:
    """CheckpointError naming the differing settings when a stage's checkpoint was trained with another recipe
    (`stages.recipe`; checkpoints written before it was recorded are not checked)."""
    saved = saved_meta.get("recipe")
    if not isinstance(saved, dict) or recipe is None:
        return
    differing = [k for k in sorted(set(saved) | set(recipe)) if saved.get(k) != recipe.get(k)]
    if differing:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {recipe.get(k)!r} now" for k in differing[:4])
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


def diffusion_steps(config: ml_collections.ConfigDict, model: StageModel, vae_graphdef: nnx.GraphDef,
                    loss_config: DiffusionLossConfig, latent_scale: float, wave_table: WaveParams, mesh: Mesh
                    ) -> tuple[Callable, Callable]:
    """(train_step(state, vae_params, batch), eval_step(params, vae_params, key, batch)) of stage 2
    (`training.steps.make_diffusion_steps`) with the config's schedule and condition dropout."""
    dcfg = config.diffusion
    schedule = make_schedule(dcfg.schedule.kind, int(dcfg.schedule.num_steps))
    step_config = DiffusionStepConfig(latent_scale=float(latent_scale),
                                      condition_dropout=tuple(dcfg.condition_dropout),
                                      rhythm=int(dcfg.model.rhythm_channels) > 0,
                                      rhythm_dropout=float(dcfg.rhythm_dropout))
    return make_diffusion_steps(model.graphdef, vae_graphdef, model.tx, schedule, loss_config, step_config,
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
    return DiffusionConditions(encoder, ConditionBuilder(text_cache, class_names, table, experience_cache),
                               class_names, prior.wave_table(class_names), recorded, caches)


def diffusion_meta(config: ml_collections.ConfigDict, model: DenoiserConfig, vae_dir: str, vae_meta_: dict,
                   loss: DiffusionLossConfig, conditions: DiffusionConditions) -> dict[str, Any]:
    """What stage 2's checkpoints record (JSON types); `checkpoints.spec.ModelSpec.from_training` reads it."""
    dcfg = config.diffusion
    return jsonio.strict({
        "stage": "diffusion", "model": dataclasses.asdict(model),
        "vae": {"directory": os.path.abspath(vae_dir), "model": vae_meta_["model"]},
        "schedule": {"kind": dcfg.schedule.kind, "num_steps": int(dcfg.schedule.num_steps)},
        "loss": dataclasses.asdict(loss), "fs": float(config.data.fs), "duration_s": float(config.data.duration_s),
        "text_encoder": conditions.encoder.id, "prior": str(dcfg.prior or "default"),
        "prior_classes": list(conditions.class_names), "experience": conditions.experience,
        "precision": config.precision, "recipe": recipe(config, "diffusion")})
