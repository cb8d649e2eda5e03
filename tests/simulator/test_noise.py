"""Recording noise: amplitudes, bands, seeding, and lead physics preserved."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax import leads
from sediff_jax.simulator import NoiseConfig, add_noise
from sediff_jax.simulator.noise import sample_noise

FS = 500.0
N = 5000


def _band_fraction(x, lo, hi):
    f = np.fft.rfftfreq(x.shape[0], 1 / FS)
    p = np.abs(np.fft.rfft(x, axis=0)) ** 2
    return p[(f >= lo) & (f <= hi)].sum() / p.sum()


@pytest.mark.parametrize(
    "config, band",
    [
        (NoiseConfig(baseline_wander_mv=0.1, muscle_mv=0, powerline_mv=0), (0.05, 0.5)),
        (NoiseConfig(baseline_wander_mv=0, muscle_mv=0.02, powerline_mv=0), (20.0, 150.0)),
        (NoiseConfig(baseline_wander_mv=0, muscle_mv=0, powerline_mv=0.03, powerline_hz=60.0), (59.0, 61.0)),
    ],
)
def test_each_component_has_its_amplitude_and_band(config, band):
    noise = np.asarray(sample_noise(jax.random.key(0), N, FS, config))
    rms = max(config.baseline_wander_mv, config.muscle_mv, config.powerline_mv)
    independent = noise[:, [0, 1] + list(range(6, 12))]
    np.testing.assert_allclose(np.sqrt(np.mean(independent**2, axis=0)), rms, rtol=0.02)
    assert _band_fraction(independent, *band) > 0.99


def test_noise_is_seeded_and_keeps_einthoven():
    ecg = jnp.zeros((2, N, 12))
    a = add_noise(ecg, jax.random.key(1), FS)
    b = add_noise(ecg, jax.random.key(1), FS)
    c = add_noise(ecg, jax.random.key(2), FS)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-3
    assert float(jnp.max(jnp.abs(a[0] - a[1]))) > 1e-3  # records in a batch get different noise
    assert float(jnp.max(jnp.abs(leads.limb_lead_residuals(a)))) < 1e-6


def test_powerline_above_nyquist_is_filtered_out():
    noise = sample_noise(jax.random.key(0), 1000, 100.0, NoiseConfig(0.0, 0.0, 0.05, 50.0))
    assert float(jnp.max(jnp.abs(noise))) == 0.0


def test_bad_noise_settings_are_rejected():
    with pytest.raises(ValueError, match="muscle_mv"):
        NoiseConfig(muscle_mv=-1.0)
    with pytest.raises(ValueError, match="12 leads"):
        add_noise(jnp.zeros((100, 3)), jax.random.key(0), FS)
