"""The train state of either stage: a plain pytree (checkpointed by orbax, sharded by `jax.jit`).

Parameters are NNX `Param` states as pure dicts (`nnx.split(model, nnx.Param)`); the model's graph definition
stays on the host and `nnx.merge(graphdef, params)` rebuilds the module inside the jitted step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

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


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up then cosine decay to `final_lr_fraction`, global-norm gradient clipping.
    ema_decay: decay of the parameter EMA (0 disables it: the EMA equals the parameters)."""

    learning_rate: float = 2e-4
    warmup_steps: int = 100
    total_steps: int = 10_000
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.999


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    warmup = max(1, min(config.warmup_steps, config.total_steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(config.total_steps, warmup + 1),
        end_value=config.learning_rate * config.final_lr_fraction)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay),
    )


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, PyTree]:
    """(graphdef, params as a pure dict). Models here hold only `nnx.Param` state."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def init_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), rng=jax.random.PRNGKey(seed))


def update_ema(ema: PyTree, params: PyTree, step: Array, decay: float) -> PyTree:
    """EMA with the usual warm-up: effective decay min(decay, (1 + step) / (10 + step))."""
    if decay <= 0:
        return params
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


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
