"""The trained networks of a training workdir's stage directories: graph definition and EMA weights (read from
the checkpoint's `ema` item, no optimiser built), for sampling, export and stage 2's frozen VAE."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sediff_jax.checkpoints import stage
from sediff_jax.checkpoints.errors import CheckpointError
from sediff_jax.checkpoints.exported import exported_vae, is_exported
from sediff_jax.checkpoints.spec import dataclass_from_json
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser
from sediff_jax.models.vae import ECGVAE, VAEConfig
from sediff_jax.optim import abstract_split
from sediff_jax.parallel import make_mesh, replicated_sharding


def vae_config_from_meta(meta: dict[str, Any]) -> VAEConfig:
    """The VAEConfig of a VAE stage's meta (checkpoints written before the beat window moved into the VAE config
    give it from the loss's `beat_before_s`)."""
    fields = dict(meta["model"])
    if "beat_r_index" not in fields:
        fields["beat_r_index"] = int(round(float(meta.get("loss", {}).get("beat_before_s", 0.2)) * float(meta["fs"])))
    return dataclass_from_json(VAEConfig, fields)


def _ema(directory: str, build: Callable[[], nnx.Module], which: str, expected_stage: str,
         step: int | None = None) -> tuple[nnx.GraphDef, Any, dict, int]:
    graphdef, params = abstract_split(build)
    sharding = replicated_sharding(make_mesh())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), params)
    ema, meta, step = stage.read_ema_params(directory, abstract, which, step)
    if meta.get("stage") != expected_stage:
        raise CheckpointError(f"{directory}: not a {expected_stage} checkpoint (stage {meta.get('stage')!r})")
    return graphdef, ema, meta, step


class TrainedVAE(NamedTuple):
    """A trained VAE: graphdef (computing in the asked dtype), EMA params, its VAEConfig and sampling rate (Hz)."""

    graphdef: nnx.GraphDef
    params: Any
    config: VAEConfig
    fs: float


def load_vae(directory: str, which: str = "best", dtype: jnp.dtype = jnp.float32) -> TrainedVAE:
    """The VAE of a VAE stage directory (`<workdir>/vae`; its `which` checkpoint's EMA weights), or the VAE in an
    exported model directory (`exported_vae`)."""
    if is_exported(directory):
        graphdef, params, spec = exported_vae(directory, dtype)
        return TrainedVAE(graphdef, params, spec.vae, float(spec.fs))
    meta, _ = stage.read_meta(directory, which)
    if meta.get("stage") != "vae":
        raise CheckpointError(f"{directory}: not a VAE checkpoint (stage {meta.get('stage')!r})")
    config = vae_config_from_meta(meta)
    graphdef, ema, meta, _ = _ema(directory, lambda: ECGVAE(config, dtype=dtype, rngs=nnx.Rngs(0)), which, "vae")
    return TrainedVAE(graphdef, ema, config, float(meta["fs"]))


def load_denoiser(directory: str, which: str = "best", step: int | None = None
                  ) -> tuple[nnx.GraphDef, Any, dict, int]:
    """(graphdef, EMA params, meta, step) of a diffusion stage directory (`<workdir>/diffusion`): its `which`
    checkpoint ('best' / 'latest'), or the one at `step` of `which`'s folder."""
    meta, _ = stage.read_meta(directory, which)
    if meta.get("stage") != "diffusion":
        raise CheckpointError(f"{directory}: not a diffusion checkpoint (stage {meta.get('stage')!r})")
    config = dataclass_from_json(DenoiserConfig, meta["model"])
    return _ema(directory, lambda: LatentDenoiser(config, rngs=nnx.Rngs(0)), which, "diffusion", step)
