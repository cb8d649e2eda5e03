"""The training loop of both SE-Diff stages: data, model, jitted sharded steps, checkpoints, metrics, resume.

`train(config, workdir)` runs `config.stage` ('vae', 'diffusion' or 'both') under `workdir`:
```
workdir/config.json            the resolved config of the last run
workdir/text_cache.npz         MiniLM encodings of every report seen (stage 2)
workdir/<stage>/checkpoints/   last N orbax checkpoints (state + loader position + meta)
workdir/<stage>/best/          the checkpoint with the best validation metric
workdir/<stage>/metrics.jsonl  one line per logged step (train: the terms, grad norm and THROUGHPUT_KEYS) and per
                               evaluation (validation)
workdir/<stage>/tensorboard/   the same as TensorBoard events (and the generated samples as images)
workdir/diffusion/samples/     ECGs generated at evaluation steps (`diffusion.training.eval_samples`), NPZ + PNG
```
One driver (`run_stage`) runs either stage (`training.stage_runs`: VAEStage, DiffusionStage) through the same
steps: initial state, resume, the stage's parts (steps, loaders, evaluators), the loop, the test split.

A stage that finds a checkpoint in its directory resumes from it (state, optimiser, EMA, RNG, loader position)
and reproduces the uninterrupted run. SIGTERM (preemption) saves a checkpoint after the current step and returns;
so does orbax's multi-host preemption signal. Process 0 writes metrics and the progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.data.loader import LoaderState
from sediff_jax.errors import SediffError
from sediff_jax.io import jsonio
from sediff_jax.io.atomic import atomic_path
from sediff_jax.io.outputs import check_workdir, claim_workdir, holds_lock, release_folder
from sediff_jax.parallel import make_mesh, replicated_sharding
from sediff_jax.progress import Progress
from sediff_jax.training import stages
from sediff_jax.training.config import resolve, resolve_training
from sediff_jax.training.evaluators import split_values
from sediff_jax.training.metrics import THROUGHPUT_KEYS, MetricWriter
from sediff_jax.training.stage_runs import DiffusionStage, StageParts, VAEStage
from sediff_jax.training.state import TrainState, abstract_like

_now = time.monotonic  # s; the loop's clock (step timing, training.max_minutes)
MAX_UNCHECKED_STEPS = 1000  # metrics held on the device between checks, at most


class TrainingDiverged(SediffError, FloatingPointError):
    """A loss term or the gradient became NaN/Inf; the message names the step and the term."""


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


class _StepClock:
    """Training throughput since the last logged step, evaluations and checkpoint saves left out."""

    def __init__(self, step: int):
        self.restart(step)

    def restart(self, step: int) -> None:
        self.step, self.start, self.loading = step, _now(), 0.0

    def rates(self, step: int, batch_size: int) -> dict[str, float]:
        """steps/s, examples/s and the share of the time spent waiting for batches, since the last call; the
        device has finished these steps (the caller has just read their metrics back)."""
        steps, seconds = step - self.step, _now() - self.start
        if steps <= 0 or seconds <= 0:
            return {}
        rates = dict(zip(THROUGHPUT_KEYS, (steps / seconds, steps * batch_size / seconds,
                                           min(1.0, self.loading / seconds))))
        self.restart(step)
        return rates


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
    parts: StageParts, checkpointer: ckpt.Checkpointer,
) -> tuple[TrainState, StageResult]:
    """Steps `start_step` .. training.num_steps of `parts.train_step` on `parts.loader`'s batches, with logging,
    the evaluators at evaluation steps (the best checkpoint by `parts.best_metric`), checkpoints (with
    `parts.meta`) and the NaN guard."""
    loader, meta = parts.loader, parts.meta
    training = resolve_training(config.training)
    num_steps = int(training.num_steps)
    writer = MetricWriter(stage_dir, tensorboard=training.tensorboard, resume_step=start_step)
    progress = None
    if jax.process_index() == 0 and training.progress_bar:
        progress = Progress(num_steps, stage, unit="step", initial=start_step)
    # Metrics stay on the device until a logging, evaluation or checkpoint step, then leave in one transfer
    # (no host round trip per step); every step's `finite` flag is checked there, before anything is saved.
    unchecked: list[tuple[int, dict]] = []
    last, eval_metrics, stopped, t0 = {}, {}, False, _now()
    if training.max_minutes and jax.process_count() > 1:  # the hosts' clocks would stop them at different steps
        raise ValueError("training.max_minutes works in a single process; use halt_at_step with several")
    deadline = t0 + 60.0 * training.max_minutes if training.max_minutes else 0.0

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
    batch_size = int(training.batch_size)
    window = _StepClock(start_step)
    try:
        with _StopFlag() as stop:
            while step < num_steps:
                t_load = _now()
                batch = next(loader)
                window.loading += _now() - t_load
                state, metrics = parts.train_step(state, batch)
                step += 1
                unchecked.append((step, metrics))
                final = step == num_steps
                halt = training.halt_at_step
                out_of_time = bool(deadline) and _now() >= deadline
                preempted = (stop.requested or checkpointer.reached_preemption(step) or (halt and step == halt)
                             or out_of_time)
                evaluating = step % training.eval_every == 0 or final
                saving = step % training.checkpoint_every == 0 or final or preempted
                if step % training.log_every == 0 or final:
                    last = check()
                    writer.write(step, dict(last, learning_rate_step=step, **window.rates(step, batch_size)))
                    if progress is not None:
                        progress.set_postfix(loss=f"{last['total']:.4g}")
                elif evaluating or saving or len(unchecked) >= MAX_UNCHECKED_STEPS:
                    check()
                if evaluating:
                    eval_metrics = evaluate(parts.evaluators, state, step, writer)
                    checkpointer.save_best(step, state, meta, eval_metrics[parts.best_metric])
                if saving:
                    writer.flush()
                    checkpointer.save(step, state, json.loads(loader.state().to_json()), meta, force=True)
                if evaluating or saving:
                    window.restart(step)  # step rates count training steps only
                if progress is not None:
                    progress.update(1)
                if preempted and not final:
                    why = f"after {training.max_minutes:g} min (training.max_minutes)" if out_of_time else "on request"
                    logging.warning("%s: stopped at step %d %s; resume by running again", stage, step, why)
                    stopped = True
                    break
            last = check()
    finally:
        checkpointer.wait()
        writer.close()
        if progress is not None:
            progress.close()
        loader.close()
    return state, StageResult(stage, step, stopped, last, eval_metrics, _now() - t0)


def _resume(checkpointer: ckpt.Checkpointer, stage_dir: str, state: TrainState, mesh, meta: dict
            ) -> tuple[TrainState, LoaderState | None, int, dict]:
    step = checkpointer.latest_step()
    if step is None:
        return state, None, 0, meta
    abstract = abstract_like(state, replicated_sharding(mesh))
    state, loader_json, saved_meta, step = ckpt.restore(stage_dir, abstract, step)
    if isinstance(saved_meta.get("model"), dict):  # a field added to the network's config since: its default then
        saved_meta = dict(saved_meta, model={**stages.model_defaults(meta.get("stage")), **saved_meta["model"]})
    for key in ("model", "stage"):
        if key in meta and saved_meta.get(key) != meta[key]:
            raise ckpt.CheckpointError(
                f"{stage_dir}: the checkpoint at step {step} has {key} {saved_meta.get(key)!r}, this run "
                f"{meta[key]!r}; use a new workdir or the same config")
    stages.check_recipe(saved_meta, meta.get("recipe"), stage_dir, step)
    logging.info("resumed %s at step %d", stage_dir, step)
    loader_state = LoaderState(**loader_json) if loader_json else None
    return state, loader_state, step, {**meta, **{k: v for k, v in saved_meta.items() if k not in meta}}


def evaluate(evaluators, state: TrainState, step: int, writer: MetricWriter | None = None) -> dict[str, float]:
    """Every evaluator's values at `step`: metrics returned (and written as `validation`), images written."""
    metrics, images = {}, {}
    for evaluator in evaluators:
        values, pictures = split_values(evaluator(state, step))
        metrics.update(values)
        images.update(pictures)
    if writer is not None:
        writer.write(step, metrics, prefix="validation")
        writer.write_images(step, images)
    return metrics


