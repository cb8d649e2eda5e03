"""SE-Diff's stage-2 loss (pure function): L_DDPM + lambda L_Euler + gamma L_interlead + mu L_sim.

The simulator terms judge the beat that the frozen beat decoder makes of the denoiser's x0-prediction, so their
gradient reaches the denoiser through the x0-prediction (the paper's release computes them under no_grad). Each
record's simulator terms are weighted by its noise level, w(t) = alpha_bar_t ** power (1 at t = 0, ~0 at pure
noise), so they act where x0 is meaningful. A term whose weight is 0 is not computed at all (exactly zero, no
cost), which is how the ablations switch them off.

The simulator terms are estimated on a random `sim_fraction` of the batch's real records (a static-size
subset, so shapes stay fixed under jit), like a smaller minibatch: the expected energy is unchanged, and a half
halves the cost of the beat decoding, the decoded window and the diffrax solve. (Taking the least noisy half
instead would starve the gradient: with epsilon prediction dx0_hat/d(output) = sqrt((1 - alpha_bar) / alpha_bar),
so a record's gradient weight is ~sqrt(alpha_bar (1 - alpha_bar)), largest at mid noise, ~0 at t = 0.)

Optional, beside them: L_REPA (`repa_weight`, Yu et al. 2024), the denoiser's projected middle features aligned
with a frozen ECG encoder's features of the clean record (`alignment_loss`), at every noise level.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from sediff_jax.diffusion.schedule import NoiseSchedule, add_noise, predict_x0, target
from sediff_jax.simulator.consistency import BeatSolve, interlead_energy, simulator_energies
from sediff_jax.simulator.params import WaveParams

Array = jax.Array
WEIGHTINGS = ("alpha_bar", "none")
DDPM_WEIGHTINGS = ("uniform", "min_snr")


@dataclasses.dataclass(frozen=True)
class DiffusionLossConfig:
    """prediction: 'epsilon' or 'v'.  fs: Hz of the decoded ECG.  beat_before_s: R position in the decoded
    beat, s.  euler_weight (lambda), interlead_weight (gamma), sim_weight (mu): term weights, 0 switches a term
    off.  interlead_full_signal: also apply L_interlead to the full decoded 10 s ECG (one decoder pass).
    weighting: 'alpha_bar' (w = alpha_bar_t ** weighting_power) or 'none' (w = 1).  sim_fraction: the fraction of
    the batch (a random subset of the real records) on which the simulator terms are computed; 1 = all.
    sim_solver, sim_internal_fs: how L_sim simulates its beat (`consistency.BeatSolve`): diffrax Heun at 500 Hz
    (default), Tsit5 with larger steps, or 'closed_form' (the exact solution, no sequential loop).
    ddpm_weighting: how L_DDPM weighs noise levels: 'uniform' (Ho et al.) or 'min_snr' (Hang et al. 2023:
    min(SNR, gamma) / SNR for epsilon prediction, min(SNR, gamma) / (SNR + 1) for v, i.e. the x0 error weighted
    by min(SNR, gamma), so the easy low-noise steps stop dominating).  min_snr_gamma: gamma (5 in the paper).
    repa_weight: weight of L_REPA (`alignment_loss`: the denoiser's projected middle features against a frozen
    ECG encoder's features of the clean record; Yu et al. 2024 use 0.5); 0 = off."""

    prediction: str = "epsilon"
    fs: float = 100.0
    beat_before_s: float = 0.2
    euler_weight: float = 0.05
    interlead_weight: float = 0.05
    sim_weight: float = 0.05
    interlead_full_signal: bool = True
    interlead_crop: float = 0.25
    weighting: str = "alpha_bar"
    weighting_power: float = 1.0
    sim_fraction: float = 0.5
    sim_solver: str = "heun"
    sim_internal_fs: float = 500.0
    ddpm_weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    repa_weight: float = 0.0

    def __post_init__(self):
        BeatSolve(self.sim_solver, self.sim_internal_fs)  # checks both
        if self.ddpm_weighting not in DDPM_WEIGHTINGS:
            raise ValueError(f"ddpm_weighting {self.ddpm_weighting!r} is unknown; expected one of {DDPM_WEIGHTINGS}")
        if not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma={self.min_snr_gamma} must be a finite number > 0")
        if not (math.isfinite(self.repa_weight) and self.repa_weight >= 0):
            raise ValueError(f"repa_weight={self.repa_weight} must be a finite number >= 0")
        if not 0 < self.sim_fraction <= 1:
            raise ValueError(f"sim_fraction={self.sim_fraction} must be in (0, 1]")
        if not 0 < self.interlead_crop <= 1:
            raise ValueError(f"interlead_crop={self.interlead_crop} must be in (0, 1]")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r} is unknown; expected one of {WEIGHTINGS}")
        for name in ("euler_weight", "interlead_weight", "sim_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")

    @property
    def uses_simulator(self) -> bool:
        return self.euler_weight > 0 or self.interlead_weight > 0 or self.sim_weight > 0

    @property
    def beat_before(self) -> int:
        return int(round(self.beat_before_s * self.fs))


