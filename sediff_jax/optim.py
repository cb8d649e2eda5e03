"""Parameter trees, the optimiser and the parameter EMA: what every trained network here shares (both SE-Diff
stages, the evaluation networks). Pure functions; the stage train state is `sediff_jax.training.state`."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Array = jax.Array
PyTree = Any


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


def abstract_split(build: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, PyTree]:
    """(graphdef, params template of ShapeDtypeStructs) of the module `build()` makes, without initialising it
    (`nnx.eval_shape`): for loaders whose weights come from a file, so no initialiser is compiled or run."""
    return split_params(nnx.eval_shape(build))


def update_ema(ema: PyTree, params: PyTree, step: Array, decay: float) -> PyTree:
    """EMA with the usual warm-up: effective decay min(decay, (1 + step) / (10 + step))."""
    if decay <= 0:
        return params
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
