"""Orbax checkpoints of a training stage: the last N steps plus the best one, with the loader position.

`<dir>/checkpoints/<step>/` holds the train state (StandardSave: model, optimiser, EMA, step, RNG), `loader`
(the `LoaderState` JSON) and `meta` (JSON: stage, config, latent scale, ...). `<dir>/best/<step>/` keeps the
single checkpoint with the lowest validation metric. Orbax writes to a temporary directory and renames it when
complete, so a kill mid-save leaves the previous checkpoint intact. All processes call save/restore.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from sediff_jax.training.state import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, or does not match the model being trained."""


_ONE_REPLICA_REGISTERED = False


def _save_replicated_arrays_from_one_replica() -> None:
    """On CPU, save each replicated array from one replica, as Orbax already does on GPU.

    Orbax's default elsewhere (replica-parallel saving) splits every replicated array into per-replica slices,
    each a small jitted slicing program compiled per shape: with the 8 virtual CPU devices of the tests this
    was ~60 % of a checkpoint save (hundreds of sub-second compiles per training run), for no gain on one host.
    TPU keeps Orbax's default. The files are read back the same way either way."""
    global _ONE_REPLICA_REGISTERED
    if jax.default_backend() == "cpu" and not _ONE_REPLICA_REGISTERED:
        _ONE_REPLICA_REGISTERED = True
        ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                                override=True)


def _manager(directory: str, max_to_keep: int, best: bool) -> ocp.CheckpointManager:
    _save_replicated_arrays_from_one_replica()
    # Each manager syncs the hosts under its own barrier names: the latest and the best manager save the same
    # step (an evaluation step that is also a checkpoint step) concurrently, and with one shared name the second
    # save's barrier clashed with the first's ("Barrier _async_write_complete.<step> is already ongoing").
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        best_fn=(lambda metrics: metrics["value"]) if best else None, best_mode="min",
        keep_checkpoints_without_metrics=not best,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="best" if best else "latest"))
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "loader", "meta"))


class Checkpointer:
    """Last-N and best checkpoints of one stage under `directory`."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.latest = _manager(os.path.join(self.directory, "checkpoints"), max_to_keep, best=False)
        self.best = _manager(os.path.join(self.directory, "best"), 1, best=True)

    @staticmethod
    def _args(state, loader: dict | None, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave(loader or {}),
                                  meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state: TrainState, loader: dict | None, meta: dict, force: bool = False) -> bool:
        """Save at `step` (asynchronously); returns whether a checkpoint was written."""
        return self.latest.save(step, args=self._args(state, loader, meta), force=force)

    def save_best(self, step: int, state: TrainState, meta: dict, value: float) -> bool:
        """Keep this step if `value` (lower is better) beats the best so far.  A step already kept is left as it
        is: a run killed after this commit but before the latest checkpoint replays the same steps on resume and
        reaches the same state here."""
        if step in self.best.all_steps():
            return False
        return self.best.save(step, args=self._args(state, None, meta), metrics={"value": float(value)}, force=True)

    def reached_preemption(self, step: int) -> bool:
        return self.latest.reached_preemption(step)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        return self.best.best_step()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def restore(directory: str, abstract_state: Any, step: int | None = None, which: str = "latest"
            ) -> tuple[TrainState, dict, dict, int]:
    """(state, loader JSON, meta JSON, step) from a stage directory (or one of its `checkpoints` / `best`
    subdirectories); `which` = 'latest' or 'best'; raises CheckpointError naming the directory."""
    directory = os.path.abspath(directory)
    sub = "best" if which == "best" else "checkpoints"
    root = directory if os.path.basename(directory) in ("checkpoints", "best") else os.path.join(directory, sub)
    if not os.path.isdir(root):
        raise CheckpointError(f"{root}: no checkpoint directory")
    manager = ocp.CheckpointManager(root, item_names=("state", "loader", "meta"))
    try:
        if step is None:
            step = manager.best_step() if which == "best" else manager.latest_step()
            if step is None:
                step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{root}: no checkpoint found")
        if step not in manager.all_steps():
            raise CheckpointError(f"{root}: no checkpoint at step {step} (has {sorted(manager.all_steps())})")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), loader=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{root}/{step}: does not match this model ({str(e)[:300]})") from e
        return restored.state, dict(restored.loader or {}), dict(restored.meta or {}), int(step)
    finally:
        manager.close()


def read_meta(directory: str, which: str = "latest") -> tuple[dict, int]:
    """The `meta` JSON of a stage's latest (or best) checkpoint, without restoring the arrays."""
    directory = os.path.abspath(directory)
    root = directory if os.path.basename(directory) in ("checkpoints", "best") else os.path.join(
        directory, "best" if which == "best" else "checkpoints")
    if not os.path.isdir(root):
        raise CheckpointError(f"{root}: no checkpoint directory")
    manager = ocp.CheckpointManager(root, item_names=("state", "loader", "meta"))
    try:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{root}: no checkpoint found")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        return dict(meta or {}), int(step)
    finally:
        manager.close()