def _mesh_checked(config) -> Any:
    mesh = make_mesh()
    if config.training.batch_size % mesh.devices.size:
        raise ValueError(f"training.batch_size {config.training.batch_size} must be a multiple of the "
                         f"{mesh.devices.size} devices")
    return mesh


STAGES = {"vae": VAEStage, "diffusion": DiffusionStage}


def run_stage(config: ml_collections.ConfigDict, workdir: str, name: str,
              on_ready: Callable[[], None] | None = None) -> StageResult:
    """Stage `name` ('vae' or 'diffusion') under `workdir/<name>`, resumed from its checkpoint if any; `on_ready`
    runs once the checkpoint (if any) has been checked against this config, before the first step."""
    stage_dir = os.path.join(workdir, name)
    group = config[name]
    mesh = _mesh_checked(group)
    stage = STAGES[name](config, workdir, mesh)
    state, meta = stage.initial()
    checkpointer = ckpt.Checkpointer(stage_dir, group.training.max_to_keep)
    state, loader_state, start, meta = _resume(checkpointer, stage_dir, state, mesh, meta)
    state, meta = stage.resumed(state, meta, start)
    if on_ready is not None:
        on_ready()
    parts = stage.parts(meta, loader_state)
    try:
        state, result = run_loop(stage=name, stage_dir=stage_dir, config=group, state=state, start_step=start,
                                 parts=parts, checkpointer=checkpointer)
        return _test(config, result, lambda split: parts.test(state, split), stage_dir)
    finally:
        parts.close()
        checkpointer.close()


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
        results.append(run_stage(config, workdir, "vae", on_ready=ready))
        ready = None
        if results[-1].stopped_early:
            return results
    if config.stage in ("diffusion", "both"):
        results.append(run_stage(config, workdir, "diffusion", on_ready=ready))
    return results

