"""Stage 2 from a trained model's weights (`diffusion.init_from`): fine-tuning the shipped model with a new recipe,
or on a new dataset with the same VAE."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.checkpoints.weights import flatten_params
from sediff_jax.generation.model import load_model
from sediff_jax.io import jsonio
from sediff_jax.models.denoiser import DenoiserConfig
from sediff_jax.parallel import replicated_sharding
from sediff_jax.signal.phase import ECTOPIC_RHYTHM_FEATURES, RHYTHM_FEATURES
from sediff_jax.training.state import TrainState, init_state


def warm_started(config: ml_collections.ConfigDict, model: Any, model_config: DenoiserConfig, vae_params: Any,
                 meta: dict, mesh: Any) -> tuple[TrainState, dict]:
    """(replicated train state, meta) of stage 2 started from `diffusion.init_from`: its EMA denoiser as the
    parameters and the EMA, a fresh optimiser (`model`: training.stages.StageModel), and its latent scale and
    identity added to `meta`."""
    params, init_meta = initial_denoiser(config, model_config, vae_params, meta)
    params = with_new_layers(model.params, params, where=str(config.diffusion.init_from))
    state = init_state(params, model.tx, config.seed + 1)
    return jax.device_put(state, replicated_sharding(mesh)), {**meta, **init_meta}


# Denoiser settings a warm start may add (0 in the source model, set in this run): their layers start fresh, from
# this run's initialisation, and are built to leave the prediction unchanged at the start (zero output layers).
ADDABLE = {"amplitude_leads": "amplitude_embed"}
# Denoiser settings a warm start may raise (source value -> values this run may have): the input layer gains input
# channels, which start at zero weight (the prediction is unchanged at the start): the ectopic scaffold channel.
GROWABLE = {"rhythm_channels": {RHYTHM_FEATURES: ECTOPIC_RHYTHM_FEATURES}}
GROWN_INPUT = "denoiser/conv_in/kernel"  # (width, in channels, out channels): channels are appended at the end


def with_new_layers(template: Any, params: Any, where: str) -> Any:
    """`template`'s tree (this run's freshly initialised parameters) with every tensor the source model has taken
    from `params` (cast to the template's dtype); a template tensor the source lacks keeps its initialisation only
    under a layer of `ADDABLE`. Shapes must match, except that the input layer (`GROWN_INPUT`) may have more input
    channels than the source's (`GROWABLE`), the new ones zero; a source tensor the template lacks is an error."""
    source = flatten_params(params, "denoiser")
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = flatten_params(template, "denoiser")
    added = tuple(f"denoiser/{layer}/" for layer in ADDABLE.values())
    leaves = []
    for (name, fresh), (_, leaf) in zip(names.items(), paths):
        if name == GROWN_INPUT and name in source and _grows(source[name].shape, fresh.shape):
            grown = np.zeros(fresh.shape, fresh.dtype)
            grown[:, :source[name].shape[1]] = np.asarray(source[name], fresh.dtype)
            leaves.append(grown)
        elif name in source:
            if source[name].shape != fresh.shape:
                raise ckpt.CheckpointError(f"{where}: tensor {name!r} has shape {source[name].shape}, this run's "
                                           f"denoiser needs {fresh.shape}")
            leaves.append(np.asarray(source[name], fresh.dtype))
        elif name.startswith(added):
            leaves.append(np.asarray(leaf))
        else:
            raise ckpt.CheckpointError(f"{where}: the model has no tensor {name!r}")
    extra = sorted(set(source) - set(names))
    if extra:
        raise ckpt.CheckpointError(f"{where}: the model has tensors this run's denoiser lacks, e.g. {extra[:3]}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _grows(source: tuple[int, ...], template: tuple[int, ...]) -> bool:
    """Whether an input-layer kernel of shape `source` becomes `template` by input channels `GROWABLE` adds."""
    added = {after - before for grow in GROWABLE.values() for before, after in grow.items()}
    return (len(source) == len(template) == 3 and source[0] == template[0] and source[2] == template[2]
            and template[1] - source[1] in added)


def initial_denoiser(config: ml_collections.ConfigDict, model_config: DenoiserConfig, vae_params: Any, meta: dict
                     ) -> tuple[Any, dict]:
    """(EMA denoiser params as float32, meta additions) of `diffusion.init_from`: stage 2 starts from a trained
    model's weights. The model must have this run's denoiser, noise schedule, text encoder, sampling rate and
    duration, and the same frozen VAE (compared at the precision the model stores), so its latent scale carries
    over; CheckpointError names what differs. Its prediction target may differ (an epsilon model fine-tuned into a
    v-prediction one, as Stable Diffusion 2's 768-v model was): the network stays, its output layer's meaning is
    re-learned, and the meta records the target it started from. It may lack a layer this run adds (`ADDABLE`: the
    lead-amplitude embedding), which then starts from this run's initialisation, or input channels (`GROWABLE`: the
    ectopic scaffold channel), which start at zero weight."""
    source = config.diffusion.init_from
    model = load_model(source)
    spec = model.spec
    added = {key: 0 for key in ADDABLE if getattr(spec.denoiser, key) == 0}  # layers this run may add
    grown = {key: getattr(spec.denoiser, key) for key, grow in GROWABLE.items()
             if grow.get(getattr(spec.denoiser, key)) == getattr(model_config, key)}  # inputs this run may add
    wanted = {"denoiser": {**dataclasses.asdict(model_config), **added, **grown}, "schedule": meta["schedule"],
              "text_encoder": meta["text_encoder"],
              "fs": float(meta["fs"]), "duration_s": float(meta["duration_s"])}
    found = {"denoiser": dataclasses.asdict(spec.denoiser),
             "schedule": {"kind": spec.schedule_kind, "num_steps": int(spec.schedule_steps)},
             "text_encoder": spec.text_encoder, "fs": float(spec.fs),
             "duration_s": float(spec.duration_s)}
    differing = [k for k in wanted if jsonio.strict(wanted[k]) != jsonio.strict(found[k])]
    if differing:
        shown = "; ".join(f"{k}: {found[k]!r} there, {wanted[k]!r} in this run" for k in differing[:3])
        raise ckpt.CheckpointError(f"diffusion.init_from={source}: that model cannot start this run ({shown})")
    stored = np.dtype(spec.weights_dtype)
    same_vae = jax.tree.all(jax.tree.map(
        lambda a, b: np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a, stored), np.asarray(b, stored)),
        jax.device_get(vae_params), jax.device_get(model.vae_params)))
    if not same_vae:
        raise ckpt.CheckpointError(
            f"diffusion.init_from={source}: its VAE is not this run's frozen VAE "
            f"({config.diffusion.vae_checkpoint or 'the workdir VAE'}), so its latents mean something else; point "
            f"--config.diffusion.vae_checkpoint at {source}")
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(model.denoiser_params))
    logging.info("stage 2 starts from %s (model %s, step %s)", source, model.id, spec.training.get("step"))
    if spec.prediction != meta["loss"]["prediction"]:
        logging.info("the model predicts %s and this run trains it to predict %s: its output is re-learned",
                     spec.prediction, meta["loss"]["prediction"])
    return params, {"latent_scale": float(spec.latent_scale),
                    "init_from": {"source": os.path.abspath(source), "model_id": model.id,
                                  "step": spec.training.get("step"), "prediction": spec.prediction}}
