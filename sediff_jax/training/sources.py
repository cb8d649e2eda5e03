"""Where each stage's examples come from: the prepared dataset (built when missing), its splits, stage 2's latent
cache (the frozen VAE's encodings, built beside the dataset), and the training and evaluation loaders.

tensorflow-datasets is imported only when a prepared dataset is built or opened (`data.builder`): stage 2 from a
given latent cache alone (`diffusion.latent_cache=<dir>`, no prepared dataset: a machine that was carried only the
cache) needs neither tensorflow-datasets nor array_record."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sediff_jax.checkpoints.trained import load_vae
from sediff_jax.checkpoints.weights import flatten_params, weights_id
from sediff_jax.data import latents, sampling
from sediff_jax.data.builder import VERSION, config_name, open_split
from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.data.loader import BatchLoader, LoaderState
from sediff_jax.data.prepare import PrepareConfig, prepare
from sediff_jax.optim import PyTree


def canonical_config(config: ml_collections.ConfigDict) -> CanonicalConfig:
    return CanonicalConfig(fs=float(config.data.fs), duration_s=float(config.data.duration_s),
                           highpass_hz=config.data.highpass_hz)


def prepared_path(config: ml_collections.ConfigDict) -> str:
    """The prepared dataset of `config.data`; built first when missing and `data.prepare_if_missing`."""
    data = config.data
    path = os.path.join(data.prepared_dir, data.dataset, config_name(canonical_config(config)), VERSION)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return path
    if not data.prepare_if_missing:
        raise FileNotFoundError(f"{path}: prepared dataset not found (run experiments/prepare_data.py or set "
                                "data.prepare_if_missing)")
    if jax.process_count() > 1:
        raise FileNotFoundError(f"{path}: prepare the dataset before a multi-host run")
    if data.dataset != "synthetic" and not data.source_dir:
        raise ValueError(f"data.source_dir is needed to prepare {data.dataset}")
    logging.info("preparing %s into %s", data.dataset, path)
    report = prepare(PrepareConfig(dataset=data.dataset, out_dir=data.prepared_dir, source_dir=data.source_dir,
                                   canonical=canonical_config(config), num_synthetic=data.num_synthetic,
                                   seed=data.synthetic_seed, num_workers=data.num_workers))
    logging.info("%s", report.summary())
    return path


def split_source(config: ml_collections.ConfigDict, split: str):
    """The random-access source of one split of the prepared dataset."""
    return open_split(prepared_path(config), split)


def stage2_source(config: ml_collections.ConfigDict, split: str, latent_dir: str | None = None):
    """Stage 2's source of one split: the latent cache's at `latent_dir`, else the prepared dataset's."""
    return split_source(config, split) if not latent_dir else latents.LatentSource(latent_dir, split)


def cache_splits(config: ml_collections.ConfigDict) -> dict[str, int]:
    """split -> records of the prepared dataset, for the training, evaluation and test splits of `config`."""
    names = dict.fromkeys(s for s in (config.data.train_split, config.data.eval_split, config.data.test_split) if s)
    return {split: len(split_source(config, split)) for split in names}


def vae_weights_id(params: PyTree) -> str:
    """The id of a VAE's weights (`checkpoints.weights_id`): what a latent cache records of its encoder."""
    return weights_id(flatten_params(jax.device_get(params), "vae"))


def latent_cache_dir(config: ml_collections.ConfigDict, vae_id: str) -> str:
    """Where `diffusion.latent_cache=auto` keeps the cache of the VAE with weights `vae_id`: beside the prepared
    dataset (`<prepared version dir>_latents/<vae_id>`)."""
    return f"{prepared_path(config)}_latents/{vae_id}"


