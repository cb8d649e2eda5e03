"""A run killed between any two of its commits resumes and finishes exactly as the uninterrupted run.

The loop commits four things: a train metrics line, a validation metrics line, the best checkpoint and the latest
checkpoint (train state + loader position). Each case kills the run right after one commit (an exception no code
catches, raised once the commit is on disk), reruns it from its stage directory as `train.py` would, and compares
the final state, the best step and the metrics file with an uninterrupted run. The loop and Orbax are the real ones;
the model is a two-number state so that every kill point fits in seconds.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.data.loader import LoaderState
from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.training import loop
from sediff_jax.training.stage_runs import StageParts
from sediff_jax.parallel import make_mesh
from sediff_jax.training.metrics import MetricWriter, read_metrics

STEPS = 6


class Killed(BaseException):
    """What SIGKILL would do: nothing in the loop may handle it."""


class Loader:
    """Batches that depend on the loader position only, and a position that is saved and restored."""

    def __init__(self, state: LoaderState | None = None):
        self.k = 0 if state is None else state.batch

    def __next__(self):
        self.k += 1
        return {"x": np.float32(np.sin(self.k))}

    def state(self) -> LoaderState:
        return LoaderState(0, self.k, 0, 1, 0, 1, 1)

    def close(self):
        pass


def _train_step(state, batch):
    w = state.params["w"] * 0.9 + batch["x"]
    loss = jnp.sum(w ** 2)
    new = state._replace(step=state.step + 1, params={"w": w}, ema_params={"w": 0.5 * (state.ema_params["w"] + w)})
    return new, {"total": loss, "finite": jnp.isfinite(loss)}


def _evaluate(state):
    return {"mae_mv": float(jnp.abs(jnp.sum(state.ema_params["w"]) - 0.3))}  # not monotone: the best moves


def _config(eval_every, checkpoint_every):
    import ml_collections

    return ml_collections.ConfigDict({"training": {
        "num_steps": STEPS, "log_every": 1, "eval_every": eval_every, "checkpoint_every": checkpoint_every,
        "tensorboard": False, "progress_bar": False, "max_to_keep": 3}})


def _initial_state():
    from sediff_jax.training.state import TrainState

    w = jnp.array([0.2, -0.1], jnp.float32)
    return TrainState(step=jnp.zeros((), jnp.int32), params={"w": w}, opt_state={}, ema_params={"w": w},
                      rng=jax.random.PRNGKey(0))


def _run(stage_dir, config, checkpointer_cls=ckpt.Checkpointer):
    """One invocation, as train.py runs a stage: resume from the stage directory if it has a checkpoint."""
    checkpointer = checkpointer_cls(stage_dir, 3)
    state, loader_state, start, meta = loop._resume(checkpointer, stage_dir, _initial_state(), make_mesh(),
                                                    {"stage": "toy"})
    try:
        parts = StageParts(train_step=_train_step, loader=Loader(loader_state),
                           evaluators=(lambda state, step: _evaluate(state),), best_metric="mae_mv", test=None,
                           meta=meta)
        state, result = loop.run_loop(stage="toy", stage_dir=stage_dir, config=config, state=state, start_step=start,
                                      parts=parts, checkpointer=checkpointer)
    finally:
        checkpointer.close()
    return state, result


def _kill_points(eval_every, checkpoint_every):
    points = []
    for step in range(1, STEPS + 1):
        points.append(("train", step))
        if step % eval_every == 0 or step == STEPS:
            points += [("validation", step), ("best", step)]
        if step % checkpoint_every == 0 or step == STEPS:
            points.append(("latest", step))
    return points


def _killing(kind, at_step, monkeypatch):
    """A Checkpointer class (and a patched MetricWriter) that raise Killed right after commit (kind, at_step)."""

    class KillingWriter(MetricWriter):
        def write(self, step, metrics, prefix="train"):
            super().write(step, metrics, prefix)
            if (prefix, step) == (kind, at_step):
                raise Killed

    class KillingCheckpointer(ckpt.Checkpointer):
        def save_best(self, step, state, meta, value):
            saved = super().save_best(step, state, meta, value)
            if (kind, step) == ("best", at_step):
                self.wait()
                raise Killed
            return saved

        def save(self, step, state, loader, meta, force=False):
            saved = super().save(step, state, loader, meta, force)
            if (kind, step) == ("latest", at_step):
                self.wait()
                raise Killed
            return saved

    monkeypatch.setattr(loop, "MetricWriter", KillingWriter)
    return KillingCheckpointer


@pytest.mark.parametrize("eval_every,checkpoint_every", [(2, 3), (3, 2)])
def test_a_kill_after_any_commit_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, eval_every,
                                                                      checkpoint_every):
    config = _config(eval_every, checkpoint_every)
    reference_dir = str(tmp_path / "reference")
    reference, _ = _run(reference_dir, config)
    reference_best = ckpt.Checkpointer(reference_dir).best_step()
    reference_lines = read_metrics(f"{reference_dir}/metrics.jsonl", split=None)

    for kind, step in _kill_points(eval_every, checkpoint_every):
        stage_dir = str(tmp_path / f"killed_{kind}_{step}")
        with monkeypatch.context() as patch:
            killing = _killing(kind, step, patch)
            with pytest.raises(Killed):
                _run(stage_dir, config, killing)
        final, result = _run(stage_dir, config)  # the rerun after the kill
        where = f"killed after the {kind} commit of step {step}"
        assert result.step == STEPS and not result.stopped_early, where
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(reference)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
        checkpointer = ckpt.Checkpointer(stage_dir)
        assert checkpointer.best_step() == reference_best, where
        checkpointer.close()
        assert read_metrics(f"{stage_dir}/metrics.jsonl", split=None) == reference_lines, where
        json.dumps(reference_lines, allow_nan=False)  # strict JSON


def test_a_time_boxed_run_stops_with_a_checkpoint_and_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    """training.max_minutes: once that much time has passed, the loop saves after the current step and stops as if
    preempted; running again goes on to the uninterrupted run's parameters."""
    config = _config(2, 3)
    reference, _ = _run(str(tmp_path / "reference"), config)
    clock = iter(range(0, 10_000, 30))  # each reading of the loop's clock: 30 s later
    monkeypatch.setattr(loop, "_now", lambda: float(next(clock)))
    boxed = _config(2, 3)
    boxed.training.max_minutes = 1.0  # the loop's start, then a deadline a minute later: a few steps
    stage_dir = str(tmp_path / "boxed")
    _, first = _run(stage_dir, boxed)
    assert first.stopped_early and 0 < first.step < STEPS
    assert ckpt.Checkpointer(stage_dir, 3).latest_step() == first.step
    monkeypatch.undo()
    state, second = _run(stage_dir, config)
    assert second.step == STEPS and not second.stopped_early
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.asarray(reference.params["w"]))
