"""What the latent denoiser is conditioned on, as one typed pytree: built by `Conditions.from_batch` from a host or
device batch, the same way in training (`training.steps`), sampling (`generation.Generator`) and the
loss-by-noise-level evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Conditions:
    """A batch of b records' conditions.

    text_tokens: (b, Lt, d) float report token embeddings; text_mask: (b, Lt) bool.
    experience_tokens: (b, Le, d) float distilled-experience token embeddings; experience_mask: (b, Le) bool
    (all False: no experience). age: (b,) years, NaN unknown. sex: (b,) int32 (`Prompt.sex_code`; -1 unknown).
    hr: (b,) heart rate, bpm, NaN unknown. rhythm: (b, latent time, 3) the rhythm scaffold (cos phi, sin phi,
    present), or None for a model without it. amplitudes: (b, 12) each lead's amplitude, mV, NaN unknown (the
    record's own in training, a retrieved patient's at sampling), or None (a model without them, or all unknown)."""

    text_tokens: Array
    text_mask: Array
    experience_tokens: Array
    experience_mask: Array
    age: Array
    sex: Array
    hr: Array
    rhythm: Array | None = None
    amplitudes: Array | None = None

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> "Conditions":
        """From a batch with text_tokens, text_mask, experience_tokens, experience_mask, age, sex, hr_bpm, for a
        scaffold model rhythm, and for an amplitude-conditioned model amplitudes (what
        `conditioning.ConditionBuilder` and `Generator.conditions` give)."""
        return cls(batch["text_tokens"], batch["text_mask"], batch["experience_tokens"], batch["experience_mask"],
                   batch["age"], batch["sex"], batch["hr_bpm"], batch.get("rhythm"), batch.get("amplitudes"))

    def replace(self, **changes: Any) -> "Conditions":
        return dataclasses.replace(self, **changes)

    def tile(self, copies: int) -> "Conditions":
        """The batch repeated `copies` times along its first axis: the conditions of a guided sampler's stacked
        model calls (1 copy, 2 for classifier-free guidance, 4 for per-group guidance)."""
        return self if copies == 1 else jax.tree.map(lambda c: jnp.concatenate([c] * copies), self)
