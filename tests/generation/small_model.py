"""A small random-weight SE-Diff model (2.56 s at 100 Hz, hashing text encoder) for generation tests."""

import dataclasses

import jax
from flax import nnx

from sediff_jax.generation.model import SEDiffModel
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser
from sediff_jax.models.vae import ECGVAE, VAEConfig
from sediff_jax.simulator.priors import load_prior
from sediff_jax.text import HashingEncoder
from sediff_jax.training.state import split_params

VAE_CONFIG = VAEConfig(channels=(8, 16, 16), beat_hidden=16, num_groups=4, beat_samples=60)
DENOISER_CONFIG = DenoiserConfig(channels=(16, 16), attention=(False, True), num_heads=2, context_dim=32,
                                 time_embed_dim=16, num_groups=4)


def small_model() -> SEDiffModel:
    denoiser_graphdef, denoiser_params = split_params(LatentDenoiser(DENOISER_CONFIG, rngs=nnx.Rngs(1)))
    # The output conv starts at zero; perturb every weight so that conditions change the output.
    denoiser_params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape),
                                   denoiser_params)
    vae_graphdef, vae_params = split_params(ECGVAE(VAE_CONFIG, rngs=nnx.Rngs(0)))
    config = {
        "format": "sediff_jax.model", "version": 1,
        "denoiser": dataclasses.asdict(DENOISER_CONFIG), "vae": dataclasses.asdict(VAE_CONFIG),
        "schedule": {"kind": "cosine", "num_steps": 100}, "prediction": "epsilon", "fs": 100.0,
        "duration_s": 2.56, "latent_scale": 2.0, "beat_before_s": 0.2,
        "text_encoder": HashingEncoder(dim=32, max_length=8).id, "prior": "default",
        "prior_classes": list(load_prior().class_names), "training": {"step": 0},
    }
    return SEDiffModel(denoiser_graphdef, denoiser_params, vae_graphdef, vae_params, config, "memory", "none")
