"""Stage-1 losses (pure functions): reconstruction + beta_KL * KL + beat_weight * L_beat + spec_weight * L_spec.

L_beat compares the beat decoder's output with the record's median beat (cut around the R peaks the loader
provides, `sediff_jax.signal.beats.median_beat_jax`); L_spec compares the log-magnitude spectrum of the decoded
beat with the mean log-spectrum of the record's beats. Records without a complete beat contribute no beat terms.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sediff_jax.signal.beats import beat_segments_jax, median_beat_jax

Array = jax.Array
SPECTRUM_EPS = 1e-3  # mV: floor of the magnitude spectrum before the log


@dataclasses.dataclass(frozen=True)
class VAELossConfig:
    """fs: Hz of the ECGs.  beat_before_s / beat_after_s: beat window around R (the paper's 0.2 / 0.4 s).
    beta_kl, beat_weight, spec_weight: term weights (reconstruction has weight 1)."""

    fs: float = 100.0
    beat_before_s: float = 0.2
    beat_after_s: float = 0.4
    beta_kl: float = 1e-4
    beat_weight: float = 1.0
    spec_weight: float = 0.1

    @property
    def beat_window(self) -> tuple[int, int]:
        return int(round(self.beat_before_s * self.fs)), int(round(self.beat_after_s * self.fs))

    @property
    def beat_samples(self) -> int:
        return sum(self.beat_window)


def kl_divergence(mean: Array, log_var: Array) -> Array:
    """KL(N(mean, exp(log_var)) || N(0, 1)) per record, averaged over latent elements: (batch,)."""
    kl = 0.5 * (jnp.exp(log_var) + mean**2 - 1.0 - log_var)
    return jnp.mean(kl, axis=tuple(range(1, kl.ndim)))


def log_spectrum(beat: Array) -> Array:
    """log |rfft| along time of (..., time, leads) mV -> (..., time // 2 + 1, leads)."""
    return jnp.log(jnp.abs(jnp.fft.rfft(beat, axis=-2)) + SPECTRUM_EPS)


def vae_losses(outputs: dict[str, Array], ecg: Array, r_peaks: Array, config: VAELossConfig,
               weight: Array | None = None) -> dict[str, Array]:
    """All stage-1 terms, each a scalar averaged over the batch (`weight`: (batch,) e.g. the loader's mask).

    outputs: `ECGVAE.__call__` output.  ecg: (batch, time, 12) mV.  r_peaks: (batch, max_peaks), -1 padded.
    """
    batch = ecg.shape[0]
    weight = jnp.ones((batch,), ecg.dtype) if weight is None else weight.astype(ecg.dtype)
    before, after = config.beat_window
    if outputs["beat"].shape[1] != before + after:
        raise ValueError(f"the beat decoder gives {outputs['beat'].shape[1]} samples; the loss expects "
                         f"{before + after} ({config.beat_before_s} + {config.beat_after_s} s at {config.fs} Hz)")
    reconstruction = jnp.mean((outputs["reconstruction"] - ecg) ** 2, axis=(1, 2))
    kl = kl_divergence(outputs["mean"], outputs["log_var"])

    target_beat, count = median_beat_jax(ecg, r_peaks, before, after)
    has_beat = (count > 0).astype(ecg.dtype) * weight
    beat = jnp.mean((outputs["beat"] - target_beat) ** 2, axis=(1, 2))
    beats, valid = beat_segments_jax(ecg, r_peaks, before, after)
    valid_f = valid.astype(ecg.dtype)[..., None, None]
    target_spectrum = jnp.sum(log_spectrum(beats) * valid_f, axis=1) / jnp.maximum(jnp.sum(valid_f, axis=1), 1.0)
    spectrum = jnp.mean(jnp.abs(log_spectrum(outputs["beat"]) - target_spectrum), axis=(1, 2))

    def mean(x, w):
        return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)

    terms = {
        "reconstruction": mean(reconstruction, weight),
        "kl": mean(kl, weight),
        "beat": mean(beat, has_beat),
        "spectrum": mean(spectrum, has_beat),
    }
    terms["total"] = (terms["reconstruction"] + config.beta_kl * terms["kl"] + config.beat_weight * terms["beat"]
                      + config.spec_weight * terms["spectrum"])
    return terms
