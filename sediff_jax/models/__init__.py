"""Flax NNX models: the stage-1 ECG VAE with its beat decoder, the stage-2 latent denoiser, and the evaluation
networks (1-D ResNet ECG encoder, ECG-text CLIP, downstream classifier)."""

from sediff_jax.models.vae import ECGVAE, BeatDecoder, Decoder, Encoder, VAEConfig
from sediff_jax.models.vae_losses import VAELossConfig, kl_divergence, log_spectrum, vae_losses
from sediff_jax.models.conditions import Conditions
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser, timestep_embedding
from sediff_jax.models.ecg_encoder import ECGClassifier, ECGEncoderConfig, ECGTextCLIP, ResNet1D
