"""Orbax checkpoints of a training stage: the last N steps plus the best one, with the loader position.

`<dir>/checkpoints/<step>/` holds `state` (StandardSave: model, optimiser, step, RNG), `ema` (the EMA weights,
their own item, so reading a trained model needs neither the optimiser nor its state), `loader` (the
`LoaderState` JSON) and `meta` (JSON: stage, config, latent scale, ...). Checkpoints written before the `ema`
item existed (the EMA inside `state`) are read as well. `<dir>/best/<step>/` keeps the
single checkpoint with the lowest validation metric. Orbax writes to a temporary directory and renames it when
complete, so a kill mid-save leaves the previous checkpoint intact. All processes call save/restore.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from sediff_jax.checkpoints.errors import CheckpointError

ITEMS = ("state", "ema", "loader", "meta")
TrainState = Any  # sediff_jax.training.state.TrainState (a NamedTuple with an `ema_params` field)


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
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


class Checkpointer:
    """Last-N and best checkpoints of one stage under `directory`."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.latest = _manager(os.path.join(self.directory, "checkpoints"), max_to_keep, best=False)
        self.best = _manager(os.path.join(self.directory, "best"), 1, best=True)

    @staticmethod
    def _args(state, loader: dict | None, meta: dict) -> ocp.args.Composite:
        items = {"loader": ocp.args.JsonSave(loader or {}), "meta": ocp.args.JsonSave(meta)}
        if hasattr(state, "ema_params"):  # a TrainState: the EMA weights go to their own item
            items.update(state=ocp.args.StandardSave(state._replace(ema_params=None)),
                         ema=ocp.args.StandardSave(state.ema_params))
        else:  # any other state pytree is saved whole
            items["state"] = ocp.args.StandardSave(state)
        return ocp.args.Composite(**items)

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


def _root(directory: str, which: str) -> str:
    """The `checkpoints` (latest) or `best` folder of a stage directory (or that folder itself)."""
    directory = os.path.abspath(directory)
    if os.path.basename(directory) in ("checkpoints", "best"):
        return directory
    return os.path.join(directory, "best" if which == "best" else "checkpoints")


def _open(directory: str, which: str, step: int | None) -> tuple[ocp.CheckpointManager, str, int]:
    """(manager, root, step) of the asked-for checkpoint; CheckpointError names what is missing."""
    root = _root(directory, which)
    if not os.path.isdir(root):
        raise CheckpointError(f"{root}: no checkpoint directory")
    manager = ocp.CheckpointManager(root, item_names=ITEMS)
    if step is None:
        step = manager.best_step() if which == "best" else manager.latest_step()
        if step is None:
            step = manager.latest_step()
    if step is None:
        manager.close()
        raise CheckpointError(f"{root}: no checkpoint found")
    if step not in manager.all_steps():
        steps = sorted(manager.all_steps())
        manager.close()
        raise CheckpointError(f"{root}: no checkpoint at step {step} (has {steps})")
    return manager, root, int(step)


def kept_steps(directory: str) -> list[int]:
    """The steps of a stage directory's kept (latest-series) checkpoints, ascending; CheckpointError when it has
    none."""
    root = _root(directory, "latest")
    if not os.path.isdir(root):
        raise CheckpointError(f"{root}: no checkpoint directory")
    manager = ocp.CheckpointManager(root, item_names=ITEMS)
    try:
        steps = sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()
    if not steps:
        raise CheckpointError(f"{root}: no checkpoint found")
    return steps


def _has_ema_item(root: str, step: int) -> bool:
    return os.path.isdir(os.path.join(root, str(step), "ema"))


def restore(directory: str, abstract_state: Any, step: int | None = None, which: str = "latest"
            ) -> tuple[TrainState, dict, dict, int]:
    """(state, loader JSON, meta JSON, step) from a stage directory (or one of its `checkpoints` / `best`
    subdirectories); `which` = 'latest' or 'best'; raises CheckpointError naming the directory."""
    manager, root, step = _open(directory, which, step)
    try:
        separate = _has_ema_item(root, step) and hasattr(abstract_state, "ema_params")
        items = {"state": ocp.args.StandardRestore(
            abstract_state._replace(ema_params=None) if separate else abstract_state),
            "loader": ocp.args.JsonRestore(), "meta": ocp.args.JsonRestore()}
        if separate:
            items["ema"] = ocp.args.StandardRestore(abstract_state.ema_params)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{root}/{step}: does not match this model ({str(e)[:300]})") from e
        state = restored.state._replace(ema_params=restored.ema) if separate else restored.state
        return state, dict(restored.loader or {}), dict(restored.meta or {}), step
    finally:
        manager.close()


def read_ema_params(directory: str, abstract_params: Any, which: str = "best", step: int | None = None
                    ) -> tuple[Any, dict, int]:
    """(EMA params, meta JSON, step) of a stage directory's `which` checkpoint (or its checkpoint at `step`),
    restored onto `abstract_params` (ShapeDtypeStructs of the model's params, with shardings): no optimiser is
    built or read."""
    manager, root, step = _open(directory, which, step)
    try:
        try:
            if _has_ema_item(root, step):
                restored = manager.restore(step, args=ocp.args.Composite(
                    ema=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
                ema = restored.ema
            else:  # written before the EMA had its own item: read the state as saved, keep its EMA
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
                saved = restored.state
                saved = saved["ema_params"] if isinstance(saved, dict) else saved[3]
                ema = jax.tree.map(lambda a, b: jax.device_put(jax.numpy.asarray(b, a.dtype), a.sharding),
                                   abstract_params, saved)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise CheckpointError(f"{root}/{step}: does not match this model ({str(e)[:300]})") from e
        return ema, dict(restored.meta or {}), step
    finally:
        manager.close()


def read_meta(directory: str, which: str = "latest") -> tuple[dict, int]:
    """The `meta` JSON of a stage's latest (or best) checkpoint, without restoring the arrays."""
    root = _root(directory, which)
    if not os.path.isdir(root):
        raise CheckpointError(f"{root}: no checkpoint directory")
    manager = ocp.CheckpointManager(root, item_names=ITEMS)
    try:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{root}: no checkpoint found")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        return dict(meta or {}), int(step)
    finally:
        manager.close()
