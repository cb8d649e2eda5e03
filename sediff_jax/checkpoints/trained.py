"""The trained networks of a training workdir's stage directories: graph definition and EMA weights (read from
the checkpoint's `ema` item, no optimiser built), for sampling, export and stage 2's frozen VAE."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sediff_jax.checkpoints import stage
from sediff_jax.checkpoints.errors import CheckpointError
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser
from sediff_jax.models.vae import ECGVAE, VAEConfig
from sediff_jax.optim import split_params
from sediff_jax.parallel import make_mesh, replicated_sharding


def dataclass_from_json(cls, fields: dict[str, Any]):
    """Dataclass `cls` from a checkpoint's JSON fields (lists become tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _ema(directory: str, model: nnx.Module, which: str, expected_stage: str) -> tuple[nnx.GraphDef, Any, dict, int]:
    graphdef, params = split_params(model)
    sharding = replicated_sharding(make_mesh())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), params)
    ema, meta, step = stage.read_ema_params(directory, abstract, which)
    if meta.get("stage") != expected_stage:
        raise CheckpointError(f"{directory}: not a {expected_stage} checkpoint (stage {meta.get('stage')!r})")
    return graphdef, ema, meta, step


def load_vae(directory: str, which: str = "best", dtype: jnp.dtype = jnp.float32) -> tuple[nnx.GraphDef, Any, dict]:
    """(graphdef computing in `dtype`, EMA params, meta) of a VAE stage directory (`<workdir>/vae`)."""
    meta, _ = stage.read_meta(directory, which)
    if meta.get("stage") != "vae":
        raise CheckpointError(f"{directory}: not a VAE checkpoint (stage {meta.get('stage')!r})")
    model = ECGVAE(dataclass_from_json(VAEConfig, meta["model"]), dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, ema, meta, _ = _ema(directory, model, which, "vae")
    return graphdef, ema, meta


def load_denoiser(directory: str, which: str = "best") -> tuple[nnx.GraphDef, Any, dict, int]:
    """(graphdef, EMA params, meta, step) of a diffusion stage directory (`<workdir>/diffusion`)."""
    meta, _ = stage.read_meta(directory, which)
    if meta.get("stage") != "diffusion":
        raise CheckpointError(f"{directory}: not a diffusion checkpoint (stage {meta.get('stage')!r})")
    model = LatentDenoiser(dataclass_from_json(DenoiserConfig, meta["model"]), rngs=nnx.Rngs(0))
    return _ema(directory, model, which, "diffusion")
