"""The training config schema: every key a training config has, with its default, in one ConfigDict.

`base_config()` is the schema (named configs in experiments/configs start from it); `resolve(config)` checks a
config against it and fills what it leaves out, so the trainer reads every key directly (no `.get` fallbacks).
Ablation variants (`apply_variant`) switch SE-Diff's loss terms: full (default), no_simulator (L_Euler and L_sim
off), no_euler, no_sim_solve (L_sim off), no_interlead, ddpm_only (every simulator term off), no_experience
(experience tokens off: `experience.dir` cleared, the paper's "w/o Exp"); min_snr (L_DDPM weighted by min-SNR-5,
Hang et al. 2023); v_prediction (the denoiser predicts v = sqrt(abar) eps - sqrt(1 - abar) x0, Salimans & Ho
2022, instead of eps); oversample_rare (each record drawn (2000 / records with its rarest code) ** 0.5 times an
epoch, at most 4: `data.sampling`); repa (L_REPA at weight 0.5 onto the shipped ECG-CLIP's features; better: another teacher,
`--config.diffusion.repa_teacher`); wide (channels 96/192/192) and deep (a fourth level of 128) for the
width and depth ablation; scaffold / paper: with / without the
rhythm scaffold (the cardiac phase of each record's R peaks as denoiser input, on by default; `paper` is SE-Diff
as published); amplitudes (the denoiser told each record's lead amplitudes, from the experience corpus).

`check_config` (run by `resolve`) knows each key's type and range (`RULES`): enums, positive counts and steps,
rates and durations within physical limits, worker counts within the machine, model widths within a memory bound,
and the few settings that must agree with each other. A bad value, `--config.*` overrides included, is a
`ConfigError` naming the key, before any workdir is touched.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import ml_collections

from sediff_jax.data.sources import DATASETS
from sediff_jax.diffusion.losses import DDPM_WEIGHTINGS, WEIGHTINGS
from sediff_jax.diffusion.schedule import PREDICTIONS, SCHEDULES
from sediff_jax.errors import SediffError
from sediff_jax.simulator.consistency import BEAT_SOLVERS
from sediff_jax.text.encoders import ENCODERS

VARIANTS = {
    "full": {},
    "no_simulator": {"euler_weight": 0.0, "sim_weight": 0.0},
    "no_euler": {"euler_weight": 0.0},
    "no_sim_solve": {"sim_weight": 0.0},
    "no_interlead": {"interlead_weight": 0.0},
    "ddpm_only": {"euler_weight": 0.0, "sim_weight": 0.0, "interlead_weight": 0.0},
    "no_experience": {"experience.dir": ""},
    "scaffold": {"diffusion.model.rhythm_channels": 3},
    "ectopic": {"diffusion.model.rhythm_channels": 4},
    "paper": {"diffusion.model.rhythm_channels": 0},
    "min_snr": {"ddpm_weighting": "min_snr"},
    "v_prediction": {"prediction": "v"},
    "oversample_rare": {"diffusion.training.oversample_power": 0.5, "diffusion.training.oversample_reference": 2000},
    "repa": {"repa_weight": 0.5, "diffusion.model.repa_dim": 128, "diffusion.repa_teacher": "shipped"},
    "wide": {"diffusion.model.channels": (96, 192, 192),  # 1.69x the step's FLOPs
             "diffusion.model.attention": (False, True, True)},
    "amplitudes": {"diffusion.model.amplitude_leads": 12},
    "deep": {"diffusion.model.channels": (64, 128, 128, 128),  # a fourth level: 1.17x the FLOPs
             "diffusion.model.attention": (False, True, True, True)},
}


def training(batch_size: int, num_steps: int, log_every: int = 10, eval_every: int = 100,
             checkpoint_every: int = 100, max_eval_batches: int = 8) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        batch_size=batch_size, num_steps=num_steps, log_every=log_every, eval_every=eval_every,
        checkpoint_every=checkpoint_every, max_to_keep=3, max_eval_batches=max_eval_batches, tensorboard=True,
        progress_bar=True, halt_at_step=0,  # halt_at_step: stop there with a checkpoint, as if preempted
        max_minutes=0.0,  # > 0: stop with a checkpoint once this many minutes of steps have run (a time-boxed burst)
        # stage 2: ECGs generated at each evaluation from the first validation records' conditions (DDIM steps)
        eval_samples=0, eval_sample_steps=25,
        # rare-finding oversampling (`data.sampling.rare_code_weights`): each training record is drawn
        # (oversample_reference / records with its rarest code) ** oversample_power times per epoch, clipped to
        # [1, oversample_max]; power 0 draws every record once. oversample_codes ("STE_,AMI"): only these codes
        # are oversampled (empty: every code).
        oversample_power=0.0, oversample_reference=500, oversample_max=4.0, oversample_codes=""))


def optimizer(learning_rate: float, warmup_steps: int = 100, ema_decay: float = 0.999,
              weight_decay: float = 0.0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        learning_rate=learning_rate, warmup_steps=warmup_steps, final_lr_fraction=0.1, weight_decay=weight_decay,
        b1=0.9, b2=0.999, grad_clip_norm=1.0, ema_decay=ema_decay))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "both"
    c.seed = 0
    # Compute precision of both models: "float32", or "bfloat16" (mixed precision for GPUs/TPUs: parameters,
    # optimiser, losses, simulator and ODE solve stay float32; checkpoints are the same either way).
    c.precision = "float32"
    c.data = ml_collections.ConfigDict(dict(
        dataset="synthetic", source_dir="", prepared_dir="", prepare_if_missing=True, fs=100.0, duration_s=10.0,
        highpass_hz=None, num_synthetic=200, synthetic_seed=0, num_workers=1, train_split="train",
        eval_split="validation", test_split="test", prefetch=2, loader_workers=0))
    # loader_workers: grain processes that read and assemble batches (0: `prefetch` threads in the trainer).
    # cache_dir: where stage 2 keeps the text and experience encodings (text_cache_<encoder>.npz,
    # experience_cache_<encoder>.npz); "" is the workdir. Runs over the same texts may share one (the ablation does).
    c.text = ml_collections.ConfigDict(dict(encoder="minilm", max_length=64, cache_dir=""))
    # Retrieved experience (experiments/build_experience.py output); "" trains without (the "w/o Exp" ablation).
    c.experience = ml_collections.ConfigDict(dict(dir="", max_tokens=128))

    c.vae = ml_collections.ConfigDict()
    c.vae.model = ml_collections.ConfigDict(dict(
        latent_channels=4, channels=(32, 64, 128), kernel_size=7, num_groups=8, beat_hidden=128))
    c.vae.loss = ml_collections.ConfigDict(dict(
        beat_before_s=0.2, beat_after_s=0.4, beta_kl=1e-4, beat_weight=1.0, spec_weight=0.1))
    c.vae.optimizer = optimizer(1e-3, warmup_steps=100, ema_decay=0.99)
    c.vae.training = training(batch_size=32, num_steps=2000)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.model = ml_collections.ConfigDict(dict(
        channels=(64, 128, 128), attention=(False, True, True), num_heads=4, time_embed_dim=128, num_groups=8,
        rhythm_channels=3, repa_dim=0, repa_hidden=256, amplitude_leads=0))
    # The rhythm scaffold (rhythm_channels=3: the cardiac phase of the record's R peaks as input channels; 0 is
    # SE-Diff as published, the `paper` variant) is the default because it won on all of PTB-XL: heart-rate error
    # 1.45 vs 10.06 bpm, sinus RR CV 0.031 vs 0.211, FID 0.80 vs 1.09, MAE within one standard error (docs/evaluation.md).
    # It is dropped for this fraction of records, so the model also generates without one. rhythm_channels=4 (the
    # `ectopic` variant) adds a channel marking the latent steps nearest a premature beat (`phase.premature_beats`),
    # so a bigeminy's or a PVC's early beats can take their own shape; a 3-channel model may be fine-tuned into it.
    c.diffusion.rhythm_dropout = 0.1
    # model.amplitude_leads=12 tells the denoiser each record's lead amplitudes (robust peak-to-peak, mV), read from
    # the experience corpus (experience.dir's profiles.npz, built with amplitudes at data.fs); at sampling they come
    # from a retrieved patient. They are replaced by "unknown" for this fraction of records.
    c.diffusion.amplitude_dropout = 0.1
    c.diffusion.schedule = ml_collections.ConfigDict(dict(kind="cosine", num_steps=1000))
    c.diffusion.loss = ml_collections.ConfigDict(dict(
        prediction="epsilon", euler_weight=0.05, interlead_weight=0.05, sim_weight=0.05,
        interlead_full_signal=True, interlead_crop=0.25, weighting="alpha_bar", weighting_power=1.0,
        ddpm_weighting="uniform", min_snr_gamma=5.0, repa_weight=0.0,
        sim_fraction=0.5, sim_solver="heun", sim_internal_fs=500.0))
    c.diffusion.condition_dropout = (0.1, 0.1, 0.1)
    c.diffusion.prior = ""  # a simulator prior: a JSON path, a shipped prior's name, or "" (the default PTB-XL prior)
    c.diffusion.vae_checkpoint = ""  # a VAE stage directory; "" = <workdir>/vae
    c.diffusion.latent_scale_batches = 4
    # Start stage 2 from a trained model's EMA denoiser (an exported model or a training workdir; "" = random
    # initialisation): fine-tuning, e.g. of the shipped model with a new recipe. Its VAE must be this run's.
    c.diffusion.init_from = ""
    # REPA (representation alignment, Yu et al. 2024): loss.repa_weight > 0 regresses the denoiser's middle block,
    # through a projector of model.repa_dim outputs, onto this frozen ECG-CLIP encoder's features of the clean
    # record: a safetensors file from experiments/train_clip.py, or "shipped" (the evaluation's own ECG-CLIP, whose
    # space FID and recall are measured in: train another, e.g. train_clip --seed=1, for an unbiased comparison).
    c.diffusion.repa_teacher = ""
    # Train from a latent cache (every record encoded once by the frozen VAE, `sediff_jax.data.latents`): "" encodes
    # each batch in the step; "auto" builds (once) and uses the cache beside the prepared dataset; or a cache
    # directory (`python -m experiments.encode_latents`). latent_cache_dtype: how "auto" stores the latents.
    c.diffusion.latent_cache = ""
    c.diffusion.latent_cache_dtype = "float16"
    c.diffusion.optimizer = optimizer(2e-4, warmup_steps=200, ema_decay=0.999)
    c.diffusion.training = training(batch_size=32, num_steps=5000)
    c.variant = "full"
    return c


def apply_variant(config: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    variant = variant or "full"
    if variant not in VARIANTS:
        raise ValueError(f"config variant {variant!r} is unknown; expected one of {', '.join(VARIANTS)}")
    config.variant = variant
    for key, value in VARIANTS[variant].items():
        *groups, name = key.split(".") if "." in key else ("diffusion", "loss", key)
        target = config
        for group in groups:
            target = target[group]
        target[name] = value
    return config


def _merge(into: ml_collections.ConfigDict, values: Any, prefix: str) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in into:
            raise ValueError(f"config key {name!r} is unknown; the schema is sediff_jax.training.config.base_config()")
        if isinstance(into[key], ml_collections.ConfigDict):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ValueError(f"config key {name!r} must be a group of settings, got {value!r}")
            _merge(into[key], value, name + ".")
        else:
            with into.ignore_type():
                into[key] = value


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` checked against `base_config()` (an unknown key is a ValueError naming it) with every key it
    leaves out set to its default, and every value checked (`check_config`); returns a new ConfigDict."""
    resolved = base_config()
    _merge(resolved, config, "")
    check_config(resolved)
    return resolved


