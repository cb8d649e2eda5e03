"""The training loop of both SE-Diff stages: data, model, jitted sharded steps, checkpoints, metrics, resume.

`train(config, workdir)` runs `config.stage` ('vae', 'diffusion' or 'both') under `workdir`:
```
workdir/config.json            the resolved config of the last run
workdir/text_cache.npz         MiniLM encodings of every report seen (stage 2)
workdir/<stage>/checkpoints/   last N orbax checkpoints (state + loader position + meta)
workdir/<stage>/best/          the checkpoint with the best validation metric
workdir/<stage>/metrics.jsonl  one line per logged step (train) and per evaluation (validation)
workdir/<stage>/tensorboard/   the same as TensorBoard events
```
A stage that finds a checkpoint in its directory resumes from it (state, optimiser, EMA, RNG, loader position)
and reproduces the uninterrupted run. SIGTERM (preemption) saves a checkpoint after the current step and returns;
so does orbax's multi-host preemption signal. Process 0 writes metrics and the progress bar.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.checkpoints.spec import dataclass_from_json
from sediff_jax.checkpoints.trained import load_vae, vae_config_from_meta
from sediff_jax.data.loader import BatchLoader, LoaderState
from sediff_jax.io import jsonio
from sediff_jax.io.atomic import atomic_path
from sediff_jax.io.outputs import check_workdir, claim_workdir, holds_lock, release_folder
from sediff_jax.models.vae import VAEConfig
from sediff_jax.parallel import host_local_to_global, make_mesh, replicated_sharding
from sediff_jax.progress import Progress
from sediff_jax.training import stages
from sediff_jax.training.config import resolve, resolve_training
from sediff_jax.training.metrics import MetricWriter
from sediff_jax.training.state import TrainState, abstract_like, init_state
from sediff_jax.training.warm_start import warm_started
from sediff_jax.training.steps import DIFFUSION_BATCH_KEYS, LATENT_BATCH_KEYS, VAE_BATCH_KEYS, latent_scale_from
from sediff_jax.errors import SediffError

MAX_UNCHECKED_STEPS = 1000  # metrics held on the device between checks, at most


class TrainingDiverged(SediffError, FloatingPointError):
    """A loss term or the gradient became NaN/Inf; the message names the step and the term."""


def numeric_batch(batch: dict[str, Any], keys: tuple[str, ...], mesh) -> dict[str, jax.Array]:
    """The step's inputs of a host batch as global batch-sharded arrays."""
    return host_local_to_global({k: batch[k] for k in keys}, mesh)


# -- the loop --------------------------------------------------------------------------------------------------

