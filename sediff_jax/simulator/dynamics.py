"""The simulator's vector fields, pure functions `f(t, state, args) -> d state / dt`.

The same functions serve the diffrax solve, the residual (Euler) losses of training and the fitting to
recordings. State layout: `state = (x, y, v_1, ..., v_C)`; (x, y) is McSharry's limit cycle, whose angle
atan2(y, x) is the cardiac phase (R peak at 0), and v_c are the C signal channels.

McSharry et al. (2003), single lead (C = 1):
    x' = a x - w y,  y' = a y + w x,  a = 1 - sqrt(x^2 + y^2)
    z' = -sum_i a_i dth_i exp(-dth_i^2 / (2 b_i^2)) - (z - z0(t)),  dth_i = wrap(atan2(y, x) - th_i)
Dipole channels (Sameni et al. 2007), C = 3, amplitudes a_ci in mV:
    v_c' = -sum_i (a_ci w / b_ci^2) dth_ci exp(-dth_ci^2 / (2 b_ci^2)) + z0_c'(t)
so that v_c follows sum_i a_ci exp(-dth_ci^2 / (2 b_ci^2)) + z0_c(t): each wave's peak is its amplitude
whatever the heart rate. z0 is the baseline: respiration plus, in atrial fibrillation, f-waves.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.simulator.params import BaselineParams, WaveParams
from sediff_jax.simulator.rhythm import angular_velocity

Array = jax.Array

# f-wave frequency modulation: the atrial rate wanders by +-FIB_DEVIATION_HZ at FIB_MODULATION_HZ.
FIB_DEVIATION_HZ = 1.0
FIB_MODULATION_HZ = 0.3


class VectorFieldArgs(NamedTuple):
    """What the vector field needs besides (t, state), heart-rate scaling already applied.

    waves: WaveParams with (channels, waves) leaves.
    rr: (num_rr,) s, RR tachogram sampled at rr_fs from t = -1 / rr_fs.
    rr_fs: () Hz.
    baseline: BaselineParams.
    """

    waves: WaveParams
    rr: Array
    rr_fs: Array
    baseline: BaselineParams


def wrap_angle(angle: Array) -> Array:
    """Wrap to [-pi, pi] (one period subtracted by rounding: cheaper than a floating remainder)."""
    return angle - (2.0 * math.pi) * jnp.round(angle * (0.5 / math.pi))


def phase_offsets(phase: Array, waves: WaveParams) -> Array:
    """dth: (channels, waves) rad, wrapped distance from the phase to each wave centre."""
    return wrap_angle(phase - waves.theta)


def _fib_phase(t: Array, frequency: Array) -> tuple[Array, Array]:
    """Phase (rad) of the f-waves and its time derivative (rad/s)."""
    m = FIB_DEVIATION_HZ / FIB_MODULATION_HZ
    wm = 2.0 * math.pi * FIB_MODULATION_HZ
    phase = 2.0 * math.pi * frequency * t + m * jnp.sin(wm * t)
    return phase, 2.0 * math.pi * frequency + m * wm * jnp.cos(wm * t)


def baseline(t: Array, params: BaselineParams) -> Array:
    """z0(t): (channels,) respiratory wander plus fibrillatory waves."""
    fib_phase, _ = _fib_phase(t, params.fib_frequency)
    return params.resp_amplitude * jnp.sin(2.0 * math.pi * params.resp_frequency * t) + params.fib_amplitude * jnp.sin(
        fib_phase
    )


def baseline_derivative(t: Array, params: BaselineParams) -> Array:
    """dz0/dt: (channels,) per second."""
    wr = 2.0 * math.pi * params.resp_frequency
    fib_phase, fib_rate = _fib_phase(t, params.fib_frequency)
    return params.resp_amplitude * wr * jnp.cos(wr * t) + params.fib_amplitude * fib_rate * jnp.cos(fib_phase)


def _limit_cycle(x: Array, y: Array, omega: Array) -> tuple[Array, Array]:
    alpha = 1.0 - jnp.sqrt(x * x + y * y)
    return alpha * x - omega * y, alpha * y + omega * x


def mcsharry_vector_field(t: Array, state: Array, args: VectorFieldArgs) -> Array:
    """McSharry (2003): state (3,) = (x, y, z) -> (3,)."""
    x, y, z = state[0], state[1], state[2:]
    omega = angular_velocity(t, args.rr, args.rr_fs)
    dx, dy = _limit_cycle(x, y, omega)
    w = args.waves
    dth = phase_offsets(jnp.arctan2(y, x), w)
    dz = -jnp.sum(w.amplitude * dth * jnp.exp(-0.5 * (dth / w.width) ** 2), axis=-1) - (z - baseline(t, args.baseline))
    return jnp.concatenate([jnp.stack([dx, dy]), dz])


def dipole_vector_field(t: Array, state: Array, args: VectorFieldArgs) -> Array:
    """Three dipole channels on McSharry's limit cycle: state (2 + C,) -> (2 + C,), channels in mV."""
    x, y = state[0], state[1]
    omega = angular_velocity(t, args.rr, args.rr_fs)
    dx, dy = _limit_cycle(x, y, omega)
    w = args.waves
    dth = phase_offsets(jnp.arctan2(y, x), w)
    inv_var = 1.0 / (w.width * w.width)
    dv = -omega * jnp.sum(w.amplitude * inv_var * dth * jnp.exp(-0.5 * dth * dth * inv_var), axis=-1)
    dv = dv + baseline_derivative(t, args.baseline)
    return jnp.concatenate([jnp.stack([dx, dy]), dv])


def dipole_wave_components(phase: Array, waves: WaveParams) -> Array:
    """Each wave's closed-form contribution to each dipole channel at `phase` (any shape (...,), rad):
    (..., channels, waves) mV. NumPy inputs give a NumPy float64 result (host-side fitting), JAX inputs a JAX one."""
    xp = np if all(isinstance(a, (np.ndarray, float, int)) for a in (phase, *waves)) else jnp
    angle = phase[..., None, None] - waves.theta
    dth = angle - (2.0 * math.pi) * xp.round(angle * (0.5 / math.pi))  # wrap_angle, in either library
    return waves.amplitude * xp.exp(-0.5 * (dth / waves.width) ** 2)


def dipole_waveform(phase: Array, waves: WaveParams) -> Array:
    """Closed form of the dipole channels as a function of phase (no baseline): (..., channels) mV.

    `phase` has any shape (...,); used for the consistent initial state and as an analytic reference.
    """
    return dipole_wave_components(phase, waves).sum(axis=-1)
