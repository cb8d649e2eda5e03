"""Jitted, data-parallel train and eval steps of both stages.

Each step is one `jax.jit` over a `Mesh` (`sediff_jax.parallel.make_mesh`; not `jax.pmap`): the train state is
replicated, the batch is sharded along `data`, XLA inserts the gradient all-reduce, and random numbers are drawn for the global batch
from `fold_in(state.rng, state.step)` (partitionable threefry), so the same seed gives the same step on 1 or N
devices. A step whose loss terms or gradient norm are not finite leaves the state unchanged and reports
`finite = False`; the loop then stops and names the step and term.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from sediff_jax.diffusion.losses import DiffusionLossConfig, diffusion_losses
from sediff_jax.diffusion.sampling import SamplerConfig, sample
from sediff_jax.diffusion.schedule import NoiseSchedule
from sediff_jax.leads import project_to_lead_space
from sediff_jax.models.conditions import Conditions
from sediff_jax.models.denoiser import METADATA, TEXT
from sediff_jax.models.vae_losses import VAELossConfig, vae_losses
from sediff_jax.signal.phase import rhythm_features
from sediff_jax.simulator.params import WaveParams, waves_of_classes
from sediff_jax.parallel import batch_sharding, replicated_sharding
from sediff_jax.training.state import TrainState, apply_gradients, keep_if_finite

Array = jax.Array
Batch = dict[str, Array]
VAE_BATCH_KEYS = ("ecg", "r_peaks", "mask")
DIFFUSION_BATCH_KEYS = ("ecg", "mask", "hr_bpm", "age", "sex", "text_tokens", "text_mask", "experience_tokens",
                        "experience_mask", "class_index", "r_peaks")
# Stage 2 from a latent cache (`sediff_jax.data.latents`): the VAE's latent means instead of the ECG.
LATENT_BATCH_KEYS = tuple("latent_mean" if key == "ecg" else key for key in DIFFUSION_BATCH_KEYS)


def _finite(terms: dict[str, Array], grads) -> Array:
    ok = jnp.all(jnp.stack([jnp.isfinite(v) for v in terms.values()]))
    return ok & jnp.isfinite(optax.tree.norm(grads))


def _jit(fn: Callable, mesh: Mesh, num_replicated: int, donate: bool = True) -> Callable:
    """jit `fn(state, *replicated_inputs, batch)` with the state and inputs replicated and the batch sharded."""
    rep, data = replicated_sharding(mesh), batch_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep,) * num_replicated + (data,), out_shardings=(rep, rep),
                   donate_argnums=(0,) if donate else ())


# -- stage 1 -------------------------------------------------------------------------------------------------

def make_vae_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_config: VAELossConfig,
                   ema_decay: float, mesh: Mesh) -> tuple[Callable, Callable]:
    """(train_step(state, batch) -> (state, metrics), eval_step(params, batch) -> (sums, count)).

    batch: ecg (b, time, 12) mV, r_peaks (b, max_peaks) int32 (-1 padded), mask (b,) bool.
    eval sums: 'abs_error' (mV, summed over samples and leads), 'squared_error', 'samples' (count).
    """

    def loss_fn(params, batch, key):
        outputs = nnx.merge(graphdef, params)(batch["ecg"], key)
        terms = vae_losses(outputs, batch["ecg"], batch["r_peaks"], loss_config, batch["mask"])
        return terms["total"], terms

    def train_step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(state.rng, state.step)
        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        finite = _finite(terms, grads)
        new = apply_gradients(state, grads, tx, ema_decay)
        metrics = dict(terms, grad_norm=optax.tree.norm(grads), finite=finite)
        return keep_if_finite(finite, new, state), metrics

    def eval_step(params, batch: Batch):
        outputs = nnx.merge(graphdef, params)(batch["ecg"], None)
        w = batch["mask"].astype(jnp.float32)[:, None, None]
        error = (outputs["reconstruction"] - batch["ecg"]) * w
        sums = {"abs_error": jnp.sum(jnp.abs(error)), "squared_error": jnp.sum(error**2),
                "samples": jnp.sum(w) * error.shape[1] * error.shape[2]}
        return sums, jnp.sum(batch["mask"])

    return _jit(train_step, mesh, 1), _jit(eval_step, mesh, 1, donate=False)


# -- stage 2 -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DiffusionStepConfig:
    """latent_scale: multiplies the VAE latent mean into the diffusion latent (unit variance).
    condition_dropout: probability of dropping (text, experience, metadata) per record, for guidance.
    rhythm: give the denoiser the rhythm scaffold of each record's R peaks (`signal.phase.rhythm_features`);
    rhythm_dropout: the probability of replacing it by the all-zero "no scaffold" input. amplitudes: give the
    denoiser each record's lead amplitudes (the batch's `amplitudes`, (b, 12) mV, NaN unknown); amplitude_dropout:
    the probability of replacing them by "unknown". Like the scaffold they are kept in both branches of guidance."""

    latent_scale: float = 1.0
    condition_dropout: tuple[float, float, float] = (0.1, 0.1, 0.1)
    rhythm: bool = False
    rhythm_dropout: float = 0.1
    amplitudes: bool = False
    amplitude_dropout: float = 0.1


def make_diffusion_steps(
    graphdef: nnx.GraphDef,
    vae_graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: NoiseSchedule,
    loss_config: DiffusionLossConfig,
    step_config: DiffusionStepConfig,
    wave_table: WaveParams,
    ema_decay: float,
    mesh: Mesh,
) -> tuple[Callable, Callable]:
    """(train_step(state, vae_params, batch) -> (state, metrics), eval_step(params, vae_params, batch, key)).

    The VAE is frozen: its parameters are an input (replicated), not a compiled-in constant. batch: ecg
    (b, time, 12) mV (or latent_mean (b, time / downsampling, C), the VAE's encoding from a latent cache), mask, hr_bpm, age, sex, text_tokens (b, Lt, d), text_mask, experience_tokens (b, Le, d),
    experience_mask, class_index (b,) int32 into `wave_table` (leaves (num_classes, 3, 6)), r_peaks
    (b, max_peaks) samples, -1 padded (the rhythm scaffold's source); with `loss_config.repa_weight`, repa_target
    (b, T, d), the frozen teacher's features of each record (`training.repa`); with `step_config.amplitudes`,
    amplitudes (b, 12) mV, NaN unknown (`training.amplitudes`).
    Evaluation reports every simulator energy, also those switched off for training (ablations).
    The simulator terms (L_Euler, L_sim) count only for records whose text and metadata were kept (the model
    was told the class and heart rate); L_interlead counts for every record.
    """
    scale = step_config.latent_scale
    dropout = jnp.asarray(step_config.condition_dropout, jnp.float32)

    def losses(params, vae_params, batch, key, drop_conditions: bool):
        k_t, k_noise, k_drop, k_sim = jax.random.split(key, 4)
        k_rhythm, k_amplitude = jax.random.fold_in(k_drop, 1), jax.random.fold_in(k_drop, 2)
        vae = nnx.merge(vae_graphdef, vae_params)
        if "latent_mean" in batch:  # from a latent cache: the VAE encoded this record once, beforehand
            mean = batch["latent_mean"].astype(jnp.float32)
        else:
            mean, _ = vae.encode(batch["ecg"])
        x0 = jax.lax.stop_gradient(mean) * scale
        b = x0.shape[0]
        t = jax.random.randint(k_t, (b,), 0, schedule.num_steps)
        noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
        if drop_conditions:
            drop = jax.random.uniform(k_drop, (b, 3)) < dropout
        else:
            drop = jnp.zeros((b, 3), bool)
        denoiser = nnx.merge(graphdef, params)
        conditions = Conditions.from_batch(batch)
        if step_config.rhythm:
            features = rhythm_features(batch["r_peaks"], x0.shape[1], vae.config.downsampling,
                                       denoiser.config.rhythm_channels)
            if drop_conditions:
                keep = jax.random.uniform(k_rhythm, (b,)) >= step_config.rhythm_dropout
                features = features * keep[:, None, None].astype(features.dtype)
            conditions = conditions.replace(rhythm=features)
        if step_config.amplitudes:
            amplitudes = batch["amplitudes"].astype(jnp.float32)
            if drop_conditions:
                keep = jax.random.uniform(k_amplitude, (b,)) >= step_config.amplitude_dropout
                amplitudes = jnp.where(keep[:, None], amplitudes, jnp.nan)
            conditions = conditions.replace(amplitudes=amplitudes)
        waves = waves_of_classes(wave_table, batch["class_index"])
        told = ~(drop[:, TEXT] | drop[:, METADATA])
        hr = jnp.where(told, batch["hr_bpm"], jnp.nan)
        aligned = loss_config.repa_weight > 0  # L_REPA: the batch carries the teacher's features, repa_target
        return diffusion_losses(
            lambda x_t, t_: denoiser(x_t, t_, conditions, drop),
            lambda x: vae.beat_decoder(x / scale),
            lambda x: vae.decoder(x / scale),
            schedule, loss_config, x0, t, noise, waves, hr, batch["mask"], k_sim, monitor=not drop_conditions,
            denoise_features=(lambda x_t, t_: denoiser.with_features(x_t, t_, conditions, drop)) if aligned else None,
            align_target=batch["repa_target"] if aligned else None)

    def loss_fn(params, vae_params, batch, key):
        terms = losses(params, vae_params, batch, key, True)
        return terms["total"], terms

    def train_step(state: TrainState, vae_params, batch: Batch):
        key = jax.random.fold_in(state.rng, state.step)
        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, vae_params, batch, key)
        finite = _finite(terms, grads)
        new = apply_gradients(state, grads, tx, ema_decay)
        metrics = dict(terms, grad_norm=optax.tree.norm(grads), finite=finite)
        return keep_if_finite(finite, new, state), metrics

    def eval_step(params, vae_params, key, batch: Batch):
        terms = losses(params, vae_params, batch, key, False)
        return terms, jnp.sum(batch["mask"])

    rep, data = replicated_sharding(mesh), batch_sharding(mesh)
    train = jax.jit(train_step, in_shardings=(rep, rep, data), out_shardings=(rep, rep), donate_argnums=(0,))
    evaluate = jax.jit(eval_step, in_shardings=(rep, rep, rep, data), out_shardings=(rep, rep))
    return train, evaluate


def make_sampling_step(graphdef: nnx.GraphDef, vae_graphdef: nnx.GraphDef, schedule: NoiseSchedule,
                       prediction: str, step_config: DiffusionStepConfig, sampler: SamplerConfig, mesh: Mesh
                       ) -> Callable:
    """sample(params, vae_params, key, batch) -> (generated, reference), each (b, time, 12) mV: ECGs generated
    from the batch's conditions (its text, experience, metadata and, for a scaffold model, its R peaks) with
    `sampler` (an amplitude model is told the batch's own amplitudes), and the batch's own ECG (a latent-cache batch's: the VAE's decoding of its latent mean). What
    training shows of the model at its evaluation steps (`training.evaluators.SampleWriter`)."""
    scale = step_config.latent_scale

    def run(params, vae_params, key, batch: Batch):
        denoiser, vae = nnx.merge(graphdef, params), nnx.merge(vae_graphdef, vae_params)
        if "latent_mean" in batch:
            reference = vae.decoder(batch["latent_mean"].astype(jnp.float32))
        else:
            reference = batch["ecg"]
        b, time = reference.shape[:2]
        shape = (b, time // vae.config.downsampling, vae.config.latent_channels)
        conditions = Conditions.from_batch(batch)
        if step_config.rhythm:
            conditions = conditions.replace(rhythm=rhythm_features(batch["r_peaks"], shape[1],
                                                                   vae.config.downsampling,
                                                                   denoiser.config.rhythm_channels))

        def net(x_t, t, drop):  # x_t stacks 1, 2 or 4 copies of the batch (guidance)
            return denoiser(x_t, t, conditions.tile(x_t.shape[0] // b), drop)

        ecg = vae.decoder(sample(net, schedule, prediction, sampler, shape, key) / scale)
        return (project_to_lead_space(ecg) if sampler.exact_limb_leads else ecg), reference

    rep, data = replicated_sharding(mesh), batch_sharding(mesh)  # (outputs replicated: every host can read them)
    return jax.jit(run, in_shardings=(rep, rep, rep, data), out_shardings=(rep, rep))


def latent_scale_from(encode: Callable[[Any], Array], batches) -> float:
    """1 / std of the VAE latent means over `batches` (host iterable of ECG arrays), as in latent diffusion."""
    values = [jnp.asarray(encode(b)).ravel() for b in batches]
    std = float(jnp.std(jnp.concatenate(values)))
    if not std > 0:
        raise ValueError(f"the VAE latents have std {std}; is the VAE trained?")
    return 1.0 / std