def noise_level_weight(schedule: NoiseSchedule, t: Array, config: DiffusionLossConfig) -> Array:
    """w(t): (batch,) in [0, 1]."""
    if config.weighting == "none":
        return jnp.ones(t.shape, jnp.float32)
    signal, _ = schedule.signal_and_noise(t)
    return (signal**2) ** config.weighting_power


def ddpm_weight(schedule: NoiseSchedule, t: Array, config: DiffusionLossConfig) -> Array:
    """L_DDPM's per-record weight over noise levels: (batch,) (`DiffusionLossConfig.ddpm_weighting`)."""
    if config.ddpm_weighting == "uniform":
        return jnp.ones(t.shape, jnp.float32)
    snr = schedule.snr(t)
    clipped = jnp.minimum(snr, config.min_snr_gamma)
    return clipped / (snr + 1.0) if config.prediction == "v" else clipped / snr


# The simulator rows are drawn within consecutive blocks of this many records, so a data shard whose local batch
# is a multiple of it draws only its own records: the gather stays on each device. (Drawn over the whole global
# batch, XLA replicated the simulator terms of every drawn row on every chip: 14.5x the FLOPs per chip on 256
# v5e chips, `make tpu-compile`.)
SIM_ROW_BLOCK = 8


def simulator_rows(weight: Array, fraction: float, key: Array | None, block: int = SIM_ROW_BLOCK) -> Array:
    """Indices of ceil(fraction * b) records of every block of b = gcd(batch, block) consecutive records for the
    simulator terms: (batch,) -> (k,) int32, block by block. Within a block, records with weight > 0 (real, not
    padding) come first, in a random order drawn from `key` (None: by index)."""
    size = weight.shape[0]
    block = math.gcd(size, block)
    per_block = max(1, math.ceil(fraction * block - 1e-9))
    if per_block >= block:
        return jnp.arange(size, dtype=jnp.int32)
    tiebreak = jnp.zeros(size) if key is None else jax.random.uniform(key, (size,))
    score = (weight > 0).astype(jnp.float32) * 2.0 - tiebreak  # real rows in (1, 2], padding in (-1, 0]
    local = jax.lax.top_k(score.reshape(size // block, block), per_block)[1]
    return (local + block * jnp.arange(size // block)[:, None]).reshape(-1).astype(jnp.int32)


def take_rows(x: Array, rows: Array, batch: int) -> Array:
    """x[rows] for `simulator_rows` of a batch of `batch` records, as a gather within each block (so a sharded
    leading axis stays sharded, with no communication)."""
    block = math.gcd(batch, SIM_ROW_BLOCK)
    blocks = batch // block
    if rows.shape[0] == batch:
        return x
    local = (rows.reshape(blocks, -1) % block)
    grouped = x.reshape((blocks, block) + x.shape[1:])
    index = local.reshape(local.shape + (1,) * (x.ndim - 1))
    return jnp.take_along_axis(grouped, index, axis=1).reshape((-1,) + x.shape[1:])


def alignment_loss(features: Array, target: Array) -> Array:
    """REPA's term per record: 1 - the cosine similarity of `features` (batch, T, d) and `target` (batch, T', d)
    at each time step, averaged over time (batch,); the target is resampled linearly to T steps when T' != T
    (both span the same record)."""
    if target.shape[1] != features.shape[1]:
        target = jax.image.resize(target, (target.shape[0], features.shape[1], target.shape[2]), "linear")
    f = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-6)
    g = target / jnp.maximum(jnp.linalg.norm(target, axis=-1, keepdims=True), 1e-6)
    return 1.0 - jnp.mean(jnp.sum(f * g, axis=-1), axis=1)


def _mean(x: Array, w: Array) -> Array:
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-12)


def diffusion_losses(
    denoise: Callable[[Array, Array], Array],
    decode_beat: Callable[[Array], Array],
    decode_signal: Callable[[Array], Array] | None,
    schedule: NoiseSchedule,
    config: DiffusionLossConfig,
    x0: Array,
    t: Array,
    noise: Array,
    waves: WaveParams,
    hr_bpm: Array,
    weight: Array,
    key: Array | None = None,
    monitor: bool = False,
    denoise_features: Callable[[Array, Array], tuple[Array, Array]] | None = None,
    align_target: Array | None = None,
) -> dict[str, Array]:
    """All stage-2 terms as scalars (batch means weighted by `weight`) and their weighted sum, 'total'.

    denoise(x_t, t) -> prediction (batch, time, C), with its conditions closed over.  decode_beat(x0) -> beat
    (batch, samples, 12) mV with R at `config.beat_before`; decode_signal(x0) -> (batch, time, 12) mV (used when
    `interlead_full_signal`).  x0, noise: (batch, time, C) scaled latents.  t: (batch,) int.  waves: the class
    priors' waves, leaves (batch, 3, 6).  hr_bpm: (batch,) heart rate of the simulator terms (NaN: unknown,
    that record gets no L_Euler / L_sim).  weight: (batch,) e.g. the loader's mask.  key: draws the simulator
    rows, a random `config.sim_fraction` of the real records (`simulator_rows`), and the decoded window of
    `interlead_crop` (None: the first rows, the start).  monitor: also compute the terms whose weight is 0 (for
    evaluation, so that ablations report every energy); they do not enter 'total'.  With `config.repa_weight`:
    denoise_features(x_t, t) -> (the prediction, projected middle features (batch, T, d)), used instead of
    `denoise`, and align_target (batch, T', d), the frozen encoder's features of each clean record (L_REPA).
    """
    weight = weight.astype(jnp.float32)
    x_t = add_noise(schedule, x0, noise, t)
    terms = {}
    if config.repa_weight > 0:
        if denoise_features is None or align_target is None:
            raise ValueError("repa_weight > 0 needs denoise_features and align_target")
        output, features = denoise_features(x_t, t)
        terms["repa"] = _mean(alignment_loss(features, align_target.astype(jnp.float32)), weight)
    else:
        output = denoise(x_t, t)
    ddpm = jnp.mean((output - target(schedule, config.prediction, x0, noise, t)) ** 2, axis=(1, 2))
    if config.ddpm_weighting != "uniform":  # (the plain error stays visible, comparable across weightings)
        terms["ddpm_unweighted"] = _mean(ddpm, weight)
        ddpm = ddpm * ddpm_weight(schedule, t, config)
    terms["ddpm"] = _mean(ddpm, weight)
    total = terms["ddpm"] + (config.repa_weight * terms["repa"] if "repa" in terms else 0.0)
    if config.uses_simulator or monitor:
        x0_hat = predict_x0(schedule, config.prediction, x_t, output, t)
        w = noise_level_weight(schedule, t, config) * weight
        key_rows, key_crop = (None, None) if key is None else jax.random.split(key)
        rows = simulator_rows(weight, config.sim_fraction, key_rows)
        size = weight.shape[0]
        x0_hat, w, hr_bpm = (take_rows(a, rows, size) for a in (x0_hat, w, hr_bpm))
        waves = jax.tree.map(lambda leaf: take_rows(leaf, rows, size), waves)
        beat = decode_beat(x0_hat)
        w_hr = w * jnp.isfinite(hr_bpm).astype(jnp.float32)  # no heart rate: no L_Euler / L_sim
        wanted = tuple(name for name in ("euler", "interlead", "sim")
                       if getattr(config, f"{name}_weight") > 0 or monitor)
        energies = simulator_energies(beat, config.fs, config.beat_before, waves, hr_bpm, wanted,
                                      BeatSolve(config.sim_solver, config.sim_internal_fs))
        if "euler" in energies:
            terms["euler"] = _mean(energies["euler"], w_hr)
            total = total + config.euler_weight * terms["euler"] if config.euler_weight > 0 else total
        if "interlead" in energies:
            energy = energies["interlead"]
            if config.interlead_full_signal:
                if decode_signal is None:
                    raise ValueError("interlead_full_signal needs decode_signal")
                length = x0_hat.shape[1]
                window = max(1, int(round(config.interlead_crop * length)))
                start = 0 if key_crop is None else jax.random.randint(key_crop, (), 0, length - window + 1)
                crop = jax.lax.dynamic_slice_in_dim(x0_hat, start, window, axis=1)
                energy = energy + interlead_energy(decode_signal(crop), config.fs)
            terms["interlead"] = _mean(energy, w)
            total = total + config.interlead_weight * terms["interlead"] if config.interlead_weight > 0 else total
        if "sim" in energies:
            terms["sim"] = _mean(energies["sim"], w_hr)
            total = total + config.sim_weight * terms["sim"] if config.sim_weight > 0 else total
    terms["total"] = total
    return terms
