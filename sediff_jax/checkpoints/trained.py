"""The trained networks of a training workdir's stage directories: graph definition and EMA weights (read from
the checkpoint's `ema` item, no optimiser built), for sampling, export and stage 2's frozen VAE."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from sediff_jax.checkpoints import stage
from sediff_jax.checkpoints.errors import CheckpointError
from sediff_jax.checkpoints.spec import MODEL_FORMAT, MODEL_VERSION, ModelSpec, dataclass_from_json
from sediff_jax.checkpoints.weights import unflatten_params
from sediff_jax.io import jsonio
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


def _ema(directory: str, build: Callable[[], nnx.Module], which: str, expected_stage: str
         ) -> tuple[nnx.GraphDef, Any, dict, int]:
    graphdef, params = abstract_split(build)
    sharding = replicated_sharding(make_mesh())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), params)
    ema, meta, step = stage.read_ema_params(directory, abstract, which)
    if meta.get("stage") != expected_stage:
        raise CheckpointError(f"{directory}: not a {expected_stage} checkpoint (stage {meta.get('stage')!r})")
    return graphdef, ema, meta, step


CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"  # an exported model directory


def read_exported(directory: str | os.PathLike) -> tuple[ModelSpec, dict[str, np.ndarray], Path]:
    """(spec, flat float tensors, weights path) of an exported model directory, each file checked; CheckpointError
    names the file and what is wrong."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: unreadable model config ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a model config (a JSON object is expected)")
    if config.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{config_path}: not an SE-Diff model (format {config.get('format')!r})")
    if config.get("version") != MODEL_VERSION:
        raise CheckpointError(f"{config_path}: model version {config.get('version')!r}; this sediff_jax reads "
                              f"version {MODEL_VERSION}")
    spec = ModelSpec.from_json(config, str(config_path))
    try:
        flat = load_file(str(weights_path))
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: missing (the model directory needs {WEIGHTS_FILE})") from None
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise CheckpointError(f"{weights_path}: unreadable weights ({e})") from None
    return spec, flat, weights_path


def exported_vae(directory: str, dtype: jnp.dtype = jnp.float32) -> tuple[nnx.GraphDef, Any, dict]:
    """(graphdef, params, meta as a VAE stage writes it) of the VAE inside an exported model directory (its
    config.json and model.safetensors `vae/...` tensors): stage 2 can start from a shipped model's VAE."""
    spec, flat, weights_path = read_exported(directory)
    graphdef, template = abstract_split(lambda: ECGVAE(spec.vae, dtype=dtype, rngs=nnx.Rngs(0)))
    params = unflatten_params(template, flat, "vae", str(weights_path))
    meta = {"stage": "vae", "model": dataclasses.asdict(spec.vae), "fs": spec.fs, "exported": str(directory),
            "loss": {"beat_before_s": spec.vae.beat_r_index / spec.fs}}
    return graphdef, params, jsonio.strict(meta)


def is_exported(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds an exported model's files (not a training stage directory)."""
    return (Path(directory) / CONFIG_FILE).is_file() and (Path(directory) / WEIGHTS_FILE).is_file()


def load_vae(directory: str, which: str = "best", dtype: jnp.dtype = jnp.float32) -> tuple[nnx.GraphDef, Any, dict]:
    """(graphdef computing in `dtype`, EMA params, meta) of a VAE stage directory (`<workdir>/vae`), or of the
    VAE in an exported model directory (`exported_vae`)."""
    if is_exported(directory):
        return exported_vae(directory, dtype)
    meta, _ = stage.read_meta(directory, which)
    if meta.get("stage") != "vae":
        raise CheckpointError(f"{directory}: not a VAE checkpoint (stage {meta.get('stage')!r})")
    config = vae_config_from_meta(meta)
    graphdef, ema, meta, _ = _ema(directory, lambda: ECGVAE(config, dtype=dtype, rngs=nnx.Rngs(0)), which, "vae")
    return graphdef, ema, meta


def load_denoiser(directory: str, which: str = "best") -> tuple[nnx.GraphDef, Any, dict, int]:
    """(graphdef, EMA params, meta, step) of a diffusion stage directory (`<workdir>/diffusion`)."""
    meta, _ = stage.read_meta(directory, which)
    if meta.get("stage") != "diffusion":
        raise CheckpointError(f"{directory}: not a diffusion checkpoint (stage {meta.get('stage')!r})")
    config = dataclass_from_json(DenoiserConfig, meta["model"])
    return _ema(directory, lambda: LatentDenoiser(config, rngs=nnx.Rngs(0)), which, "diffusion")
