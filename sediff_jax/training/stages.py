"""One builder per training stage: model, optimiser and jitted steps from a training config, with no data layer.

The loop (`sediff_jax.training.loop`), the train-step and device benchmarks and the ablation runner build both
stages here, so a benchmark times exactly the step that training runs. Nothing here reads data or checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from sediff_jax.diffusion.losses import DiffusionLossConfig
from sediff_jax.diffusion.schedule import make_schedule
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser
from sediff_jax.models.vae import ECGVAE, VAEConfig
from sediff_jax.models.vae_losses import VAELossConfig
from sediff_jax.simulator.params import WaveParams
from sediff_jax.training.state import OptimizerConfig, PyTree, make_optimizer, split_params
from sediff_jax.training.steps import DiffusionStepConfig, make_diffusion_steps, make_vae_steps

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def from_config(cls, config: ml_collections.ConfigDict | dict, **overrides):
    """Instantiate dataclass `cls` from the matching fields of `config` (lists become tuples)."""
    values = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in dict(config).items():
        if key in names:
            values[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    values.update(overrides)
    return cls(**values)


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The models' compute precision of `config.precision`: 'float32', or 'bfloat16' (mixed precision: bfloat16
    convolutions, attention and matmuls; float32 parameters, optimiser, losses, simulator and ODE solve)."""
    precision = config.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; expected one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


@dataclasses.dataclass(frozen=True)
class StageModel:
    """A stage's model as (graphdef, float32 params) and its optimiser."""

    graphdef: nnx.GraphDef
    params: PyTree
    optimizer: OptimizerConfig
    tx: optax.GradientTransformation


def _optimizer(stage_config: ml_collections.ConfigDict) -> tuple[OptimizerConfig, optax.GradientTransformation]:
    opt = from_config(OptimizerConfig, stage_config.optimizer, total_steps=int(stage_config.training.num_steps))
    return opt, make_optimizer(opt)


# -- stage 1 -------------------------------------------------------------------------------------------------

def vae_loss_config(config: ml_collections.ConfigDict) -> VAELossConfig:
    return from_config(VAELossConfig, config.vae.loss, fs=float(config.data.fs))


def vae_config(config: ml_collections.ConfigDict) -> VAEConfig:
    return from_config(VAEConfig, config.vae.model, beat_samples=vae_loss_config(config).beat_samples)


def build_vae(config: ml_collections.ConfigDict, seed: int) -> ECGVAE:
    return ECGVAE(vae_config(config), dtype=compute_dtype(config), rngs=nnx.Rngs(seed))


def vae_model(config: ml_collections.ConfigDict, seed: int) -> StageModel:
    graphdef, params = split_params(build_vae(config, seed))
    return StageModel(graphdef, params, *_optimizer(config.vae))


def vae_steps(config: ml_collections.ConfigDict, model: StageModel, mesh: Mesh) -> tuple[Callable, Callable]:
    """(train_step(state, batch), eval_step(params, batch)) of stage 1 (`training.steps.make_vae_steps`)."""
    return make_vae_steps(model.graphdef, model.tx, vae_loss_config(config), model.optimizer.ema_decay, mesh)


# -- stage 2 -------------------------------------------------------------------------------------------------

def denoiser_config(config: ml_collections.ConfigDict, latent_channels: int, context_dim: int) -> DenoiserConfig:
    return from_config(DenoiserConfig, config.diffusion.model, latent_channels=latent_channels,
                       context_dim=context_dim)


def diffusion_model(config: ml_collections.ConfigDict, latent_channels: int, context_dim: int, seed: int
                    ) -> StageModel:
    denoiser = LatentDenoiser(denoiser_config(config, latent_channels, context_dim), dtype=compute_dtype(config),
                              rngs=nnx.Rngs(seed))
    graphdef, params = split_params(denoiser)
    return StageModel(graphdef, params, *_optimizer(config.diffusion))


def diffusion_loss_config(config: ml_collections.ConfigDict, **overrides) -> DiffusionLossConfig:
    return from_config(DiffusionLossConfig, config.diffusion.loss, fs=float(config.data.fs),
                       beat_before_s=float(config.vae.loss.beat_before_s), **overrides)


def diffusion_steps(config: ml_collections.ConfigDict, model: StageModel, vae_graphdef: nnx.GraphDef,
                    loss_config: DiffusionLossConfig, latent_scale: float, wave_table: WaveParams, mesh: Mesh
                    ) -> tuple[Callable, Callable]:
    """(train_step(state, vae_params, batch), eval_step(params, vae_params, key, batch)) of stage 2
    (`training.steps.make_diffusion_steps`) with the config's schedule and condition dropout."""
    dcfg = config.diffusion
    schedule = make_schedule(dcfg.schedule.kind, int(dcfg.schedule.num_steps))
    step_config = DiffusionStepConfig(latent_scale=float(latent_scale),
                                      condition_dropout=tuple(dcfg.condition_dropout))
    return make_diffusion_steps(model.graphdef, vae_graphdef, model.tx, schedule, loss_config, step_config,
                                wave_table, model.optimizer.ema_decay, mesh)
