"""Stage checkpoints: the EMA weights are an item of their own (read without the optimiser), the full state
round-trips bit for bit, and checkpoints from before the split (EMA inside the state) are still read."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sediff_jax.checkpoints import CheckpointError, Checkpointer, read_ema_params, restore
from sediff_jax.training.state import OptimizerConfig, abstract_like, init_state, make_optimizer


def _state():
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    tx = make_optimizer(OptimizerConfig(total_steps=10))
    state = init_state(params, tx, 0)
    ema = jax.tree.map(lambda x: x * 0.5 + 1.0, params)
    return state._replace(ema_params=ema, step=jnp.asarray(7, jnp.int32))


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_ema_item_is_read_alone_and_the_state_round_trips(tmp_path):
    state = _state()
    checkpointer = Checkpointer(str(tmp_path), max_to_keep=2)
    checkpointer.save(7, state, {"epoch": 1}, {"stage": "vae"}, force=True)
    checkpointer.wait()
    checkpointer.close()
    assert (tmp_path / "checkpoints" / "7" / "ema").is_dir()
    restored, loader, meta, step = restore(str(tmp_path), abstract_like(state))
    _assert_tree_equal(restored, state)
    assert (loader, meta, step) == ({"epoch": 1}, {"stage": "vae"}, 7)
    ema, meta, step = read_ema_params(str(tmp_path), abstract_like(state.ema_params), which="latest")
    _assert_tree_equal(ema, state.ema_params)
    with pytest.raises(CheckpointError, match="does not match this model"):
        read_ema_params(str(tmp_path), abstract_like({"other": jnp.zeros(2)}), which="latest")


def test_checkpoints_from_before_the_ema_item_are_read(tmp_path):
    state = _state()
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"), item_names=("state", "loader", "meta"))
    manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state), loader=ocp.args.JsonSave({}),
                                            meta=ocp.args.JsonSave({"stage": "diffusion"})))
    manager.wait_until_finished()
    manager.close()
    ema, meta, step = read_ema_params(str(tmp_path), abstract_like(state.ema_params), which="latest")
    _assert_tree_equal(ema, state.ema_params)
    assert meta == {"stage": "diffusion"} and step == 7
    restored, _, _, _ = restore(str(tmp_path), abstract_like(state))
    _assert_tree_equal(restored, state)
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        read_ema_params(str(tmp_path / "missing"), abstract_like(state.ema_params))