def resolve_training(group: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A stage's `training` group with the keys it leaves out at their defaults (the loop's view of it)."""
    resolved = training(batch_size=0, num_steps=0)
    _merge(resolved, group, "training.")
    return resolved


class ConfigError(SediffError, ValueError):
    """A training config value of the wrong type or out of range: the message names the key."""


PRECISIONS = ("float32", "bfloat16")
STAGES = ("vae", "diffusion", "both")
MAX_WORKERS = 4 * (os.cpu_count() or 1)
MAX_WIDTH = 2048  # channels, hidden and embedding sizes: a bound that keeps a model within tens of GB
Check = Callable[[Any], "str | None"]  # the problem with a value, or None


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
            none_ok: bool = False) -> Check:
    def check(value):
        if value is None and none_ok:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return f"must be {'a number' if kind is float else 'an integer'}"
        if not math.isfinite(value):
            return "must be finite"
        if low is not None and (value <= low if low_open else value < low):
            return f"must be {'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        if high is not None and value > high:
            return f"must be <= {high:g}"
        return None
    return check


def _enum(values) -> Check:
    return lambda v: None if v in tuple(values) else f"must be one of {', '.join(map(str, values))}"


def _flag(value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _text(value) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _model_path(value) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    return None if not value or os.path.exists(value) else "is not an existing model (an exported model or a workdir)"


def _sequence(item: Check, length: int | None = None, min_length: int = 1) -> Check:
    def check(value):
        if not isinstance(value, (tuple, list)):
            return "must be a list"
        if length is not None and len(value) != length:
            return f"must have {length} entries"
        if len(value) < min_length:
            return f"must have at least {min_length} entries"
        for v in value:
            problem = item(v)
            if problem:
                return f"entry {v!r} {problem}"
        return None
    return check


_COUNT = _number(int, 1)
_WIDTH = _number(int, 1, MAX_WIDTH)
_WEIGHT = _number(float, 0)
_FRACTION = _number(float, 0, 1)


def _optimizer_rules(prefix: str) -> dict[str, Check]:
    return {f"{prefix}.learning_rate": _number(float, 0, 1, low_open=True), f"{prefix}.warmup_steps": _number(int, 0),
            f"{prefix}.final_lr_fraction": _FRACTION, f"{prefix}.weight_decay": _WEIGHT,
            f"{prefix}.b1": _number(float, 0, 0.9999999), f"{prefix}.b2": _number(float, 0, 0.9999999),
            f"{prefix}.grad_clip_norm": _WEIGHT, f"{prefix}.ema_decay": _number(float, 0, 0.9999999)}


def _training_rules(prefix: str) -> dict[str, Check]:
    return {f"{prefix}.batch_size": _number(int, 1, 1 << 20), f"{prefix}.num_steps": _COUNT,
            f"{prefix}.log_every": _COUNT, f"{prefix}.eval_every": _COUNT, f"{prefix}.checkpoint_every": _COUNT,
            f"{prefix}.max_to_keep": _COUNT, f"{prefix}.max_eval_batches": _COUNT, f"{prefix}.tensorboard": _flag,
            f"{prefix}.progress_bar": _flag, f"{prefix}.halt_at_step": _number(int, 0),
            f"{prefix}.max_minutes": _number(float, 0, 10_000), f"{prefix}.eval_samples": _number(int, 0, 64), f"{prefix}.eval_sample_steps": _number(int, 1, 1000),
            f"{prefix}.oversample_power": _number(float, 0, 4), f"{prefix}.oversample_reference": _number(int, 1),
            f"{prefix}.oversample_max": _number(float, 1, 100), f"{prefix}.oversample_codes": _text}


# dotted key -> its check; every leaf of base_config() has one (tests/training/test_config_schema.py).
RULES: dict[str, Check] = {
    "stage": _enum(STAGES), "seed": _number(int, 0, 2**32 - 1), "precision": _enum(PRECISIONS), "variant": _text,
    "data.dataset": _enum(DATASETS), "data.source_dir": _text, "data.prepared_dir": _text,
    "data.prepare_if_missing": _flag, "data.fs": _number(float, 50, 2000), "data.duration_s": _number(float, 1, 60),
    "data.highpass_hz": _number(float, 0, 40, low_open=True, none_ok=True), "data.num_synthetic": _COUNT,
    "data.synthetic_seed": _number(int, 0), "data.num_workers": _number(int, 1, MAX_WORKERS),
    "data.train_split": _text, "data.eval_split": _text, "data.test_split": _text, "data.prefetch": _number(int, 0, 64),
    "data.loader_workers": _number(int, 0, MAX_WORKERS),
    "text.encoder": _enum(ENCODERS), "text.max_length": _number(int, 1, 512), "text.cache_dir": _text,
    "experience.dir": _text, "experience.max_tokens": _number(int, 1, 4096),
    "vae.model.latent_channels": _number(int, 1, 64), "vae.model.channels": _sequence(_WIDTH),
    "vae.model.kernel_size": _number(int, 1, 63), "vae.model.num_groups": _number(int, 1, 64),
    "vae.model.beat_hidden": _WIDTH,
    "vae.loss.beat_before_s": _number(float, 0, 2, low_open=True),
    "vae.loss.beat_after_s": _number(float, 0, 2, low_open=True), "vae.loss.beta_kl": _WEIGHT,
    "vae.loss.beat_weight": _WEIGHT, "vae.loss.spec_weight": _WEIGHT,
    **_optimizer_rules("vae.optimizer"), **_training_rules("vae.training"),
    "diffusion.model.channels": _sequence(_WIDTH), "diffusion.model.attention": _sequence(_flag),
    "diffusion.model.num_heads": _number(int, 1, 64), "diffusion.model.time_embed_dim": _WIDTH,
    "diffusion.model.num_groups": _number(int, 1, 64), "diffusion.model.rhythm_channels": _enum((0, 3, 4)),
    "diffusion.model.repa_dim": _number(int, 0, MAX_WIDTH), "diffusion.model.repa_hidden": _WIDTH,
    "diffusion.loss.repa_weight": _WEIGHT, "diffusion.repa_teacher": _text,
    "diffusion.rhythm_dropout": _FRACTION, "diffusion.amplitude_dropout": _FRACTION,
    "diffusion.model.amplitude_leads": _enum((0, 12)),
    "diffusion.schedule.kind": _enum(SCHEDULES), "diffusion.schedule.num_steps": _number(int, 2, 100_000),
    "diffusion.loss.prediction": _enum(PREDICTIONS), "diffusion.loss.euler_weight": _WEIGHT,
    "diffusion.loss.interlead_weight": _WEIGHT, "diffusion.loss.sim_weight": _WEIGHT,
    "diffusion.loss.interlead_full_signal": _flag, "diffusion.loss.interlead_crop": _number(float, 0, 1, True),
    "diffusion.loss.weighting": _enum(WEIGHTINGS), "diffusion.loss.weighting_power": _WEIGHT,
    "diffusion.loss.ddpm_weighting": _enum(DDPM_WEIGHTINGS), "diffusion.loss.min_snr_gamma": _number(float, 0, None, True),
    "diffusion.loss.sim_fraction": _FRACTION, "diffusion.loss.sim_solver": _enum(BEAT_SOLVERS),
    "diffusion.loss.sim_internal_fs": _number(float, 50, 5000),
    "diffusion.condition_dropout": _sequence(_FRACTION, length=3), "diffusion.prior": _text,
    "diffusion.vae_checkpoint": _text, "diffusion.latent_scale_batches": _number(int, 1, 1000),
    "diffusion.init_from": _model_path,
    "diffusion.latent_cache": _text, "diffusion.latent_cache_dtype": _enum(("float16", "float32")),
    **_optimizer_rules("diffusion.optimizer"), **_training_rules("diffusion.training"),
}


def _leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every value of a resolved config against `RULES`, then the settings that must agree; ConfigError naming
    the first bad key and its value."""
    for key, value in _leaves(config):
        problem = RULES[key](value) if key in RULES else "has no rule in the schema"
        if problem:
            raise ConfigError(f"config {key}={value!r} {problem}")
    if config.variant not in VARIANTS:
        raise ConfigError(f"config variant={config.variant!r} must be one of {', '.join(VARIANTS)}")
    model = config.diffusion.model
    if len(model.attention) != len(model.channels):
        raise ConfigError(f"config diffusion.model.attention has {len(model.attention)} entries but "
                          f"diffusion.model.channels has {len(model.channels)}; give one per level")
    heads = [c for c, a in zip(model.channels, model.attention) if a and c % model.num_heads]
    if heads:
        raise ConfigError(f"config diffusion.model.channels: {heads[0]} is not divisible by "
                          f"diffusion.model.num_heads={model.num_heads} at a level with attention")
    if config.diffusion.loss.repa_weight > 0 and not (model.repa_dim > 0 and config.diffusion.repa_teacher):
        raise ConfigError("config diffusion.loss.repa_weight > 0 needs diffusion.model.repa_dim > 0 (the projector's "
                          "width, the teacher's feature width) and diffusion.repa_teacher (an ECG-CLIP safetensors)")
    if config.vae.loss.beat_before_s + config.vae.loss.beat_after_s >= config.data.duration_s:
        raise ConfigError("config vae.loss.beat_before_s + beat_after_s must be shorter than data.duration_s")
