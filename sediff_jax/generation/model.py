"""A trained SE-Diff model for generation: the denoiser's EMA weights, the VAE, and what sampling needs to know.

Two on-disk forms load the same way (`load_model`):
  * an exported model directory: `config.json` (a `ModelSpec`: model configs, schedule, prediction, fs, latent
    scale, text encoder, simulator prior, experience) and `model.safetensors` (`denoiser/...`,
    `vae/...` float tensors). Written by `export_model` (experiments/export_model.py); the shipped checkpoint
    is one.
  * a training workdir (with `diffusion/`) or a diffusion stage directory: the best EMA checkpoint, and the VAE
    stage its meta points to.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from sediff_jax.assets import shipped_path
from sediff_jax.checkpoints import CheckpointError
from sediff_jax.checkpoints.spec import MODEL_FORMAT, MODEL_VERSION, ModelSpec  # noqa: F401 (re-exported)
from sediff_jax.checkpoints.exported import (  # noqa: F401 (the format's names, re-exported for generation's users)
    CONFIG_FILE, EXPERIENCE_PROFILES_FILE, EXPORTED_FILES, WEIGHTS_FILE, check_export_target, is_exported_model,
    read_exported, write_exported)
from sediff_jax.checkpoints.posthoc_ema import ProfileFit, posthoc_ema_params
from sediff_jax.checkpoints.trained import load_denoiser, load_vae
from sediff_jax.checkpoints.weights import flatten_params, unflatten_params, weights_id
from sediff_jax.diffusion.schedule import NoiseSchedule
from sediff_jax.models.denoiser import LatentDenoiser
from sediff_jax.models.vae import ECGVAE
from sediff_jax.optim import abstract_split

# The checkpoint shipped with the repository (checkpoints/README.md is its model card).
SHIPPED_CHECKPOINT = shipped_path("sediff_ptbxl100")


@dataclasses.dataclass
class SEDiffModel:
    """denoiser / vae: (graphdef, params) pairs, params as pure dicts of arrays.  spec: the model's ModelSpec.
    source: where it was loaded from.  id: 12 hex digits of the weights' hash."""

    denoiser_graphdef: nnx.GraphDef
    denoiser_params: Any
    vae_graphdef: nnx.GraphDef
    vae_params: Any
    spec: ModelSpec
    source: str
    id: str

    @property
    def schedule(self) -> NoiseSchedule:
        return self.spec.schedule

    @property
    def fs(self) -> float:
        return self.spec.fs

    @property
    def num_samples(self) -> int:
        return self.spec.num_samples

    @property
    def latent_scale(self) -> float:
        return self.spec.latent_scale

    @property
    def prediction(self) -> str:
        return self.spec.prediction

    def denoiser(self) -> LatentDenoiser:
        return nnx.merge(self.denoiser_graphdef, self.denoiser_params)

    def vae(self) -> ECGVAE:
        return nnx.merge(self.vae_graphdef, self.vae_params)


def _build(spec: ModelSpec) -> tuple[nnx.GraphDef, Any, nnx.GraphDef, Any]:
    """Both networks' graphdefs and parameter templates, abstract (`nnx.eval_shape`: shapes only, so no random
    initialiser is compiled or run for weights the file then replaces)."""
    return (*abstract_split(lambda: LatentDenoiser(spec.denoiser, rngs=nnx.Rngs(0))),
            *abstract_split(lambda: ECGVAE(spec.vae, rngs=nnx.Rngs(0))))


def load_exported(directory: str | os.PathLike) -> SEDiffModel:
    spec, flat, weights_path = read_exported(directory)
    try:
        denoiser_graphdef, denoiser_template, vae_graphdef, vae_template = _build(spec)
    except (TypeError, ValueError, ZeroDivisionError) as e:  # settings that pass one by one but not together
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: the model settings do not build a model ({e})"
                              ) from None
    return SEDiffModel(
        denoiser_graphdef, unflatten_params(denoiser_template, flat, "denoiser", str(weights_path)),
        vae_graphdef, unflatten_params(vae_template, flat, "vae", str(weights_path)),
        spec, str(directory), weights_id(flat))


def _stage_dir(path: Path) -> Path | None:
    if (path / "diffusion").is_dir():
        return path / "diffusion"
    if (path / "best").is_dir() or (path / "checkpoints").is_dir():
        return path
    return None


def load_training_run(stage_dir: str | os.PathLike, which: str = "best", step: int | None = None) -> SEDiffModel:
    """The EMA denoiser of a diffusion stage directory (its best checkpoint by default, or its checkpoint at
    `step`) with its VAE."""
    stage_dir = Path(stage_dir)
    graphdef, denoiser_params, meta, step = load_denoiser(str(stage_dir), which, step)
    vae_dir = meta["vae"]["directory"]
    if not os.path.isdir(vae_dir):
        raise CheckpointError(f"{stage_dir}: its VAE stage {vae_dir} is missing")
    vae_graphdef, vae_params, _, _ = load_vae(vae_dir, which="best")
    training = {"step": int(step), "workdir": str(stage_dir.parent)}
    if meta.get("init_from"):  # fine-tuned: the model it started from (`training.warm_start`), kept on export
        training["init_from"] = {k: v for k, v in meta["init_from"].items() if k != "source"}
    if "spec" in meta:  # the model as its stage recorded it (`training.stages.diffusion_spec`)
        spec = ModelSpec.from_json(meta["spec"], str(stage_dir))
        spec = spec.replace(provenance={**spec.provenance, "training": training})
    else:  # checkpoints written before stage 2 recorded its spec
        spec = ModelSpec.from_training(meta, training)
    denoiser_params = jax.device_get(denoiser_params)
    vae_params = jax.device_get(vae_params)
    flat = {**flatten_params(denoiser_params, "denoiser"), **flatten_params(vae_params, "vae")}
    return SEDiffModel(graphdef, denoiser_params, vae_graphdef, vae_params, spec, str(stage_dir),
                       weights_id(flat))


