"""Each training stage as the one driver (`training.loop.run_stage`) runs it, in three steps:

1. `initial()`: the model's initial train state and the meta its checkpoints record;
2. `resumed(state, meta, step)`: after the driver restored the stage's checkpoint (if any); stage 2 starts a fresh
   run from `diffusion.init_from` here;
3. `parts(meta, loader_state)`: what the loop runs: the train step on host batches, the training loader at its
   restored position, the evaluators (`training.evaluators`), the metric that picks the best checkpoint, the test
   evaluation, and the final meta (stage 2 measures its latent scale here on a fresh run).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.checkpoints.spec import DEFAULT_LATENT_CLIP
from sediff_jax.checkpoints.trained import TrainedVAE, load_vae
from sediff_jax.data.loader import BatchLoader, LoaderState
from sediff_jax.diffusion.sampling import SamplerConfig
from sediff_jax.evaluation.clip import SHIPPED_CLIP, load_clip
from sediff_jax.parallel import host_local_to_global, replicated_sharding
from sediff_jax.training import sources, stages
from sediff_jax.training.evaluators import Evaluator, MeanOverRecords, SampleWriter, mean_per_record
from sediff_jax.training.repa import AlignmentTargets
from sediff_jax.training.state import TrainState, init_state
from sediff_jax.training.steps import (DIFFUSION_BATCH_KEYS, LATENT_BATCH_KEYS, VAE_BATCH_KEYS, latent_scale_from,
                                       make_sampling_step)
from sediff_jax.training.warm_start import warm_started


def numeric_batch(batch: dict[str, Any], keys: tuple[str, ...], mesh) -> dict[str, jax.Array]:
    """The step's inputs of a host batch as global batch-sharded arrays."""
    return host_local_to_global({k: batch[k] for k in keys}, mesh)


@dataclasses.dataclass
class StageParts:
    """What the loop runs for one stage (see the module docstring)."""

    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    loader: BatchLoader
    evaluators: tuple[Evaluator, ...]
    best_metric: str
    test: Callable[[TrainState, str], dict[str, float]]
    meta: dict
    close: Callable[[], None] = lambda: None


class VAEStage:
    """Stage 1: the ECG VAE, under `workdir/vae`."""

    name = "vae"

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh):
        self.config, self.mesh, self.group = config, mesh, config.vae
        self.model = stages.vae_model(config, config.seed)

    def initial(self) -> tuple[TrainState, dict]:
        state = init_state(self.model.params, self.model.tx, self.config.seed)
        return jax.device_put(state, replicated_sharding(self.mesh)), stages.vae_meta(self.config)

    def resumed(self, state: TrainState, meta: dict, step: int) -> tuple[TrainState, dict]:
        return state, meta

    def parts(self, meta: dict, loader_state: LoaderState | None) -> StageParts:
        config, mesh, training = self.config, self.mesh, self.group.training
        train_step, eval_step = stages.vae_steps(config, self.model, mesh)
        loader = sources.train_loader(config, self.group, sources.split_source(config, config.data.train_split),
                                      loader_state)

        def finish(sums: dict[str, float], count: float) -> dict[str, float]:
            n = max(sums.get("samples", 0.0), 1.0)
            return {"mae_mv": sums["abs_error"] / n, "rmse_mv": math.sqrt(sums["squared_error"] / n)}

        loss = MeanOverRecords(sources.split_source(config, config.data.eval_split), training.batch_size,
                               lambda params, k, batch: eval_step(params, numeric_batch(batch, VAE_BATCH_KEYS, mesh)),
                               finish, max_batches=training.max_eval_batches)
        return StageParts(
            train_step=lambda state, batch: train_step(state, numeric_batch(batch, VAE_BATCH_KEYS, mesh)),
            loader=loader, evaluators=(loss,), best_metric="mae_mv", meta=meta,
            test=lambda state, split: loss.on(sources.split_source(config, split))(state))


