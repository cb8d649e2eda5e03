"""Samplers of the latent diffusion model: ancestral DDPM (Ho et al. 2020, the paper's) and DDIM (Song et al. 2021),
both on any subsequence of the training timesteps, with classifier-free guidance (Ho & Salimans 2022) and optional
simulator guidance. Pure functions of arrays; the model is a callable.

One reverse step from t to the previous kept timestep s (s = -1 at the end, alpha_bar_{-1} = 1):

    eps    = eps_u + w (eps_c - eps_u)                    guidance scale w (0: unconditional, 1: conditional)
    x0     = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    DDIM:  x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z,
           sigma = eta sqrt((1 - a_s) / (1 - a_t)) sqrt(1 - a_t / a_s)
    DDPM:  x_s ~ q(x_s | x_t, x0), the Gaussian posterior of the forward process (mean mu~, variance beta~)

Guidance that keeps variety (all off by default, each bit-identical to plain CFG when it covers every step):
* guidance interval (Kynkaanniemi et al. 2024): guide only at steps whose noise level sigma(t) = sqrt((1 - a_t) /
  a_t) lies in (low, high]; elsewhere take the conditional eps (one model call). Guidance at the noisiest steps
  pulls every sample toward the class mode; at the cleanest it does little.
* per-group guidance: scales (w_text, w_experience, w_metadata) on a chain of nested conditions, metadata first,
  eps = e_0 + w_meta (e_m - e_0) + w_text (e_mt - e_m) + w_exp (e_mte - e_mt) (one call of 4 x batch); equal
  scales telescope to plain CFG.
* condition annealing (CADS, Sadat et al. 2024; `anneal_condition`, applied by the caller that holds the
  condition embeddings): y <- sqrt(gamma) y + s sqrt(1 - gamma) n, rescaled to y's mean and std (mixed by psi),
  with gamma(t) = 1 below tau1, 0 above tau2 (t as a fraction of the schedule), linear between.

DDIM with eta = 1 is the DDPM ancestral step (same mean, same variance; the tests check this identity), eta = 0
is the deterministic probability-flow sampler. Simulator guidance (off by default) moves x0 down the gradient of a
consistency energy E(x0) (e.g. L_Euler + L_interlead + L_sim of the decoded beat) before the step:
x0 <- x0 - scale * sqrt(1 - a_t) * dE_i/dx0_i per record i, and eps is recomputed from the moved x0 so the step
stays on the same noise level (the nudge fades to zero at the clean end). It back-propagates through the energy (beat decoder, simulator), not through the
denoiser, so it costs one decoder pass per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.diffusion.schedule import NoiseSchedule, predict_epsilon

Array = jax.Array
SAMPLERS = ("ddim", "ddpm")
# Model call: (x_t (n, time, C), t (n,) int32, drop (n, 3) bool) -> output (epsilon or v). With guidance n is twice
# the batch (the conditional copy, then the unconditional one): the model repeats its conditions n // batch times.
Model = Callable[[Array, Array, Array], Array]
INITIAL_NOISE_STREAM = 2**31 - 1  # fold_in index of x_T's noise (step j's noise uses index j)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """kind: 'ddim' or 'ddpm'.  num_steps: reverse steps, 1..T (T: every training timestep).  guidance_scale: w of
    classifier-free guidance (0 unconditional, 1 conditional, > 1 stronger).  guidance_drop: which condition
    groups (text, experience, metadata) the unconditional branch drops, as in training's condition dropout.
    eta: DDIM's noise (0 deterministic, 1 = DDPM).  clip_x0: clip the predicted x0 to +-clip_x0 (latent units;
    None: no clipping; as in Ho et al.'s sampler, which clips x0 to the data range).  simulator_guidance: scale of
    the simulator-energy nudge (0: off).
    guidance_interval: (low, high) noise levels sigma between which guidance applies (None: every step).
    group_scales: (text, experience, metadata) guidance scales on the nested chain (None: `guidance_scale` with
    `guidance_drop`).  cads_noise: CADS noise scale s (0: off); cads_tau: (tau1, tau2) fractions of the schedule;
    cads_psi: CADS rescale mix.  exact_limb_leads: project each decoded ECG's limb leads onto the space where
    Einthoven's and Goldberger's laws hold (`leads.project_to_lead_space`).  lead_amplitudes: 'model' (each
    lead's amplitude as the denoiser draws it) or 'retrieved' (each lead rescaled to the peak-to-peak amplitude of
    one real record drawn from the prompt's retrieved neighbours; `generation.amplitudes`; needs a model trained
    with experience whose profile corpus has lead amplitudes at the model's rate) or 'auto' ('retrieved' where
    that corpus is at hand and experience is not 'off', else 'model').  amplitude_strength: in [0, 1],
    how far 'retrieved' moves each lead's amplitude from the model's a to the retrieved patient's b (to
    a^(1 - s) b^s; 1: all the way).
    The defaults are the recommended setting (`RECOMMENDED`) that the CLIs, the notebook and the README's figures
    use: DDIM-50, eta 1, guidance 2, exact limb leads, x0 clipped to the model's `latent_clip` (3), lead
    amplitudes moved 0.75 of the way (log scale) to a retrieved patient's where the model's corpus has them. eta
    0 misses the heart-rate target and guidance 1 weakens the report's findings; pass eta=0.0 or
    guidance_scale=1.0 for the bare sampler, lead_amplitudes='model' for the denoiser's own amplitudes."""

    kind: str = "ddim"
    num_steps: int = 50
    guidance_scale: float = 2.0
    guidance_drop: tuple[bool, bool, bool] = (True, True, True)
    eta: float = 1.0
    clip_x0: float | None = None
    simulator_guidance: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    group_scales: tuple[float, float, float] | None = None
    cads_noise: float = 0.0
    cads_tau: tuple[float, float] = (0.6, 0.9)
    cads_psi: float = 1.0
    exact_limb_leads: bool = True
    lead_amplitudes: str = "auto"
    amplitude_strength: float = 0.75

    def __post_init__(self):
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler {self.kind!r} is unknown; expected one of {SAMPLERS}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps} must be >= 1")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale={self.guidance_scale} must be a finite number >= 0")
        if not 0 <= self.eta <= 1:  # (False for NaN)
            raise ValueError(f"eta={self.eta} must be in [0, 1]")
        if self.clip_x0 is not None and not self.clip_x0 > 0:
            raise ValueError(f"clip_x0={self.clip_x0} must be > 0 (None: no clipping)")
        if not (math.isfinite(self.simulator_guidance) and self.simulator_guidance >= 0):
            raise ValueError(f"simulator_guidance={self.simulator_guidance} must be a finite number >= 0")
        if len(self.guidance_drop) != 3 or not any(self.guidance_drop):
            raise ValueError(f"guidance_drop={self.guidance_drop} must name 3 groups and drop at least one")
        if self.guidance_interval is not None:
            low, high = self.guidance_interval
            if not (0 <= low < high):  # (False for NaN; high may be inf)
                raise ValueError(f"guidance_interval={self.guidance_interval} must be (low, high) noise levels "
                                 "with 0 <= low < high")
        if self.group_scales is not None and (len(self.group_scales) != 3 or not all(
                math.isfinite(w) and w >= 0 for w in self.group_scales)):
            raise ValueError(f"group_scales={self.group_scales} must be 3 finite numbers >= 0 (text, experience, "
                             "metadata)")
        if not (math.isfinite(self.cads_noise) and self.cads_noise >= 0):
            raise ValueError(f"cads_noise={self.cads_noise} must be a finite number >= 0")
        tau1, tau2 = self.cads_tau
        if not 0 <= tau1 < tau2 <= 1:
            raise ValueError(f"cads_tau={self.cads_tau} must be (tau1, tau2) with 0 <= tau1 < tau2 <= 1")
        if not 0 <= self.cads_psi <= 1:
            raise ValueError(f"cads_psi={self.cads_psi} must be in [0, 1]")
        if self.lead_amplitudes not in LEAD_AMPLITUDE_SOURCES:
            raise ValueError(f"lead_amplitudes={self.lead_amplitudes!r}; expected one of {LEAD_AMPLITUDE_SOURCES}")
        if not 0 <= self.amplitude_strength <= 1:  # (False for NaN)
            raise ValueError(f"amplitude_strength={self.amplitude_strength} must be in [0, 1]")

    @classmethod
    def recommended(cls, **changes) -> "SamplerConfig":
        """The recommended setting (the defaults; `RECOMMENDED`) with `changes`: `SamplerConfig(**changes)`."""
        return cls(**{**RECOMMENDED, **changes})

    def describe(self) -> str:
        """One line for reports, e.g. 'ddim-50, eta 1, guidance text 3 / experience 1 / metadata 1'."""
        parts = [f"{self.kind}-{self.num_steps}"] + ([f"eta {self.eta:g}"] if self.kind == "ddim" else [])
        if self.group_scales is not None:
            parts.append("guidance " + " / ".join(f"{name} {w:g}" for name, w in
                                                  zip(("text", "experience", "metadata"), self.group_scales)))
        else:
            parts.append(f"guidance {self.guidance_scale:g}")
        if self.guidance_interval is not None:
            parts.append(f"guided for sigma in ({self.guidance_interval[0]:g}, {self.guidance_interval[1]:g}]")
        if self.cads_noise:
            parts.append(f"CADS noise {self.cads_noise:g} (tau {self.cads_tau[0]:g}-{self.cads_tau[1]:g})")
        if self.simulator_guidance:
            parts.append(f"simulator guidance {self.simulator_guidance:g}")
        if self.exact_limb_leads:
            parts.append("exact limb leads")
        if self.lead_amplitudes != "model":
            parts.append(("lead amplitudes of a retrieved patient" if self.lead_amplitudes == "retrieved" else
                          "lead amplitudes of a retrieved patient where the corpus has them") + (
                f" (strength {self.amplitude_strength:g})" if self.amplitude_strength != 1 else ""))
        return ", ".join(parts)

    @property
    def guided(self) -> bool:
        """Whether any step calls the model more than once (classifier-free or per-group guidance)."""
        return self.group_scales is not None or self.guidance_scale != 1.0


