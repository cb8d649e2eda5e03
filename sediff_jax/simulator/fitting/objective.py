"""The fitted variables (unconstrained, mapped into bounds), the simulated fit, the misfit, and the
jitted Adam loop over a batch of records."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sediff_jax.simulator import dynamics
from sediff_jax.simulator.params import (
    DIPOLE_THETA_HR_EXPONENT,
    BaselineParams,
    ECGParams,
    WaveParams,
    default_rhythm,
    zero_baseline,
)
from sediff_jax.simulator.fitting.config import (
    AMPLITUDE_LIMIT_MV, NUM_CHANNELS, RESP_AMPLITUDE_LIMIT_MV, RESP_FREQUENCY_BOUNDS_HZ, RR_BOUNDS_S,
    THETA_BOUNDS, WIDTH_BOUNDS, FitConfig, FitTarget,
)
from sediff_jax.simulator.rhythm import heart_rate_scaled_waves
from sediff_jax.simulator.solve import initial_state, integrate, states_to_leads

Array = jax.Array

# ----------------------------------------------------------------------------------------------------------
# Bounded parametrisation: parameters = bounded(unconstrained variables).


def _bounded(u: Array, lo, hi) -> Array:
    return lo + (hi - lo) * jax.nn.sigmoid(u)


def unbounded(x: np.ndarray, lo, hi) -> np.ndarray:
    p = np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 1e-3, 1.0 - 1e-3)
    return np.log(p / (1.0 - p)).astype(np.float32)


def waves_from_variables(variables: dict[str, Array]) -> WaveParams:
    """Unconstrained fit variables -> `WaveParams` at 60 bpm inside the physiological bounds."""
    return WaveParams(
        theta=_bounded(variables["theta"], THETA_BOUNDS[:, 0], THETA_BOUNDS[:, 1]),
        width=_bounded(variables["width"], WIDTH_BOUNDS[:, 0], WIDTH_BOUNDS[:, 1]),
        amplitude=AMPLITUDE_LIMIT_MV * jnp.tanh(variables["amplitude"] / AMPLITUDE_LIMIT_MV),
    )


def variables_from_waves(waves: WaveParams) -> dict[str, np.ndarray]:
    """Inverse of `waves_from_variables` (values are first clipped just inside the bounds)."""
    amplitude = np.clip(np.asarray(waves.amplitude), -0.999 * AMPLITUDE_LIMIT_MV, 0.999 * AMPLITUDE_LIMIT_MV)
    return {
        "theta": unbounded(waves.theta, THETA_BOUNDS[:, 0], THETA_BOUNDS[:, 1]),
        "width": unbounded(waves.width, WIDTH_BOUNDS[:, 0], WIDTH_BOUNDS[:, 1]),
        "amplitude": (AMPLITUDE_LIMIT_MV * np.arctanh(amplitude / AMPLITUDE_LIMIT_MV)).astype(np.float32),
    }


def model_params(variables: dict[str, Array], target: FitTarget, config: FitConfig) -> tuple[ECGParams, Array]:
    """The simulator parameters and the RR tachogram (s) that the variables stand for, for one record."""
    waves = waves_from_variables(variables)
    if config.mode == "strip":
        rr = _bounded(variables["rr"], *RR_BOUNDS_S)
        initial_phase = variables["initial_phase"]
        baseline = BaselineParams(
            resp_amplitude=RESP_AMPLITUDE_LIMIT_MV * jnp.tanh(variables["resp_amplitude"] / RESP_AMPLITUDE_LIMIT_MV),
            resp_frequency=_bounded(variables["resp_frequency"], *RESP_FREQUENCY_BOUNDS_HZ),
            fib_amplitude=jnp.zeros((NUM_CHANNELS,), rr.dtype),
            fib_frequency=jnp.asarray(6.0, rr.dtype),
        )
    else:
        rr, initial_phase, baseline = target.rr, target.initial_phase, zero_baseline(NUM_CHANNELS, target.rr.dtype)
    rhythm = default_rhythm(hr_std=0.0)._replace(hr_mean=target.hr_mean, initial_phase=initial_phase)
    return ECGParams(waves, rhythm, baseline), rr


def simulate_fit(variables: dict[str, Array], target: FitTarget, config: FitConfig) -> Array:
    """The simulated record for one set of variables: (time, 12) mV, without the per-lead offset."""
    sim_config = config.simulator_config
    params, rr = model_params(variables, target, config)
    waves = heart_rate_scaled_waves(params.waves, params.rhythm.hr_mean, DIPOLE_THETA_HR_EXPONENT)
    args = dynamics.VectorFieldArgs(waves, rr, jnp.asarray(config.rr_fs, rr.dtype), params.baseline)
    states = integrate(args, initial_state(params, args, sim_config), sim_config)
    return states_to_leads(states, sim_config)


def lead_offsets(simulated: Array, target: FitTarget) -> Array:
    """(12,) mV: the constant per lead that best aligns the simulation with the signal over the mask."""
    mask = target.mask[:, None]
    return jnp.sum(mask * (target.signal - simulated), axis=0) / jnp.sum(target.mask)


def misfit(variables: dict[str, Array], target: FitTarget, config: FitConfig) -> Array:
    """Lead-weighted mean squared error over the mask after the best per-lead offset: () dimensionless."""
    return _misfit_of(simulate_fit(variables, target, config), target)


def _misfit_of(simulated: Array, target: FitTarget) -> Array:
    residual = (target.signal - simulated - lead_offsets(simulated, target)) * target.mask[:, None]
    per_lead = jnp.sum(residual**2, axis=0) / jnp.sum(target.mask)
    return jnp.sum(target.lead_weight * per_lead)


def fit_optimizer(config: FitConfig) -> optax.GradientTransformation:
    rate = config.strip_learning_rate if config.mode == "strip" else config.learning_rate
    schedule = optax.cosine_decay_schedule(rate, config.max_iterations, alpha=config.final_learning_rate_fraction)
    return optax.adam(schedule)


@functools.partial(jax.jit, static_argnames=("config", "num_iterations"))
def optimise(variables, opt_state, targets: FitTarget, config: FitConfig, num_iterations: int):
    """`num_iterations` Adam steps on a batch; returns variables, optimiser state and (num_iterations, batch)."""
    optimizer = fit_optimizer(config)

    def batch_loss(v):
        losses = jax.vmap(misfit, in_axes=(0, 0, None))(v, targets, config)
        return jnp.sum(losses), losses

    def step(carry, _):
        v, state = carry
        (_, losses), grads = jax.value_and_grad(batch_loss, has_aux=True)(v)
        updates, state = optimizer.update(grads, state, v)
        return (optax.apply_updates(v, updates), state), losses

    (variables, opt_state), losses = jax.lax.scan(step, (variables, opt_state), None, length=num_iterations)
    return variables, opt_state, losses


@functools.partial(jax.jit, static_argnames=("config",))
def evaluate(variables, targets: FitTarget, config: FitConfig):
    def one(v, target):
        simulated = simulate_fit(v, target, config)
        offset = lead_offsets(simulated, target)
        return simulated + offset, offset, _misfit_of(simulated, target)

    return jax.vmap(one)(variables, targets)