class _StopFlag:
    """Set by SIGTERM while training; the loop saves and returns after the current step. Single-process only:
    with several processes, preemption goes through JAX's distributed preemption notifier, which orbax's
    `reached_preemption` reads in sync on every host (a local flag would let the hosts diverge)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if jax.process_count() > 1:
            return self

        def handler(signum, frame):
            logging.warning("signal %d: saving a checkpoint after this step", signum)
            self.requested = True

        for sig in (signal.SIGTERM,):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _bad_terms(metrics: dict[str, Any]) -> str:
    """'name = value' of every non-finite metric, the loss terms before the total."""
    bad = [(name, float(np.asarray(value))) for name, value in metrics.items()
           if name != "finite" and not np.isfinite(np.asarray(value)).all()]
    bad.sort(key=lambda item: item[0] == "total")
    return ", ".join(f"{name} = {value}" for name, value in bad) or "the gradient norm"


@dataclasses.dataclass
class StageResult:
    stage: str
    step: int
    stopped_early: bool
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    seconds: float
    test_metrics: dict[str, float] = dataclasses.field(default_factory=dict)


def run_loop(
    *, stage: str, stage_dir: str, config: ml_collections.ConfigDict, state: TrainState, start_step: int,
    loader: BatchLoader, train_step: Callable[[TrainState, dict], tuple[TrainState, dict]],
    to_inputs: Callable[[dict], dict], evaluate: Callable[[TrainState], dict[str, float]], best_metric: str,
    meta: dict, checkpointer: ckpt.Checkpointer,
) -> tuple[TrainState, StageResult]:
    """Steps `start_step` .. training.num_steps with logging, evaluation, checkpoints and the NaN guard."""
    training = resolve_training(config.training)
    num_steps = int(training.num_steps)
    writer = MetricWriter(stage_dir, tensorboard=training.tensorboard, resume_step=start_step)
    progress = None
    if jax.process_index() == 0 and training.progress_bar:
        progress = Progress(num_steps, stage, unit="step", initial=start_step)
    # Metrics stay on the device until a logging, evaluation or checkpoint step, then leave in one transfer
    # (no host round trip per step); every step's `finite` flag is checked there, before anything is saved.
    unchecked: list[tuple[int, dict]] = []
    last, eval_metrics, stopped, t0 = {}, {}, False, time.time()

    def check() -> dict[str, float]:
        """The latest step's metrics on the host; raises for the first non-finite step since the last check."""
        if not unchecked:
            return last
        host = jax.device_get([metrics for _, metrics in unchecked])
        for (bad_step, _), values in zip(unchecked, host):
            if not bool(values["finite"]):
                raise TrainingDiverged(
                    f"{stage} step {bad_step}: {_bad_terms(values)} not finite; the update was skipped and "
                    f"training stopped (last checkpoint: step {checkpointer.latest_step()}). Lower the learning "
                    "rate or check the batch.")
        unchecked.clear()
        return {k: float(v) for k, v in host[-1].items() if k != "finite"}

    step = start_step
    try:
        with _StopFlag() as stop:
            while step < num_steps:
                batch = next(loader)
                state, metrics = train_step(state, to_inputs(batch))
                step += 1
                unchecked.append((step, metrics))
                final = step == num_steps
                halt = training.halt_at_step
                preempted = stop.requested or checkpointer.reached_preemption(step) or (halt and step == halt)
                evaluating = step % training.eval_every == 0 or final
                saving = step % training.checkpoint_every == 0 or final or preempted
                if step % training.log_every == 0 or final:
                    last = check()
                    writer.write(step, dict(last, learning_rate_step=step))
                    if progress is not None:
                        progress.set_postfix(loss=f"{last['total']:.4g}")
                elif evaluating or saving or len(unchecked) >= MAX_UNCHECKED_STEPS:
                    check()
                if evaluating:
                    eval_metrics = evaluate(state)
                    writer.write(step, eval_metrics, prefix="validation")
                    checkpointer.save_best(step, state, meta, eval_metrics[best_metric])
                if saving:
                    writer.flush()
                    checkpointer.save(step, state, json.loads(loader.state().to_json()), meta, force=True)
                if progress is not None:
                    progress.update(1)
                if preempted and not final:
                    logging.warning("%s: stopped at step %d on request; resume by running again", stage, step)
                    stopped = True
                    break
            last = check()
    finally:
        checkpointer.wait()
        writer.close()
        if progress is not None:
            progress.close()
        loader.close()
    return state, StageResult(stage, step, stopped, last, eval_metrics, time.time() - t0)


def _resume(checkpointer: ckpt.Checkpointer, stage_dir: str, state: TrainState, mesh, meta: dict
            ) -> tuple[TrainState, LoaderState | None, int, dict]:
    step = checkpointer.latest_step()
    if step is None:
        return state, None, 0, meta
    abstract = abstract_like(state, replicated_sharding(mesh))
    state, loader_json, saved_meta, step = ckpt.restore(stage_dir, abstract, step)
    for key in ("model", "stage"):
        if key in meta and saved_meta.get(key) != meta[key]:
            raise ckpt.CheckpointError(
                f"{stage_dir}: the checkpoint at step {step} has {key} {saved_meta.get(key)!r}, this run "
                f"{meta[key]!r}; use a new workdir or the same config")
    stages.check_recipe(saved_meta, meta.get("recipe"), stage_dir, step)
    logging.info("resumed %s at step %d", stage_dir, step)
    loader_state = LoaderState(**loader_json) if loader_json else None
    return state, loader_state, step, {**meta, **{k: v for k, v in saved_meta.items() if k not in meta}}


def _mesh_checked(config) -> Any:
    mesh = make_mesh()
    if config.training.batch_size % mesh.devices.size:
        raise ValueError(f"training.batch_size {config.training.batch_size} must be a multiple of the "
                         f"{mesh.devices.size} devices")
    return mesh