def frozen_vae(config: ml_collections.ConfigDict, workdir: str, mesh) -> tuple[str, TrainedVAE]:
    """(directory, the VAE with its EMA params replicated over `mesh`) of stage 2's frozen VAE."""
    vae_dir = config.diffusion.vae_checkpoint or os.path.join(workdir, "vae")
    try:
        vae = load_vae(vae_dir, which="best", dtype=stages.compute_dtype(config))
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(f"stage 2 needs a trained VAE: {e}. Train stage 1 first (--config.stage=vae or "
                                   "both) or point --config.diffusion.vae_checkpoint at a VAE stage directory") from e
    if abs(vae.fs - float(config.data.fs)) > 1e-6:
        raise ckpt.CheckpointError(f"{vae_dir}: the VAE was trained at {vae.fs} Hz, data.fs is {config.data.fs}")
    return vae_dir, vae._replace(params=jax.device_put(vae.params, replicated_sharding(mesh)))


class DiffusionStage:
    """Stage 2: the latent denoiser with its frozen VAE, text encoder, prior and experience, under
    `workdir/diffusion`."""

    name = "diffusion"

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh):
        self.config, self.mesh, self.group = config, mesh, config.diffusion
        self.vae_dir, frozen = frozen_vae(config, workdir, mesh)
        self.vae_graphdef, self.vae_params, self.vae = frozen.graphdef, frozen.params, frozen.config
        self.conditions = stages.diffusion_conditions(config, workdir)
        context_dim = self.conditions.encoder.dim
        self.model_config = stages.denoiser_config(config, self.vae.latent_channels, context_dim)
        self.model = stages.diffusion_model(config, self.vae.latent_channels, context_dim, config.seed + 1)
        self.loss_config = stages.diffusion_loss_config(config, self.vae)
        self.stage_dir = os.path.join(workdir, self.name)
        self.workdir = workdir
        self._meta = stages.diffusion_meta(config, self.model_config, self.vae_dir, self.vae, self.loss_config,
                                           self.conditions)

    def initial(self) -> tuple[TrainState, dict]:
        state = init_state(self.model.params, self.model.tx, self.config.seed + 1)
        return jax.device_put(state, replicated_sharding(self.mesh)), self._meta

    def resumed(self, state: TrainState, meta: dict, step: int) -> tuple[TrainState, dict]:
        if step == 0 and self.group.init_from:  # fine-tuning: a trained model's weights, a fresh optimiser
            return warm_started(self.config, self.model, self.model_config, self.vae_params, meta, self.mesh)
        return state, meta

    def _latent_scale(self, train_source, latent_dir: str | None) -> float:
        """Unit-variance latents: 1 / std of the VAE latent means of the first training examples (a fresh run)."""
        vae = nnx.merge(self.vae_graphdef, self.vae_params)
        encode = jax.jit(lambda ecg: vae.encode(ecg)[0]) if latent_dir is None else (lambda mean: mean)
        probe = BatchLoader(train_source, self.group.training.batch_size, seed=self.config.seed, shuffle=False,
                            num_epochs=1, prefetch=0, process_index=0, process_count=1)
        field = "ecg" if latent_dir is None else "latent_mean"
        batches = [b[field] for _, b in zip(range(self.group.latent_scale_batches), probe)]
        probe.close()
        scale = latent_scale_from(encode, batches)
        logging.info("latent scale %.4f", scale)
        return scale

    def parts(self, meta: dict, loader_state: LoaderState | None) -> StageParts:
        config, mesh, training = self.config, self.mesh, self.group.training
        latent_dir = sources.latent_cache(config, self.vae_dir, self.vae_params)
        source = functools.partial(sources.stage2_source, config, latent_dir=latent_dir)
        train_source = source(config.data.train_split)
        batch_keys = DIFFUSION_BATCH_KEYS if latent_dir is None else LATENT_BATCH_KEYS
        if latent_dir is not None:
            logging.info("stage 2 trains from the latent cache %s", latent_dir)
        targets = self._alignment_targets() if self.loss_config.repa_weight > 0 else None
        if targets is not None:
            batch_keys += ("repa_target",)
        if self.model_config.amplitude_leads:
            batch_keys += ("amplitudes",)  # each record's own, added by the condition builder
        meta = dict(meta)
        if "latent_scale" not in meta:
            meta["latent_scale"] = self._latent_scale(train_source, latent_dir)
        meta["spec"] = stages.diffusion_spec(self.config, self.model_config, self.vae, self.loss_config,
                                             self.conditions, meta["latent_scale"]).to_json()
        step_config = stages.diffusion_step_config(config, meta["latent_scale"])
        train_step, eval_step = stages.diffusion_steps(config, self.model, self.vae_graphdef, self.loss_config,
                                                       step_config, self.conditions.wave_table, mesh)
        vae_params = self.vae_params

        def to_inputs(batch):
            batch = self.conditions.builder(batch)
            if targets is not None:
                batch["repa_target"] = targets.lookup(batch["record_id"])
            return numeric_batch(batch, batch_keys, mesh)

        def batch_terms(params, k, batch):  # fixed noise per batch: comparable across evaluations
            return eval_step(params, vae_params, jax.random.PRNGKey(1000 + k), to_inputs(batch))

        eval_source = source(config.data.eval_split)
        loss = MeanOverRecords(eval_source, training.batch_size, batch_terms, mean_per_record,
                               max_batches=training.max_eval_batches, per_record_means=True,
                               after=self.conditions.save_caches)
        evaluators: tuple[Evaluator, ...] = (loss,)
        if training.eval_samples:
            evaluators += (self._sample_writer(eval_source, to_inputs, step_config),)
        return StageParts(
            train_step=lambda state, batch: train_step(state, vae_params, to_inputs(batch)),
            loader=sources.train_loader(config, self.group, train_source, loader_state),
            evaluators=evaluators, best_metric="ddpm", meta=meta,
            test=lambda state, split: loss.on(source(split))(state), close=self.conditions.save_caches)

    def _alignment_targets(self) -> AlignmentTargets:
        """L_REPA's targets: the teacher (`diffusion.repa_teacher`) checked against the projector, its features of
        every record of the training, evaluation and test splits (computed once, kept under workdir/repa_targets)."""
        path = str(SHIPPED_CLIP) if self.group.repa_teacher == "shipped" else self.group.repa_teacher
        if not os.path.exists(path):
            raise FileNotFoundError(f"diffusion.repa_teacher {path}: no such file (an ECG-CLIP safetensors from "
                                    "experiments/train_clip.py)")
        targets = AlignmentTargets(load_clip(path), os.path.join(self.workdir, "repa_targets"))
        if targets.feature_dim != self.model_config.repa_dim:
            raise ValueError(f"diffusion.repa_teacher {path} has {targets.feature_dim} features per time step; "
                             f"set diffusion.model.repa_dim={targets.feature_dim} (is {self.model_config.repa_dim})")
        for split in sources.cache_splits(self.config):
            targets.add_split(sources.split_source(self.config, split), split)
        return targets

    def _sample_writer(self, eval_source, to_inputs, step_config) -> SampleWriter:
        """`training.eval_samples` ECGs from the first validation records' conditions, DDIM with the recommended
        guidance and `training.eval_sample_steps` steps (at most the schedule's)."""
        training = self.group.training
        count = int(training.eval_samples)
        devices = self.mesh.devices.size
        loader = BatchLoader(eval_source, -(-count // devices) * devices, shuffle=False, drop_remainder=False,
                             num_epochs=1, prefetch=0)
        host = next(iter(loader))
        loader.close()
        inputs = to_inputs(host)
        schedule_steps = int(self.group.schedule.num_steps)
        sampler = SamplerConfig.recommended(num_steps=min(int(training.eval_sample_steps), schedule_steps),
                                            clip_x0=DEFAULT_LATENT_CLIP)
        sample = make_sampling_step(self.model.graphdef, self.vae_graphdef, stages.schedule(self.config),
                                    self.loss_config.prediction, step_config, sampler, self.mesh)
        vae_params = self.vae_params
        return SampleWriter(os.path.join(self.stage_dir, "samples"),
                            lambda params, key: sample(params, vae_params, key, inputs),
                            tuple(str(t) for t in host["text"]), float(self.config.data.fs),
                            min(count, len(eval_source)), seed=self.config.seed)
