"""The train state of either stage: a plain pytree (checkpointed by orbax, sharded by `jax.jit`).

Parameters are NNX `Param` states as pure dicts (`nnx.split(model, nnx.Param)`); the model's graph definition
stays on the host and `nnx.merge(graphdef, params)` rebuilds the module inside the jitted step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sediff_jax.optim import OptimizerConfig, make_optimizer, split_params, update_ema  # noqa: F401 (the state's API)

Array = jax.Array
PyTree = Any


class TrainState(NamedTuple):
    """step: () int32 optimiser steps taken.  params, ema_params: pure-dict Param trees.  opt_state: optax.
    rng: (2,) uint32 raw key; step s draws from fold_in(rng, s), so resuming reproduces the same noise."""

    step: Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree
    rng: Array


def init_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), rng=jax.random.PRNGKey(seed))


def apply_gradients(state: TrainState, grads: PyTree, tx: optax.GradientTransformation,
                    ema_decay: float) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state._replace(step=state.step + 1, params=params, opt_state=opt_state,
                          ema_params=update_ema(state.ema_params, params, state.step, ema_decay))


def keep_if_finite(finite: Array, new: TrainState, old: TrainState) -> TrainState:
    """`new` where `finite`, else `old` with the step counter advanced (a non-finite step changes nothing)."""
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    return kept._replace(step=new.step)


def abstract_like(tree: PyTree, sharding: Callable[[Any], Any] | Any | None = None) -> PyTree:
    """ShapeDtypeStructs of `tree` (for orbax restore targets), with `sharding` on every leaf."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
