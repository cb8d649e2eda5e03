"""What the train-step and device benchmarks share: a simulated batch, both stages' steps built as training
builds them (`sediff_jax.training.stages`), and the loss-term variants of the diffusion step. No flags here."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sediff_jax import simulator as sim
from sediff_jax.signal.rpeaks import detect_r_peaks
from sediff_jax.simulator.priors import load_prior
from sediff_jax.training import stages
from sediff_jax.parallel import replicated_sharding, shard_batch
from sediff_jax.training.state import init_state
from sediff_jax.training.steps import DIFFUSION_BATCH_KEYS, LATENT_BATCH_KEYS, VAE_BATCH_KEYS

CONTEXT_DIM = 384  # MiniLM's token width
# Diffusion variants: the loss-term weights each sets (others keep the config's); 'ddpm_only' is the reference
# (the paper's release trains it: its simulator terms carry no gradient); 'sim' is the diffrax solve's term;
# '..._closed_form' computes L_sim's beat in closed form (the exact solution, no sequential solver loop);
# 'full_repa' adds L_REPA (weight 0.5, a 128-wide projector, made-up teacher features of the CLIP's 63 steps).
TERMS = ("euler_weight", "interlead_weight", "sim_weight")
# A '_latents' suffix (e.g. 'full_latents') takes the batch's latents from a latent cache instead of encoding
# its ECGs in the step (`sediff_jax.data.latents`).
VARIANTS = ("ddpm_only", "interlead", "euler", "sim", "full", "full_every_record", "sim_closed_form",
            "full_closed_form", "full_repa")
REPA_DIM, REPA_STEPS = 128, 63
FROM_LATENTS = "_latents"


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int, experience_tokens: int = 1,
                    distinct: int = 16) -> dict[str, np.ndarray]:
    """A host batch of simulated 10 s 12-lead records at the config's rate with R peaks and made-up conditions
    (text tokens (b, config.text.max_length, 384), `experience_tokens` experience tokens). `distinct` records are
    simulated and tiled (the step's cost does not depend on the values)."""
    fs, n = float(config.data.fs), min(batch_size, distinct)
    names = list(sim.PRESETS)
    params = sim.stack_params([sim.preset_params(names[i % len(names)]) for i in range(n)])
    ecg = np.asarray(sim.simulate_batch(params, jax.random.split(jax.random.key(0), n),
                                        sim.SimulatorConfig(duration_s=float(config.data.duration_s), fs=fs)),
                     np.float32)
    peaks = np.full((n, 51), -1, np.int32)
    for i in range(n):
        p = detect_r_peaks(ecg[i], fs)[:51]
        peaks[i, : len(p)] = p
    reps = -(-batch_size // n)
    ecg, peaks = np.tile(ecg, (reps, 1, 1))[:batch_size], np.tile(peaks, (reps, 1))[:batch_size]
    rng = np.random.default_rng(0)
    length = int(config.text.max_length)
    return {
        "ecg": ecg, "r_peaks": peaks, "mask": np.ones(batch_size, bool),
        "hr_bpm": rng.uniform(50, 110, batch_size).astype(np.float32),
        "age": rng.uniform(20, 90, batch_size).astype(np.float32), "sex": rng.integers(0, 2, batch_size).astype(np.int32),
        "text_tokens": rng.normal(size=(batch_size, length, CONTEXT_DIM)).astype(np.float32),
        "text_mask": np.arange(length)[None] < rng.integers(8, 30, (batch_size, 1)),
        "experience_tokens": rng.normal(size=(batch_size, experience_tokens, CONTEXT_DIM)).astype(np.float32),
        "experience_mask": np.arange(experience_tokens)[None] < rng.integers(1, experience_tokens + 1, (batch_size, 1)),
        "class_index": rng.integers(0, len(load_prior().class_names), batch_size).astype(np.int32),
    }


@dataclasses.dataclass
class StepRun:
    """A jitted train step `step(state, *frozen, inputs) -> (state, metrics)` with its state, frozen inputs (the
    stage-2 VAE) and sharded batch. `run()` takes one step; `compile()` replaces the jitted function by its
    compiled executable (XLA's cost and memory analyses are then at hand)."""

    step: Callable
    state: object
    inputs: dict
    frozen: tuple = ()
    compiled: object = None

    def compile(self):
        self.compiled = self.step.lower(self.state, *self.frozen, self.inputs).compile()
        return self.compiled

    def run(self):
        fn = self.compiled if self.compiled is not None else self.step
        self.state, metrics = fn(self.state, *self.frozen, self.inputs)
        return metrics


def _fresh_state(model: stages.StageModel, seed: int, mesh):
    """A train state of its own buffers (each step donates its state)."""
    return jax.device_put(jax.tree.map(jnp.array, init_state(model.params, model.tx, seed)), replicated_sharding(mesh))


def vae_run(config: ml_collections.ConfigDict, batch: dict, mesh) -> StepRun:
    model = stages.vae_model(config, 0)
    train_step, _ = stages.vae_steps(config, model, mesh)
    state = _fresh_state(model, 0, mesh)
    return StepRun(train_step, state, shard_batch({k: batch[k] for k in VAE_BATCH_KEYS}, mesh))


def variant_weights(config: ml_collections.ConfigDict, variant: str) -> dict:
    """The loss-config overrides of a diffusion variant (a term the config switches off is timed at 0.05)."""
    variant = variant.removesuffix(FROM_LATENTS)
    if variant not in VARIANTS:
        raise ValueError(f"diffusion variant {variant!r} is unknown; expected one of {VARIANTS} (each also with "
                         f"{FROM_LATENTS!r})")
    weights = {k: float(config.diffusion.loss[k]) or 0.05 for k in TERMS}
    off = dict.fromkeys(TERMS, 0.0)
    single = {"interlead": "interlead_weight", "euler": "euler_weight", "sim": "sim_weight"}
    solver = {"sim_solver": "closed_form"} if variant.endswith("_closed_form") else {}
    variant = variant.removesuffix("_closed_form")
    if variant == "ddpm_only":
        return off
    if variant == "full_repa":
        return dict(weights, repa_weight=0.5)
    if variant in single:
        return dict(off, **{single[variant]: weights[single[variant]]}, **solver)
    return dict(weights, **solver) if variant == "full" else dict(weights, sim_fraction=1.0)


def diffusion_runs(config: ml_collections.ConfigDict, batch: dict, mesh, variants, **loss_overrides
                   ) -> dict[str, StepRun]:
    """One StepRun per diffusion variant, over a freshly initialised VAE (frozen, an input of the step)."""
    vae = stages.vae_model(config, 0)
    vae_params = jax.device_put(vae.params, replicated_sharding(mesh))
    latent_channels = stages.vae_config(config).latent_channels
    model = stages.diffusion_model(config, latent_channels, CONTEXT_DIM, 1)
    prior = load_prior()
    waves = prior.wave_table(prior.class_names)
    batch = dict(batch, repa_target=np.random.default_rng(0).normal(
        size=(len(batch["mask"]), REPA_STEPS, REPA_DIM)).astype(np.float32))
    latent_batch = None
    runs = {}
    for variant in variants:
        if variant.endswith(FROM_LATENTS) and latent_batch is None:  # what a latent cache holds: the VAE's means
            encode = jax.jit(lambda p, ecg: nnx.merge(vae.graphdef, p).encode(ecg)[0])
            latent_batch = dict(batch, latent_mean=np.asarray(encode(vae.params, batch["ecg"])))
        repa = variant.removesuffix(FROM_LATENTS) == "full_repa"
        keys = (LATENT_BATCH_KEYS if variant.endswith(FROM_LATENTS) else DIFFUSION_BATCH_KEYS) + (
            ("repa_target",) if repa else ())
        inputs = shard_batch({k: (latent_batch if variant.endswith(FROM_LATENTS) else batch)[k] for k in keys}, mesh)
        variant_model = model
        if repa:
            repa_config = ml_collections.ConfigDict(config.to_dict())
            repa_config.diffusion.model.repa_dim = REPA_DIM
            variant_model = stages.diffusion_model(repa_config, latent_channels, CONTEXT_DIM, 1)
        loss_config = stages.diffusion_loss_config(config, **{**loss_overrides, **variant_weights(config, variant)})
        train_step, _ = stages.diffusion_steps(config, variant_model, vae.graphdef, loss_config,
                                                stages.diffusion_step_config(config, 1.0), waves, mesh)
        state = _fresh_state(variant_model, 1, mesh)
        runs[variant] = StepRun(train_step, state, inputs, (vae_params,))
    return runs