# Where a generated ECG's lead amplitudes come from (SamplerConfig.lead_amplitudes).
LEAD_AMPLITUDE_SOURCES = ("model", "retrieved", "auto")

# What `SamplerConfig.recommended()` sets (and the generating CLIs' flags default to).
RECOMMENDED = {"kind": "ddim", "num_steps": 50, "eta": 1.0, "guidance_scale": 2.0, "exact_limb_leads": True,
               "lead_amplitudes": "auto", "amplitude_strength": 0.75}


def sampling_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """The kept timesteps, descending from T-1 to 0, evenly spaced: (num_steps,) int32."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps={num_steps} must be in [1, {num_train_steps}] (the schedule's length)")
    if num_steps == 1:
        return np.array([num_train_steps - 1], np.int32)
    return np.unique(np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32))[::-1].copy()


def guided_epsilon(model: Model, schedule: NoiseSchedule, prediction: str, x_t: Array, t: Array,
                   scale: float, drop: tuple[bool, bool, bool] = (True, True, True)) -> Array:
    """eps_u + scale (eps_c - eps_u), one batched model call of 2 x batch (one call when scale is 0 or 1)."""
    b = x_t.shape[0]
    keep = jnp.zeros((b, 3), bool)
    dropped = jnp.broadcast_to(jnp.asarray(drop, bool), (b, 3))
    if scale == 1.0:
        return predict_epsilon(schedule, prediction, x_t, model(x_t, t, keep), t)
    if scale == 0.0:
        return predict_epsilon(schedule, prediction, x_t, model(x_t, t, dropped), t)
    both = model(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), jnp.concatenate([keep, dropped]))
    eps_c, eps_u = jnp.split(predict_epsilon(schedule, prediction, jnp.concatenate([x_t, x_t]), both,
                                             jnp.concatenate([t, t])), 2)
    return eps_u + scale * (eps_c - eps_u)


# The nested condition chain of per-group guidance: drop patterns (text, experience, metadata), least first.
GROUP_CHAIN = ((True, True, True), (True, True, False), (False, True, False), (False, False, False))


def group_coefficients(scales: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """The weights of (e_0, e_m, e_mt, e_all) in per-group guidance, summing to 1: e_0 + w_meta (e_m - e_0) +
    w_text (e_mt - e_m) + w_exp (e_all - e_mt) regrouped."""
    w_text, w_exp, w_meta = scales
    return 1.0 - w_meta, w_meta - w_text, w_text - w_exp, w_exp


def group_guided_epsilon(model: Model, schedule: NoiseSchedule, prediction: str, x_t: Array, t: Array,
                         scales: tuple[float, float, float]) -> Array:
    """Per-group guidance: e_0 + w_meta (e_m - e_0) + w_text (e_mt - e_m) + w_exp (e_all - e_mt), one model call
    over the chain members whose weight (`group_coefficients`) is not zero (e.g. 3 x batch for (3, 1, 1), whose
    e_0 weight is 0). scales: (w_text, w_experience, w_metadata)."""
    b = x_t.shape[0]
    used = [(c, d) for c, d in zip(group_coefficients(scales), GROUP_CHAIN) if c != 0.0]
    k = len(used)
    drop = jnp.concatenate([jnp.broadcast_to(jnp.asarray(d, bool), (b, 3)) for _, d in used])
    xs, ts = jnp.concatenate([x_t] * k), jnp.concatenate([t] * k)
    eps = jnp.split(predict_epsilon(schedule, prediction, xs, model(xs, ts, drop), ts), k)
    return sum(c * e for (c, _), e in zip(used, eps))


def noise_levels(schedule: NoiseSchedule, timesteps: np.ndarray) -> np.ndarray:
    """sigma(t) = sqrt((1 - a_t) / a_t), the noise-to-signal ratio of each timestep (EDM's noise level)."""
    a = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(timesteps)]
    return np.sqrt((1.0 - a) / a)