def build_latent_cache(config: ml_collections.ConfigDict, vae_dir: str, directory: str | None = None,
                       dtype: str | None = None, batch_size: int = 64) -> tuple[str, latents.LatentCacheInfo]:
    """Encode every record of the config's splits with the VAE at `vae_dir` (its best EMA weights, float32) into
    a latent cache at `directory` (default: `latent_cache_dir`); returns (directory, info)."""
    graphdef, params, _, _ = load_vae(vae_dir, which="best", dtype=jnp.float32)
    vae_id = vae_weights_id(params)
    directory = directory or latent_cache_dir(config, vae_id)
    vae = nnx.merge(graphdef, params)
    encode = jax.jit(lambda ecg: vae.encode(ecg)[0])
    downsampling = vae.config.downsampling
    num_samples = canonical_config(config).num_samples
    info = latents.LatentCacheInfo(
        vae_id=vae_id, vae_dir=os.path.abspath(vae_dir), dataset=os.path.abspath(prepared_path(config)),
        fs=float(config.data.fs), num_samples=num_samples,
        latent_shape=(num_samples // downsampling, vae.config.latent_channels), downsampling=downsampling,
        dtype=dtype or config.diffusion.latent_cache_dtype, splits=cache_splits(config))
    logging.info("encoding %s into the latent cache %s", dict(info.splits), directory)
    info = latents.write_cache(directory, lambda split: eval_loader(split_source(config, split), batch_size),
                              encode, info)
    logging.info("latent cache written in %.0f s", info.seconds)
    return directory, info


def latent_cache(config: ml_collections.ConfigDict, vae_dir: str, vae_params: PyTree) -> str | None:
    """The latent cache stage 2 trains from (`diffusion.latent_cache`): None for '' (encode every batch), the
    cache beside the prepared dataset for 'auto' (built by process 0 when missing), or the given directory. It
    must have been made by this VAE (its weights id) from the same prepared dataset (its split sizes); a given
    cache with no prepared dataset beside it and `data.prepare_if_missing=False` is read alone (it must hold the
    run's splits)."""
    setting = config.diffusion.latent_cache
    if not setting:
        return None
    vae_id = vae_weights_id(vae_params)
    directory = latent_cache_dir(config, vae_id) if setting == "auto" else setting
    if setting == "auto" and not os.path.exists(os.path.join(directory, "manifest.json")):
        if jax.process_count() > 1:
            raise latents.LatentCacheError(f"{directory}: build the latent cache before a multi-host run "
                                           "(python -m experiments.encode_latents)")
        build_latent_cache(config, vae_dir, directory)
    info = latents.read_info(directory)
    if setting != "auto" and not config.data.prepare_if_missing and not _has_prepared_dataset(config):
        # the cache alone (carried without its dataset): it must hold this run's splits, at its own sizes
        splits = {s: info.splits.get(s, -1) for s in (config.data.train_split, config.data.eval_split,
                                                       config.data.test_split) if s}
        logging.info("stage 2 reads the latent cache %s alone (no prepared dataset at %s)", directory,
                     config.data.prepared_dir)
    else:
        splits = cache_splits(config)
    latents.check_matches(info, directory, vae_id=vae_id, splits=splits)
    return directory


def _has_prepared_dataset(config: ml_collections.ConfigDict) -> bool:
    try:
        prepared_path(config)
    except FileNotFoundError:
        return False
    return True


def sampling_weights(stage_config: ml_collections.ConfigDict, source) -> np.ndarray | None:
    """Each training record's expected draws per epoch under the stage's rare-finding oversampling
    (`training.oversample_*`, `data.sampling.rare_code_weights`); None when `oversample_power` is 0."""
    training = stage_config.training
    if not training.oversample_power:
        return None
    weights = sampling.rare_code_weights(sampling.source_codes(source), power=training.oversample_power,
                                         reference_count=training.oversample_reference,
                                         max_weight=training.oversample_max,
                                         only=sampling.parse_codes(training.oversample_codes.replace(",", ";")))
    logging.info("rare-finding oversampling: %d records drawn %.0f times per epoch (%.1f %% of them more than once, "
                 "up to %.2fx)", len(weights), sampling.epoch_length(weights), 100 * np.mean(weights > 1),
                 weights.max())
    return weights


def train_loader(config: ml_collections.ConfigDict, stage_config: ml_collections.ConfigDict, source,
                 state: LoaderState | None) -> BatchLoader:
    """The shuffled, repeating, per-host training loader of a stage, resumed at `state`, drawing rare findings
    more often where the stage's `training.oversample_power` > 0."""
    return BatchLoader(source, stage_config.training.batch_size, seed=config.seed, state=state,
                       prefetch=config.data.prefetch, workers=config.data.loader_workers,
                       weights=sampling_weights(stage_config, source))


def eval_loader(source, batch_size: int) -> BatchLoader:
    """One ordered pass over `source`, the last batch padded (its mask says which rows are real)."""
    return BatchLoader(source, batch_size, shuffle=False, drop_remainder=False, num_epochs=1, prefetch=1)