def load_model(path: str | os.PathLike, which: str = "best", step: int | None = None) -> SEDiffModel:
    """An exported model directory, a training workdir, or a diffusion stage directory (its `which` checkpoint:
    'best' on validation or 'latest'; or, with `step`, its kept checkpoint of that step); CheckpointError names
    the path and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if (path / WEIGHTS_FILE).is_file() or (path / CONFIG_FILE).is_file() and _stage_dir(path) is None:
        if step is not None:
            raise CheckpointError(f"{path}: an exported model has one set of weights; step={step} needs a "
                                  "training workdir")
        return load_exported(path)  # (a training workdir has a config.json of its own, and diffusion/)
    stage = _stage_dir(path)
    if stage is None:
        raise CheckpointError(f"{path}: no SE-Diff model here (expected {CONFIG_FILE} + {WEIGHTS_FILE}, or a "
                              "training workdir with diffusion/)")
    return load_training_run(stage, "latest" if step is not None else which, step)


def load_posthoc_ema(path: str | os.PathLike, sigma_rels: Sequence[float], step: int | None = None
                     ) -> tuple[SEDiffModel, list[tuple[SEDiffModel, ProfileFit]]]:
    """(the run's own model at `step`, [(model, fit)]): a training run's model at `step` (default: its last kept
    checkpoint), and for each relative width in `sigma_rels` the same model with the denoiser of that post-hoc
    power-function EMA (`checkpoints.posthoc_ema`: from the kept checkpoints up to that step), recorded under the
    spec's training provenance."""
    path = Path(path)
    stage = _stage_dir(path) if path.is_dir() and not (path / WEIGHTS_FILE).is_file() else None
    if stage is None:
        raise CheckpointError(f"{path}: post-hoc EMA needs a training workdir with its kept checkpoints")
    combined = posthoc_ema_params(str(stage), sigma_rels, step)
    model = load_training_run(stage, "latest", combined[0][1].steps[-1])
    models = []
    for sigma_rel, (params, fit) in zip(sigma_rels, combined):
        params = jax.tree.map(lambda own, p: np.asarray(p, np.asarray(own).dtype), model.denoiser_params, params)
        flat = {**flatten_params(params, "denoiser"), **flatten_params(model.vae_params, "vae")}
        training = {**model.spec.training, "posthoc_ema": {
            "sigma_rel": float(sigma_rel), "snapshot_steps": [fit.steps[0], fit.steps[-1], len(fit.steps)],
            "profile_error": round(fit.relative_error, 5)}}
        spec = model.spec.replace(provenance={**model.spec.provenance, "training": training})
        models.append((dataclasses.replace(model, denoiser_params=params, spec=spec, id=weights_id(flat)), fit))
    return model, models


def experience_profiles_path(model: SEDiffModel) -> Path | None:
    """The profile corpus a model trained with experience retrieves from: the copy in an exported model's
    directory, else the experience directory it was trained with; None for a model trained without.  A model
    trained with experience whose corpus is missing raises CheckpointError naming where it was looked for."""
    experience = model.spec.experience
    if not experience.used:
        return None
    candidates = [Path(model.source) / EXPERIENCE_PROFILES_FILE]
    if experience.dir:
        candidates.append(Path(experience.dir) / "profiles.npz")
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise CheckpointError(f"{model.source}: the model was trained with experience but its corpus is missing "
                              f"(looked for {' and '.join(map(str, candidates))}); restore it, or generate with "
                              "--experience=off")
    return found


def export_model(model: SEDiffModel, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None,
                 overwrite: bool = False, dtype: str = "float32") -> Path:
    """Write `model` as an exported model directory (config.json + model.safetensors), atomically: the files
    are written to a temporary sibling directory that replaces the target by rename-aside. With `overwrite`, only
    an existing exported model is replaced (see `check_export_target`). dtype: 'float32' (exact) or 'float16'
    (half the size; loaded back as float32)."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype={dtype!r}; expected float32 or float16")
    spec = model.spec.replace(weights_dtype=dtype, provenance={**model.spec.provenance, **(extra or {})})
    profiles = experience_profiles_path(model)
    if profiles is not None:  # the corpus travels with the model; the training machine's path means nothing
        spec = spec.replace(experience=dataclasses.replace(spec.experience, dir=None))
    flat = {name: value.astype(dtype) if np.issubdtype(value.dtype, np.floating) else value
            for name, value in {**flatten_params(model.denoiser_params, "denoiser"),
                                **flatten_params(model.vae_params, "vae")}.items()}
    return write_exported(spec, flat, out_dir, profiles, overwrite)
