"""Denoising error by noise level: the same draws whatever the batch, one row per band, and the value a direct
call of the denoiser gives for the same record, timestep and noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.diffusion.schedule import add_noise
from sediff_jax.evaluation.denoising import LOSS_STREAM, loss_by_noise_level
from sediff_jax.generation import Generator, make_prompt
from sediff_jax.models.conditions import Conditions
from sediff_jax.signal import lead_amplitudes
from tests.generation.small_model import small_model


@pytest.mark.parametrize("amplitudes", [False, True])
def test_loss_by_noise_level_is_reproducible_batch_free_and_what_the_denoiser_says(amplitudes):
    """(An amplitude-conditioned model is told each record's own lead amplitudes, as in training.)"""
    model = small_model(rhythm=True, amplitudes=amplitudes)
    rng = np.random.default_rng(0)
    ecg = rng.normal(scale=0.3, size=(4, model.num_samples, 12)).astype(np.float32)
    prompts = [make_prompt(t, age=50, hr=70) for t in ("sinus rhythm", "atrial fibrillation", "normal ECG",
                                                        "left bundle branch block")]
    a = loss_by_noise_level(model, ecg, prompts, bands=4, batch_size=4, experience="off")
    b = loss_by_noise_level(model, ecg, prompts, bands=4, batch_size=2, experience="off")
    assert a["records"] == 4 and [band["t"] for band in a["bands"]] == [[0, 25], [25, 50], [50, 75], [75, 100]]
    np.testing.assert_allclose(a["per_record"], b["per_record"], rtol=1e-5, atol=1e-6)
    sigmas = [band["sigma"] for band in a["bands"]]
    assert all(lo < hi for lo, hi in sigmas) and all(np.isfinite(band["mse"]) for band in a["bands"])
    # record 3, band 2, by hand: the same timestep and noise through the denoiser directly
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(0), LOSS_STREAM), 3), 2)
    t = jax.random.randint(key, (), 50, 75)
    z = model.vae().encode(jnp.asarray(ecg[3:4]))[0] * model.latent_scale
    noise = jax.random.normal(jax.random.fold_in(key, 1), z.shape[1:])[None]
    generator = Generator(model, max_batch=1)
    own = lead_amplitudes(ecg[3:4]) if amplitudes else None
    batch = generator.conditions(prompts[3:4], "off", generator.plan_rhythms(prompts, 0)[3:4], own)
    assert ("amplitudes" in batch) == amplitudes
    conditions = Conditions.from_batch(batch)
    x_t = add_noise(model.schedule, z, noise, t[None])
    out = model.denoiser()(x_t, t[None], conditions, jnp.zeros((1, 3), bool))
    assert float(jnp.mean((out - noise) ** 2)) == pytest.approx(float(a["per_record"][3, 2]), rel=1e-4)
    with pytest.raises(ValueError, match="4 ECGs, 3 prompts"):
        loss_by_noise_level(model, ecg, prompts[:3])
