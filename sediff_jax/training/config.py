"""The training config schema: every key a training config has, with its default, in one ConfigDict.

`base_config()` is the schema (named configs in experiments/configs start from it); `resolve(config)` checks a
config against it and fills what it leaves out, so the trainer reads every key directly (no `.get` fallbacks).
Ablation variants (`apply_variant`) switch SE-Diff's loss terms: full (default), no_simulator (L_Euler and L_sim
off), no_euler, no_sim_solve (L_sim off), no_interlead, ddpm_only (every simulator term off), no_experience
(experience tokens off: `experience.dir` cleared, the paper's "w/o Exp"); min_snr (L_DDPM weighted by min-SNR-5,
Hang et al. 2023); scaffold / paper: with / without the
rhythm scaffold (the cardiac phase of each record's R peaks as denoiser input, on by default; `paper` is SE-Diff
as published).
"""

from __future__ import annotations

from typing import Any

import ml_collections

VARIANTS = {
    "full": {},
    "no_simulator": {"euler_weight": 0.0, "sim_weight": 0.0},
    "no_euler": {"euler_weight": 0.0},
    "no_sim_solve": {"sim_weight": 0.0},
    "no_interlead": {"interlead_weight": 0.0},
    "ddpm_only": {"euler_weight": 0.0, "sim_weight": 0.0, "interlead_weight": 0.0},
    "no_experience": {"experience.dir": ""},
    "scaffold": {"diffusion.model.rhythm_channels": 3},
    "paper": {"diffusion.model.rhythm_channels": 0},
    "min_snr": {"ddpm_weighting": "min_snr"},
}


def training(batch_size: int, num_steps: int, log_every: int = 10, eval_every: int = 100,
             checkpoint_every: int = 100, max_eval_batches: int = 8) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        batch_size=batch_size, num_steps=num_steps, log_every=log_every, eval_every=eval_every,
        checkpoint_every=checkpoint_every, max_to_keep=3, max_eval_batches=max_eval_batches, tensorboard=True,
        progress_bar=True, halt_at_step=0))  # halt_at_step: stop there with a checkpoint, as if preempted


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
        rhythm_channels=3))
    # The rhythm scaffold (rhythm_channels=3: the cardiac phase of the record's R peaks as input channels; 0 is
    # SE-Diff as published, the `paper` variant) is the default because it won on all of PTB-XL: heart-rate error
    # 1.45 vs 10.06 bpm, sinus RR CV 0.031 vs 0.211, FID 0.80 vs 1.09, MAE within one standard error (README).
    # It is dropped for this fraction of records, so the model also generates without one.
    c.diffusion.rhythm_dropout = 0.1
    c.diffusion.schedule = ml_collections.ConfigDict(dict(kind="cosine", num_steps=1000))
    c.diffusion.loss = ml_collections.ConfigDict(dict(
        prediction="epsilon", euler_weight=0.05, interlead_weight=0.05, sim_weight=0.05,
        interlead_full_signal=True, interlead_crop=0.25, weighting="alpha_bar", weighting_power=1.0,
        ddpm_weighting="uniform", min_snr_gamma=5.0,
        sim_fraction=0.5, sim_solver="heun", sim_internal_fs=500.0))
    c.diffusion.condition_dropout = (0.1, 0.1, 0.1)
    c.diffusion.prior = ""  # a simulator prior: a JSON path, a shipped prior's name, or "" (the default PTB-XL prior)
    c.diffusion.vae_checkpoint = ""  # a VAE stage directory; "" = <workdir>/vae
    c.diffusion.latent_scale_batches = 4
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
    leaves out set to its default; returns a new ConfigDict."""
    resolved = base_config()
    _merge(resolved, config, "")
    return resolved


def resolve_training(group: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A stage's `training` group with the keys it leaves out at their defaults (the loop's view of it)."""
    resolved = training(batch_size=0, num_steps=0)
    _merge(resolved, group, "training.")
    return resolved