def guided_steps(schedule: NoiseSchedule, config: SamplerConfig) -> np.ndarray:
    """(num_steps,) bool: which reverse steps apply guidance (all, unless `config.guidance_interval`)."""
    timesteps = sampling_timesteps(schedule.num_steps, config.num_steps)
    if config.guidance_interval is None:
        return np.ones(len(timesteps), bool)
    low, high = config.guidance_interval
    sigma = noise_levels(schedule, timesteps)
    return (sigma > low) & (sigma <= high)


def cads_gamma(t_fraction: Array, tau: tuple[float, float]) -> Array:
    """CADS's condition weight: 1 for t <= tau1 (clean end), 0 for t >= tau2, linear between."""
    tau1, tau2 = tau
    return jnp.clip((tau2 - t_fraction) / (tau2 - tau1), 0.0, 1.0)


def anneal_condition(y: Array, mask: Array, t_fraction: Array, key: Array, config: SamplerConfig) -> Array:
    """CADS (Sadat et al. 2024) on one record's condition tokens y (m, d) with mask (m,): y mixed with Gaussian
    noise by gamma(t), then rescaled to y's mean and std over the valid tokens (mixed by psi). Identity (bit for
    bit) where gamma is 1 or `config.cads_noise` is 0."""
    gamma = cads_gamma(t_fraction, config.cads_tau)
    noisy = jnp.sqrt(gamma) * y + config.cads_noise * jnp.sqrt(1.0 - gamma) * jax.random.normal(key, y.shape,
                                                                                                 y.dtype)
    weight = mask.astype(y.dtype)[:, None]
    count = jnp.maximum(jnp.sum(weight) * y.shape[1], 1.0)

    def moments(v):
        mean = jnp.sum(v * weight) / count
        return mean, jnp.sqrt(jnp.sum(((v - mean) * weight) ** 2) / count) + 1e-6

    (m0, s0), (m1, s1) = moments(y), moments(noisy)
    rescaled = (noisy - m1) / s1 * s0 + m0
    mixed = config.cads_psi * rescaled + (1.0 - config.cads_psi) * noisy
    return jnp.where((gamma >= 1.0) | (config.cads_noise == 0.0), y, mixed)


