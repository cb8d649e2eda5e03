"""RR tachogram: requested statistics, LF/HF spectrum, seeding, smooth interpolation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.simulator import params as sim_params, rhythm


def _rhythm(**kw):
    return sim_params.default_rhythm(**kw)


def test_tachogram_has_requested_mean_and_std_exactly():
    r = _rhythm(hr_mean=75.0, hr_std=4.0)
    rr = np.asarray(rhythm.rr_tachogram(jax.random.key(3), r, 44, 4.0), np.float64)
    assert rr.mean() == pytest.approx(60 / 75, rel=1e-5)
    assert rr.std() == pytest.approx(60 * 4 / 75**2, rel=1e-4)


def test_tachogram_is_seeded():
    r = _rhythm(hr_mean=70.0, hr_std=3.0)
    a = rhythm.rr_tachogram(jax.random.key(0), r, 44, 4.0)
    b = rhythm.rr_tachogram(jax.random.key(0), r, 44, 4.0)
    c = rhythm.rr_tachogram(jax.random.key(1), r, 44, 4.0)
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 1e-3


@pytest.mark.parametrize("ratio", [0.5, 2.0])
def test_tachogram_spectrum_has_requested_lf_hf_ratio(ratio):
    fs, n = 4.0, 4096
    r = _rhythm(hr_mean=60.0, hr_std=3.0, lf_hf_ratio=ratio)
    series = jax.vmap(lambda k: rhythm.rr_tachogram(k, r, n, fs))(jax.random.split(jax.random.key(0), 16))
    x = np.asarray(series, np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    power = np.mean(np.abs(np.fft.rfft(x, axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(n, 1 / fs)
    lf = power[(freqs > 0.04) & (freqs < 0.15)].sum()
    hf = power[(freqs > 0.15) & (freqs < 0.4)].sum()
    assert lf / hf == pytest.approx(ratio, rel=0.1)
    assert power[(freqs > 0.5)].sum() < 1e-3 * power.sum()


def test_irregular_rhythm_is_broadband():
    fs, n = 4.0, 4096
    r = _rhythm(hr_mean=100.0, hr_std=15.0, irregularity=1.0)
    x = np.asarray(rhythm.rr_tachogram(jax.random.key(0), r, n, fs), np.float64)
    power = np.abs(np.fft.rfft(x - x.mean())) ** 2
    freqs = np.fft.rfftfreq(n, 1 / fs)
    assert power[(freqs > 0.5) & (freqs <= 1.0)].sum() > 0.3 * power.sum()


def test_interpolation_passes_through_samples_and_is_c1():
    fs = 4.0
    rr = jnp.asarray(np.random.default_rng(0).uniform(0.7, 1.1, 20), jnp.float32)
    knots = (np.arange(1, 17) - 1) / fs
    np.testing.assert_allclose(rhythm.interpolate_rr(jnp.asarray(knots), rr, fs), rr[1:17], rtol=1e-6)
    d = jax.vmap(jax.grad(lambda t: rhythm.interpolate_rr(t, rr, fs)))
    eps = 1e-4
    left, right = d(jnp.asarray(knots[1:-1] - eps)), d(jnp.asarray(knots[1:-1] + eps))
    np.testing.assert_allclose(left, right, atol=2e-2)


def test_interpolation_is_exact_for_a_line():
    fs = 4.0
    rr = jnp.asarray(0.8 + 0.01 * (np.arange(20) - 1) / fs, jnp.float32)
    t = jnp.linspace(0.0, 3.9, 50)
    np.testing.assert_allclose(rhythm.interpolate_rr(t, rr, fs), 0.8 + 0.01 * t, rtol=1e-6)