def train_vae(config: ml_collections.ConfigDict, workdir: str, on_ready: Callable[[], None] | None = None
              ) -> StageResult:
    """Stage 1 under `workdir/vae`, resumed from its checkpoint if any; `on_ready` runs once the checkpoint (if any)
    has been checked against this config, before the first step."""
    stage_dir = os.path.join(workdir, "vae")
    mesh = _mesh_checked(config.vae)
    training = config.vae.training
    model = stages.vae_model(config, config.seed)
    state = jax.device_put(init_state(model.params, model.tx, config.seed), replicated_sharding(mesh))
    checkpointer = ckpt.Checkpointer(stage_dir, training.max_to_keep)
    state, loader_state, start, meta = _resume(checkpointer, stage_dir, state, mesh, stages.vae_meta(config))
    if on_ready is not None:
        on_ready()
    train_step, eval_step = stages.vae_steps(config, model, mesh)
    loader = stages.train_loader(config, config.vae, stages.split_source(config, config.data.train_split),
                                 loader_state)
    eval_source = stages.split_source(config, config.data.eval_split)

    def evaluate(state: TrainState, source=eval_source, max_batches=training.max_eval_batches) -> dict[str, float]:
        sums: dict[str, float] = {}
        eval_loader = stages.eval_loader(source, training.batch_size)
        for k, batch in enumerate(eval_loader):
            if k >= max_batches:
                break
            s, _ = eval_step(state.ema_params, numeric_batch(batch, VAE_BATCH_KEYS, mesh))
            for name, v in jax.device_get(s).items():
                sums[name] = sums.get(name, 0.0) + float(v)
        eval_loader.close()
        n = max(sums.get("samples", 0.0), 1.0)
        return {"mae_mv": sums["abs_error"] / n, "rmse_mv": math.sqrt(sums["squared_error"] / n)}

    state, result = run_loop(stage="vae", stage_dir=stage_dir, config=config.vae, state=state, start_step=start,
                             loader=loader, train_step=train_step,
                             to_inputs=lambda b: numeric_batch(b, VAE_BATCH_KEYS, mesh), evaluate=evaluate,
                             best_metric="mae_mv", meta=meta, checkpointer=checkpointer)
    checkpointer.close()
    return _test(config, result, lambda split: evaluate(state, stages.split_source(config, split), 1 << 30),
                 stage_dir)


def _frozen_vae(config: ml_collections.ConfigDict, workdir: str, mesh) -> tuple[str, nnx.GraphDef, Any, dict]:
    """(directory, graphdef, replicated EMA params, meta with its full VAEConfig) of stage 2's frozen VAE."""
    vae_dir = config.diffusion.vae_checkpoint or os.path.join(workdir, "vae")
    try:
        graphdef, params, meta = load_vae(vae_dir, which="best", dtype=stages.compute_dtype(config))
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(f"stage 2 needs a trained VAE: {e}. Train stage 1 first (--config.stage=vae or "
                                   "both) or point --config.diffusion.vae_checkpoint at a VAE stage directory") from e
    if abs(float(meta["fs"]) - float(config.data.fs)) > 1e-6:
        raise ckpt.CheckpointError(f"{vae_dir}: the VAE was trained at {meta['fs']} Hz, data.fs is {config.data.fs}")
    meta = {**meta, "model": dataclasses.asdict(vae_config_from_meta(meta))}
    return vae_dir, graphdef, jax.device_put(params, replicated_sharding(mesh)), meta


