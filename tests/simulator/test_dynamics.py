"""The vector fields against the published equations, written out independently in NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.simulator import dynamics, params as sim_params, rhythm


def _args(p: sim_params.ECGParams, rr_value: float = 0.8) -> dynamics.VectorFieldArgs:
    rr = jnp.full((16,), rr_value, jnp.float32)
    return dynamics.VectorFieldArgs(p.waves, rr, jnp.asarray(4.0, jnp.float32), p.baseline)


def _mcsharry_reference(t, state, theta, a, b, rr, resp_amp, resp_f):
    """McSharry et al. 2003, eq. (3), transcribed literally."""
    x, y, z = state
    omega = 2 * math.pi / rr
    alpha = 1 - math.sqrt(x * x + y * y)
    th = math.atan2(y, x)
    dz = 0.0
    for ti, ai, bi in zip(theta, a, b):
        d = th - ti
        while d > math.pi:
            d -= 2 * math.pi
        while d < -math.pi:
            d += 2 * math.pi
        dz -= ai * d * math.exp(-d * d / (2 * bi * bi))
    z0 = resp_amp * math.sin(2 * math.pi * resp_f * t)
    return np.array([alpha * x - omega * y, alpha * y + omega * x, dz - (z - z0)])


def test_mcsharry_vector_field_matches_paper_equations():
    p = sim_params.mcsharry_params()
    args = _args(p)
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = rng.uniform(0, 10)
        state = np.array([*rng.normal(size=2), rng.normal(scale=0.05)], np.float32)
        got = np.asarray(dynamics.mcsharry_vector_field(jnp.float32(t), jnp.asarray(state), args))
        want = _mcsharry_reference(
            t, state.astype(np.float64), np.asarray(p.waves.theta[0]), np.asarray(p.waves.amplitude[0]),
            np.asarray(p.waves.width[0]), 0.8, 0.005, 0.25,
        )
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_dipole_channels_are_the_time_derivative_of_the_closed_form():
    """On the unit cycle, v_c' = w * d/dphase [sum_i a exp(-dth^2 / 2b^2)] + z0_c'(t)."""
    p = sim_params.dipole_params()
    p = p._replace(baseline=p.baseline._replace(fib_amplitude=jnp.asarray([0.01, 0.02, -0.03])))
    args = _args(p, rr_value=0.75)
    omega = 2 * math.pi / 0.75
    for phase in np.linspace(-math.pi + 0.01, math.pi - 0.01, 37):
        t = jnp.float32(1.3)
        state = jnp.concatenate([jnp.array([math.cos(phase), math.sin(phase)]), jnp.zeros(3)]).astype(jnp.float32)
        dv = dynamics.dipole_vector_field(t, state, args)[2:]
        d_wave = jax.jacfwd(lambda ph: dynamics.dipole_waveform(ph, p.waves))(jnp.float32(phase))
        d_base = jax.jacfwd(lambda tt: dynamics.baseline(tt, p.baseline))(t)
        np.testing.assert_allclose(dv, omega * d_wave + d_base, rtol=1e-4, atol=1e-4)


def test_limit_cycle_attracts_to_unit_circle_and_turns_at_omega():
    p = sim_params.dipole_params()
    args = _args(p, rr_value=1.0)
    state = jnp.array([0.5, 0.0, 0.0, 0.0, 0.0], jnp.float32)
    d = dynamics.dipole_vector_field(jnp.float32(0.0), state, args)
    np.testing.assert_allclose(d[:2], [0.25, 2 * math.pi * 0.5], rtol=1e-5)  # radial growth, tangential w r
    on_cycle = jnp.array([0.0, 1.0, 0.0, 0.0, 0.0], jnp.float32)
    d = dynamics.dipole_vector_field(jnp.float32(0.0), on_cycle, args)
    np.testing.assert_allclose(d[:2], [-2 * math.pi, 0.0], atol=1e-5)


@pytest.mark.parametrize("angle", [-7.0, -math.pi - 0.1, -1.0, 0.0, 2.5, math.pi + 0.2, 9.5])
def test_wrap_angle(angle):
    wrapped = float(dynamics.wrap_angle(jnp.float32(angle)))
    assert -math.pi - 1e-6 <= wrapped <= math.pi + 1e-6
    assert math.isclose(math.cos(wrapped), math.cos(angle), abs_tol=1e-5)
    assert math.isclose(math.sin(wrapped), math.sin(angle), abs_tol=1e-5)


def test_heart_rate_scaling_follows_ecgsyn():
    p = sim_params.mcsharry_params()
    same = rhythm.heart_rate_scaled_waves(p.waves, jnp.float32(60.0), sim_params.MCSHARRY_THETA_HR_EXPONENT)
    np.testing.assert_allclose(same.theta, p.waves.theta, rtol=1e-6)
    fast = rhythm.heart_rate_scaled_waves(p.waves, jnp.float32(240.0), sim_params.MCSHARRY_THETA_HR_EXPONENT)
    h = 2.0  # sqrt(240 / 60)
    np.testing.assert_allclose(fast.width, p.waves.width * h, rtol=1e-6)
    np.testing.assert_allclose(fast.theta[0], p.waves.theta[0] * np.array([h**0.5, h, 1, h, h**0.5]), rtol=1e-6)
    np.testing.assert_array_equal(fast.amplitude, p.waves.amplitude)


def test_wave_components_agree_on_numpy_float64_and_jax():
    """One closed form serves the traced losses (JAX float32) and host-side fitting (NumPy float64)."""
    waves = sim_params.dipole_params().waves
    host = sim_params.WaveParams(*(np.asarray(leaf, np.float64) for leaf in waves))
    phase = np.linspace(-3 * np.pi, 3 * np.pi, 301)  # beyond one turn: the wrap
    on_host = dynamics.dipole_wave_components(phase, host)
    on_device = dynamics.dipole_wave_components(jnp.asarray(phase, jnp.float32), waves)
    assert isinstance(on_host, np.ndarray) and on_host.dtype == np.float64 and on_host.shape == (301, 3, 6)
    assert isinstance(on_device, jax.Array)
    np.testing.assert_allclose(np.asarray(on_device), on_host, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dynamics.dipole_waveform(jnp.asarray(phase), waves)), on_host.sum(-1),
                               atol=5e-5)
    scaled = rhythm.heart_rate_scaled_waves(host, 90.0, sim_params.DIPOLE_THETA_HR_EXPONENT.astype(np.float64))
    assert scaled.theta.dtype == np.float64