def _alpha_bar(schedule: NoiseSchedule, t: Array) -> Array:
    """alpha_bar at t, with alpha_bar(-1) = 1 (the clean end)."""
    table = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    return jnp.where(t >= 0, table[jnp.maximum(t, 0)], 1.0)


def reverse_step(schedule: NoiseSchedule, config: SamplerConfig, x_t: Array, eps: Array, t: Array, t_prev: Array,
                 noise: Array, energy: Callable[[Array], Array] | None = None) -> tuple[Array, Array]:
    """(x_{t_prev}, x0) from x_t and the (guided) eps. t, t_prev: scalars (t_prev = -1: the last step)."""
    a_t, a_s = _alpha_bar(schedule, t), _alpha_bar(schedule, t_prev)
    x0 = (x_t - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    if config.clip_x0 is not None:
        x0 = jnp.clip(x0, -config.clip_x0, config.clip_x0)
    if energy is not None and config.simulator_guidance > 0:
        grad = jax.grad(lambda x: jnp.sum(energy(x)))(x0)
        x0 = x0 - config.simulator_guidance * jnp.sqrt(1.0 - a_t) * grad
    if energy is not None or config.clip_x0 is not None:
        eps = (x_t - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    if config.kind == "ddpm":
        alpha = a_t / a_s  # of the (respaced) step t -> t_prev
        beta = 1.0 - alpha
        mean = (jnp.sqrt(a_s) * beta / (1.0 - a_t)) * x0 + (jnp.sqrt(alpha) * (1.0 - a_s) / (1.0 - a_t)) * x_t
        sigma = jnp.sqrt(beta * (1.0 - a_s) / (1.0 - a_t))
        return mean + sigma * noise, x0
    sigma = config.eta * jnp.sqrt((1.0 - a_s) / (1.0 - a_t)) * jnp.sqrt(jnp.maximum(1.0 - a_t / a_s, 0.0))
    direction = jnp.sqrt(jnp.maximum(1.0 - a_s - sigma**2, 0.0)) * eps
    return jnp.sqrt(a_s) * x0 + direction + sigma * noise, x0


def record_keys(key: Array, batch: int) -> Array:
    """(batch,) keys, one per record, from one sampling key."""
    return jax.random.split(key, batch)


def initial_latents(keys: Array, shape: tuple[int, ...]) -> Array:
    """x_T ~ N(0, I): (batch, ...) from the records' keys (batch,); the step noise uses fold_in(key, step)."""
    draw = lambda k: jax.random.normal(jax.random.fold_in(k, INITIAL_NOISE_STREAM), shape[1:], jnp.float32)  # noqa: E731
    return jax.vmap(draw)(keys)


def denoise_steps(model: Model, schedule: NoiseSchedule, prediction: str, config: SamplerConfig, x: Array,
                  keys: Array, first: Array | int = 0, count: int | None = None,
                  energy: Callable[[Array], Array] | None = None) -> Array:
    """Reverse steps `first` .. `first + count - 1` of the `config.num_steps` (count None: to the end), traceable
    (a `fori_loop`; jit it with the model's parameters and conditions as arguments). keys: (batch,), one per
    record: record i's noise at step j is drawn from fold_in(keys[i], j), so a record's sample depends only on
    its key and conditions, not on the batch it shares, how the batch is sharded, or how the steps are split
    into calls."""
    timesteps = sampling_timesteps(schedule.num_steps, config.num_steps)
    table = jnp.asarray(np.concatenate([timesteps, [-1]]), jnp.int32)
    count = len(timesteps) - int(first) if count is None else count
    guide = energy if config.simulator_guidance > 0 else None
    guided = guided_steps(schedule, config)

    def guided_eps(x, t):
        if config.group_scales is not None:
            return group_guided_epsilon(model, schedule, prediction, x, t, config.group_scales)
        return guided_epsilon(model, schedule, prediction, x, t, config.guidance_scale, config.guidance_drop)

    def conditional_eps(x, t):
        return guided_epsilon(model, schedule, prediction, x, t, 1.0)

    def body(i, x):
        index = first + i
        t, t_prev = table[index], table[index + 1]
        ts = jnp.full((x.shape[0],), t, jnp.int32)
        if guided.all() or not config.guided:
            eps = guided_eps(x, ts)
        elif not guided.any():
            eps = conditional_eps(x, ts)
        else:  # guidance within an interval of noise levels: the other steps call the model once
            eps = jax.lax.cond(jnp.asarray(guided)[index], guided_eps, conditional_eps, x, ts)
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, index), x.shape[1:], jnp.float32))(keys)
        return reverse_step(schedule, config, x, eps, t, t_prev, noise, guide)[0]

    return jax.lax.fori_loop(0, count, body, x)


def sample(model: Model, schedule: NoiseSchedule, prediction: str, config: SamplerConfig, shape: tuple[int, ...],
           key: Array, energy: Callable[[Array], Array] | None = None) -> Array:
    """Latents x0, `shape` = (batch, time, C) float32, from pure noise by `config.num_steps` reverse steps.

    model(x_t, t, drop) closes over the conditions; energy(x0) -> (batch,) is the simulator-guidance energy (used
    when config.simulator_guidance > 0). Traceable; deterministic for a key (record i uses record_keys(key)[i]).
    """
    keys = record_keys(key, shape[0])
    return denoise_steps(model, schedule, prediction, config, initial_latents(keys, shape), keys, energy=energy)
