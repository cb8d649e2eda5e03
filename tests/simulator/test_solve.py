"""The diffrax solve: accuracy against tight references, heart rate, gradients, lead physics, jit behaviour."""

import dataclasses
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax import leads
from sediff_jax import simulator as sim
from sediff_jax.simulator import dynamics, solve
from tests.helpers import r_peak_times


def _relative_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _reference_solve(params, key, config):
    """Adaptive Tsit5 at rtol = atol = 1e-10 (float64), saved at the output times."""
    args = solve.prepare_args(params, key, config)
    y0 = solve.initial_state(params, args, config)
    ts = jnp.asarray(solve.sample_times(config))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(solve.vector_field_for(config)), diffrax.Tsit5(), ts[0], ts[-1], 1e-4, y0, args,
        saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        max_steps=500_000,
    )
    return sol.ys


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


@pytest.mark.parametrize("preset", ["normal_sinus", "atrial_fibrillation"])
def test_fixed_step_heun_agrees_with_tight_adaptive_solve(preset):
    with jax.enable_x64(True):
        params = _f64(sim.preset_params(preset))
        config = sim.SimulatorConfig(duration_s=4.0, fs=500.0, solver="heun")
        key = jax.random.key(0)
        ecg_ref = solve.states_to_leads(_reference_solve(params, key, config), config)

        def error(**kw):
            fixed_config = dataclasses.replace(config, **kw)
            return _relative_l2(sim.simulate(params, key, fixed_config), ecg_ref)

        # Relative L2 error of the 12 leads. Heun at 500 Hz: below 2e-2 (measured 4.8e-3 normal sinus at 70 bpm,
        # 1.3e-2 atrial fibrillation at 100 bpm); halving the step divides it by ~4 (second order).
        # Tsit5 at 500 Hz: below 1e-5.
        heun_500 = error()
        heun_1000 = error(min_internal_fs=1000.0)
        assert heun_500 < 2e-2
        assert heun_1000 < heun_500 / 3.5
        assert error(solver="tsit5") < 1e-5


def test_dipole_solution_matches_closed_form_along_its_phase():
    params = sim.preset_params("normal_sinus")
    config = sim.SimulatorConfig(duration_s=5.0, fs=500.0)
    key = jax.random.key(2)
    states = sim.solve_states(params, key, config)
    args = solve.prepare_args(params, key, config)
    phase = jnp.arctan2(states[:, 1], states[:, 0])
    t = jnp.asarray(solve.sample_times(config), jnp.float32)
    closed = dynamics.dipole_waveform(phase, args.waves) + jax.vmap(lambda tt: dynamics.baseline(tt, args.baseline))(t)
    np.testing.assert_allclose(states[:, 2:], closed, atol=3e-3)
    assert _relative_l2(states[:, 2:], closed) < 5e-3


def test_heart_rate_and_variability_measured_on_the_output():
    hrs = np.array([40.0, 60.0, 90.0, 120.0, 150.0, 180.0])
    hr_std = 3.0
    config = sim.SimulatorConfig(duration_s=300.0, fs=500.0)
    params = sim.stack_params([sim.with_heart_rate(sim.dipole_params(), h, hr_std) for h in hrs])
    ecg = np.asarray(sim.simulate_batch(params, jax.random.split(jax.random.key(1), len(hrs)), config))
    for hr, record in zip(hrs, ecg):
        rr = np.diff(r_peak_times(record[:, leads.lead_index("II")], config.fs))
        assert abs(60.0 / rr.mean() - hr) < 1.0, (hr, 60.0 / rr.mean())
        assert np.std(60.0 / rr) == pytest.approx(hr_std, rel=0.2), (hr, np.std(60.0 / rr))


def test_constant_rate_is_exact():
    config = sim.SimulatorConfig(duration_s=20.0, fs=500.0)
    params = sim.with_heart_rate(sim.dipole_params(), 72.0, 0.0)
    ecg = np.asarray(sim.simulate(params, jax.random.key(0), config))
    rr = np.diff(r_peak_times(ecg[:, 1], config.fs))
    np.testing.assert_allclose(rr, 60.0 / 72.0, atol=2e-4)


