"""How well a model denoises real records, noise level by noise level: the diagnosis of a generator whose samples
lack variety. The error at high noise (large t) is the global structure the sampler must invent; at low noise,
the detail it refines. Epsilon-space MSE with the record's own conditions (and, for a rhythm-scaffold model, its
own beats, for an amplitude-conditioned one its own lead amplitudes), fixed noise and timesteps per record, so two models or two checkpoints are compared on the same
draws."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.diffusion.sampling import noise_levels
from sediff_jax.diffusion.schedule import add_noise, predict_epsilon
from sediff_jax.generation import Generator
from sediff_jax.models.conditions import Conditions
from sediff_jax.signal import lead_amplitudes

LOSS_STREAM = 2**31 - 3  # fold_in index of a record's noise and timesteps here


def loss_by_noise_level(model, ecg: np.ndarray, prompts: Sequence, rhythms: Sequence | None = None,
                        bands: int = 10, seed: int = 0, batch_size: int = 64, experience: str = "auto"
                        ) -> dict[str, Any]:
    """Conditional denoising MSE (epsilon space, per latent element) of `model` on real ECGs, in `bands` equal
    bands of the training timesteps. ecg: (n, time, 12) mV at the model's rate; prompts: each record's Prompt;
    rhythms: each record's RhythmPlan (None, or None entries: planned from the prompt with `seed`). Record i draws, for band b, one timestep
    uniformly in the band and one noise from fold_in(fold_in(key(seed), i), b): reproducible, batch-free.
    Returns {"bands": [{"t": [low, high), "sigma": [low, high], "mse", "sem"}], "records": n, "per_record":
    (n, bands)}."""
    n = ecg.shape[0]
    if n == 0 or len(prompts) != n or (rhythms is not None and len(rhythms) != n):
        raise ValueError(f"{n} ECGs, {len(prompts)} prompts" + ("" if rhythms is None else f", {len(rhythms)} rhythms"))
    schedule, steps = model.schedule, model.schedule.num_steps
    edges = np.linspace(0, steps, bands + 1).round().astype(int)
    generator = Generator(model, max_batch=batch_size)
    vae, denoiser = model.vae(), model.denoiser()
    rhythms = generator.plan_rhythms(list(prompts), seed, None if rhythms is None else list(rhythms))

    @jax.jit
    def errors(x, conditions, keys):
        z = vae.encode(x)[0] * model.latent_scale
        drop = jnp.zeros((z.shape[0], 3), bool)

        def one_band(b):
            band_keys = jax.vmap(lambda k: jax.random.fold_in(k, b))(keys)
            t = jax.vmap(lambda k: jax.random.randint(k, (), jnp.asarray(edges)[b], jnp.asarray(edges)[b + 1]))(
                band_keys)
            noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), z.shape[1:]))(band_keys)
            x_t = add_noise(schedule, z, noise, t)
            eps = predict_epsilon(schedule, model.prediction, x_t, denoiser(x_t, t, conditions, drop), t)
            return jnp.mean((eps - noise) ** 2, axis=(1, 2))

        return jnp.stack([one_band(b) for b in range(bands)], axis=1)  # (batch, bands)

    rows = []
    for start in range(0, n, batch_size):
        part = slice(start, min(start + batch_size, n))
        own = lead_amplitudes(ecg[part]) if generator.uses_amplitudes else None  # as in training: the record's
        batch = generator.conditions(list(prompts[part]), experience, rhythms[part], own)
        conditions = Conditions.from_batch(batch)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), LOSS_STREAM), i))(
            jnp.arange(part.start, part.stop))
        rows.append(np.asarray(errors(jnp.asarray(ecg[part], jnp.float32), conditions, keys)))
    per_record = np.concatenate(rows)
    sigma_edges = noise_levels(schedule, np.clip(edges, 0, steps - 1))
    return {"records": n, "bands": [
        {"t": [int(edges[b]), int(edges[b + 1])], "sigma": [float(sigma_edges[b]), float(sigma_edges[b + 1])],
         "mse": float(per_record[:, b].mean()), "sem": float(per_record[:, b].std(ddof=1) / np.sqrt(n)) if n > 1
         else float("nan")} for b in range(bands)], "per_record": per_record}
