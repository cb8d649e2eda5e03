"""Flax NNX models: the stage-1 ECG VAE with its beat decoder (the latent denoiser joins in stage 2)."""

from sediff_jax.models.vae import ECGVAE, BeatDecoder, Decoder, Encoder, VAEConfig
from sediff_jax.models.vae_losses import VAELossConfig, kl_divergence, log_spectrum, vae_losses