def test_limb_leads_obey_einthoven_and_goldberger():
    params = sim.stack_params([sim.preset_params(name) for name in sim.PRESETS])
    config = sim.SimulatorConfig(duration_s=3.0, fs=250.0)
    ecg = sim.simulate_batch(params, jax.random.split(jax.random.key(0), len(sim.PRESETS)), config)
    assert np.max(np.abs(leads.limb_lead_residuals(ecg))) < 1e-5


def test_gradient_matches_central_finite_differences():
    with jax.enable_x64(True):
        config = sim.SimulatorConfig(duration_s=1.5, fs=250.0)
        params = _f64(sim.with_heart_rate(sim.dipole_params(), 75.0, 2.0))
        key = jax.random.key(0)
        weights = jnp.asarray(np.random.default_rng(0).normal(size=(config.num_samples, 12)))

        def loss(p):
            return jnp.sum(sim.simulate(p, key, config) * weights)

        grads = jax.grad(loss)(params)
        eps = 1e-6
        checks = [
            ("amplitude", (0, 2)), ("amplitude", (2, 5)), ("width", (0, 2)), ("width", (1, 5)),
            ("theta", (0, 0)), ("theta", (2, 3)),
        ]
        for field, index in checks:
            def perturbed(delta):
                waves = params.waves._replace(**{field: getattr(params.waves, field).at[index].add(delta)})
                return loss(params._replace(waves=waves))

            fd = (perturbed(eps) - perturbed(-eps)) / (2 * eps)
            assert float(getattr(grads.waves, field)[index]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7), field
        for field in ("hr_mean", "hr_std"):
            def perturbed(delta):
                return loss(params._replace(rhythm=params.rhythm._replace(**{field: getattr(params.rhythm, field) + delta})))

            fd = (perturbed(eps) - perturbed(-eps)) / (2 * eps)
            assert float(getattr(grads.rhythm, field)) == pytest.approx(float(fd), rel=1e-5, abs=1e-7), field


def test_no_retrace_when_only_values_change():
    config = sim.SimulatorConfig(duration_s=1.0, fs=100.0)
    keys = jax.random.split(jax.random.key(0), 2)
    batch = sim.stack_params([sim.preset_params("normal_sinus"), sim.preset_params("lvh")])
    sim.simulate_batch(batch, keys, config)
    before = sim.simulate_batch._cache_size()
    other = sim.stack_params([sim.preset_params("atrial_fibrillation", hr=130.0), sim.preset_params("low_voltage")])
    sim.simulate_batch(other, jax.random.split(jax.random.key(5), 2), config)
    sim.simulate_batch(jax.tree.map(lambda x: x * 1.01, batch), keys, config)
    assert sim.simulate_batch._cache_size() == before


def test_mcsharry_single_lead_model():
    config = sim.SimulatorConfig(model="mcsharry", duration_s=10.0, fs=256.0)
    ecg = np.asarray(sim.simulate(sim.mcsharry_params(hr_mean=60.0, hr_std=0.0), jax.random.key(0), config))
    assert ecg.shape == (2560, 1)
    assert ecg.min() == pytest.approx(-0.4, abs=1e-4) and ecg.max() == pytest.approx(1.2, abs=1e-4)
    assert len(r_peak_times(ecg[:, 0], config.fs)) in (9, 10, 11)


def test_output_rate_not_dividing_internal_rate():
    config = sim.SimulatorConfig(duration_s=2.0, fs=360.0)
    assert config.internal_fs == 720.0 and config.num_samples == 720
    ecg = sim.simulate(sim.dipole_params(), jax.random.key(0), config)
    assert ecg.shape == (720, 12) and bool(jnp.all(jnp.isfinite(ecg)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(duration_s=0.0), "duration_s"),
        (dict(fs=20.0), "fs="),
        (dict(model="bidomain"), "model="),
        (dict(solver="rk4"), "solver="),
    ],
)
def test_config_rejects_impossible_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sim.SimulatorConfig(**kwargs)


@pytest.mark.parametrize("hr, hr_std", [(10.0, 1.0), (400.0, 1.0), (math.nan, 1.0), (70.0, -1.0), (60.0, 30.0)])
def test_impossible_heart_rates_are_rejected(hr, hr_std):
    with pytest.raises(ValueError, match="hr_"):
        sim.validate_rhythm(hr, hr_std)


def test_wrong_wave_count_is_rejected():
    with pytest.raises(ValueError, match="waves"):
        sim.simulate(sim.mcsharry_params(), jax.random.key(0), sim.SimulatorConfig(duration_s=1.0))