def train_diffusion(config: ml_collections.ConfigDict, workdir: str, on_ready: Callable[[], None] | None = None
                    ) -> StageResult:
    """Stage 2 under `workdir/diffusion` (see train_vae)."""
    stage_dir = os.path.join(workdir, "diffusion")
    dcfg = config.diffusion
    mesh = _mesh_checked(dcfg)
    training = dcfg.training
    vae_dir, vae_graphdef, vae_params, vae_meta = _frozen_vae(config, workdir, mesh)
    vae_model = dataclass_from_json(VAEConfig, vae_meta["model"])
    conditions = stages.diffusion_conditions(config, workdir)
    model_config = stages.denoiser_config(config, vae_model.latent_channels, conditions.encoder.dim)
    model = stages.diffusion_model(config, vae_model.latent_channels, conditions.encoder.dim, config.seed + 1)
    state = jax.device_put(init_state(model.params, model.tx, config.seed + 1), replicated_sharding(mesh))
    loss_config = stages.diffusion_loss_config(config, vae_model)
    meta = stages.diffusion_meta(config, model_config, vae_dir, vae_meta, loss_config, conditions)
    checkpointer = ckpt.Checkpointer(stage_dir, training.max_to_keep)
    state, loader_state, start, meta = _resume(checkpointer, stage_dir, state, mesh, meta)
    if start == 0 and dcfg.init_from:  # fine-tuning: a trained model's weights, a fresh optimiser
        state, meta = warm_started(config, model, model_config, vae_params, meta, mesh)
    if on_ready is not None:
        on_ready()
    latent_dir = stages.latent_cache(config, vae_dir, vae_params)
    source = functools.partial(stages.stage2_source, config, latent_dir=latent_dir)
    train_source = source(config.data.train_split)
    batch_keys = DIFFUSION_BATCH_KEYS if latent_dir is None else LATENT_BATCH_KEYS
    if latent_dir is not None:
        logging.info("stage 2 trains from the latent cache %s", latent_dir)

    if "latent_scale" not in meta:  # a fresh run: unit-variance latents, from the first training examples
        vae = nnx.merge(vae_graphdef, vae_params)
        encode = jax.jit(lambda ecg: vae.encode(ecg)[0]) if latent_dir is None else (lambda mean: mean)
        probe = BatchLoader(train_source, training.batch_size, seed=config.seed, shuffle=False, num_epochs=1,
                            prefetch=0, process_index=0, process_count=1)
        field = "ecg" if latent_dir is None else "latent_mean"
        batches = [b[field] for _, b in zip(range(dcfg.latent_scale_batches), probe)]
        probe.close()
        meta["latent_scale"] = latent_scale_from(encode, batches)
        logging.info("latent scale %.4f", meta["latent_scale"])
    train_step, eval_step = stages.diffusion_steps(config, model, vae_graphdef, loss_config, meta["latent_scale"],
                                                   conditions.wave_table, mesh)
    loader = stages.train_loader(config, dcfg, train_source, loader_state)
    eval_source = source(config.data.eval_split)

    def to_inputs(batch):
        return numeric_batch(conditions.builder(batch), batch_keys, mesh)

    def evaluate(state: TrainState, source=eval_source, max_batches=training.max_eval_batches) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0.0
        eval_loader = stages.eval_loader(source, training.batch_size)
        for k, batch in enumerate(eval_loader):  # fixed noise per batch: comparable across evaluations
            if k >= max_batches:
                break
            terms, n = eval_step(state.ema_params, vae_params, jax.random.PRNGKey(1000 + k), to_inputs(batch))
            n = float(n)
            for name, v in jax.device_get(terms).items():
                sums[name] = sums.get(name, 0.0) + float(v) * n
            count += n
        eval_loader.close()
        conditions.save_caches()
        return {name: v / max(count, 1.0) for name, v in sums.items()}

    state, result = run_loop(stage="diffusion", stage_dir=stage_dir, config=dcfg, state=state, start_step=start,
                             loader=loader, train_step=lambda s, b: train_step(s, vae_params, b),
                             to_inputs=to_inputs, evaluate=evaluate, best_metric="ddpm", meta=meta,
                             checkpointer=checkpointer)
    result = _test(config, result, lambda split: evaluate(state, source(split), 1 << 30), stage_dir)
    conditions.save_caches()
    checkpointer.close()
    return result


def _test(config, result: StageResult, evaluate: Callable, stage_dir: str) -> StageResult:
    """After a completed stage: evaluate the final EMA weights on the whole test split (`data.test_split`,
    '' to skip; `evaluate(split)`) and write `<stage>/test_metrics.json`."""
    split = config.data.test_split
    if result.stopped_early or not split:
        return result
    result.test_metrics = evaluate(split)
    if jax.process_index() == 0:
        jsonio.write_json(os.path.join(stage_dir, "test_metrics.json"),
                          {"split": split, "step": result.step, **result.test_metrics})
    return result


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    with atomic_path(os.path.join(workdir, "config.json")) as tmp:  # (creates the workdir if needed)
        tmp.write_text(config.to_json_best_effort(indent=1, sort_keys=True), encoding="utf-8")


def train(config: ml_collections.ConfigDict, workdir: str) -> list[StageResult]:
    """Run `config.stage` under `workdir`; returns one StageResult per stage run."""
    config = resolve(config)  # (checks every value: an unknown stage is a ConfigError)
    # an exported model or a foreign folder is refused before anything is written; one writer per workdir, locked
    # for this call (a caller that held the lock already, e.g. the CLI, keeps it)
    held_before = holds_lock(workdir)
    check_workdir(workdir, lock=jax.process_index() == 0)
    try:
        return _train_locked(config, workdir)
    finally:
        if not held_before:
            release_folder(workdir)


def _train_locked(config: ml_collections.ConfigDict, workdir: str) -> list[StageResult]:
    stages.check_resumable(config, workdir, ("vae", "diffusion") if config.stage == "both" else (config.stage,))
    if jax.process_index() == 0:
        claim_workdir(workdir)
    if not config.data.prepared_dir:
        config.data.prepared_dir = os.path.join(workdir, "prepared")
    # config.json describes the run: written once the first stage accepts the workdir (a refused run leaves it)
    ready = lambda: write_config(config, workdir)  # noqa: E731
    results = []
    if config.stage in ("vae", "both"):
        results.append(train_vae(config, workdir, on_ready=ready))
        ready = None
        if results[-1].stopped_early:
            return results
    if config.stage in ("diffusion", "both"):
        results.append(train_diffusion(config, workdir, on_ready=ready))
    return results

