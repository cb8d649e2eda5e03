"""Shared fixtures of the training tests: tiny models and a simulated batch for the step tests, a prepared
dataset for the training runs."""

import jax
import numpy as np
import pytest

from sediff_jax import simulator as sim
from sediff_jax.models.denoiser import DenoiserConfig
from sediff_jax.models.vae import VAEConfig
from sediff_jax.signal.rpeaks import detect_r_peaks
from sediff_jax.simulator.priors import load_prior

FS = 100.0
B = 8
VAE_CONFIG = VAEConfig(channels=(8, 16, 16), beat_hidden=16, num_groups=4, beat_samples=60)
DENOISER_CONFIG = DenoiserConfig(channels=(16, 16), attention=(False, True), num_heads=2, context_dim=32,
                                 time_embed_dim=16, num_groups=4)


@pytest.fixture(scope="module")
def batch():
    """8 simulated 10 s records at 100 Hz with their R peaks and made-up conditions (one padding slot, unknown
    heart rate, age and sex in some)."""
    names = list(sim.PRESETS)
    params = sim.stack_params([sim.preset_params(names[i % len(names)]) for i in range(B)])
    ecg = np.asarray(sim.simulate_batch(params, jax.random.split(jax.random.key(0), B),
                                        sim.SimulatorConfig(duration_s=10.0, fs=FS)), np.float32)
    peaks = np.full((B, 51), -1, np.int32)
    for i in range(B):
        p = detect_r_peaks(ecg[i], FS)[:51]
        peaks[i, : len(p)] = p
    rng = np.random.default_rng(0)
    mask = np.ones(B, bool)
    mask[-1] = False  # a padding slot
    return {
        "ecg": ecg, "r_peaks": peaks, "mask": mask,
        "hr_bpm": np.array([60, 75, np.nan, 90, 110, 50, 70, 80], np.float32),
        "age": np.array([50, np.nan, 30, 70, 60, 45, 80, 20], np.float32),
        "sex": np.array([0, 1, -1, 0, 1, 0, 1, 0], np.int32),
        "text_tokens": rng.normal(size=(B, 6, 32)).astype(np.float32),
        "text_mask": np.arange(6)[None] < rng.integers(1, 7, size=(B, 1)),
        "experience_tokens": np.zeros((B, 1, 32), np.float32), "experience_mask": np.zeros((B, 1), bool),
        "class_index": rng.integers(0, len(load_prior().class_names), size=B).astype(np.int32),
    }


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> str:
    """A 48-record synthetic prepared dataset at 100 Hz, shared by a module's training runs."""
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(PrepareConfig(dataset="synthetic", out_dir=str(out), canonical=CanonicalConfig(fs=100.0),
                          num_synthetic=48))
    return str(out)
