"""A small random-weight SE-Diff model (2.56 s at 100 Hz, hashing text encoder) for generation tests."""

import dataclasses

import jax
from flax import nnx

from sediff_jax.checkpoints.spec import ModelSpec
from sediff_jax.generation.model import SEDiffModel
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser
from sediff_jax.models.vae import ECGVAE, VAEConfig
from sediff_jax.simulator.priors import load_prior
from sediff_jax.text import HashingEncoder
from sediff_jax.training.state import split_params

VAE_CONFIG = VAEConfig(channels=(8, 16, 16), beat_hidden=16, num_groups=4, beat_samples=60)
DENOISER_CONFIG = DenoiserConfig(channels=(16, 16), attention=(False, True), num_heads=2, context_dim=32,
                                 time_embed_dim=16, num_groups=4)


def small_model(rhythm: bool = False, amplitudes: bool = False) -> SEDiffModel:
    """rhythm: a denoiser that takes the rhythm scaffold (rhythm_channels=3); amplitudes: one told each lead's
    amplitude (amplitude_leads=12)."""
    denoiser_config = dataclasses.replace(DENOISER_CONFIG, rhythm_channels=3 if rhythm else 0,
                                          amplitude_leads=12 if amplitudes else 0)
    denoiser_graphdef, denoiser_params = split_params(LatentDenoiser(denoiser_config, rngs=nnx.Rngs(1)))
    # The output conv starts at zero; perturb every weight so that conditions change the output.
    denoiser_params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape),
                                   denoiser_params)
    vae_graphdef, vae_params = split_params(ECGVAE(VAE_CONFIG, rngs=nnx.Rngs(0)))
    spec = ModelSpec(
        fs=100.0, duration_s=2.56, vae=VAE_CONFIG, denoiser=denoiser_config, schedule_kind="cosine",
        schedule_steps=100, prediction="epsilon", latent_scale=2.0,
        text_encoder=HashingEncoder(dim=32, max_length=8).id, prior="default",
        prior_classes=tuple(load_prior().class_names), provenance={"training": {"step": 0}})
    return SEDiffModel(denoiser_graphdef, denoiser_params, vae_graphdef, vae_params, spec, "memory", "none")
