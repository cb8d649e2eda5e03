"""Where the beats fall: R-peak times from McSharry's phase oscillator driven by an RR tachogram.

The simulator's (x, y) limit cycle turns at w(t) = 2 pi / RR(t) (`rhythm.angular_velocity`), and its R wave sits
at phase 0. Integrating d(phi)/dt = w(t) with diffrax from `rhythm.initial_phase` and reading where phi crosses a
multiple of 2 pi gives the beat times of the rhythm `RhythmParams` describes: its mean rate, its LF/HF heart-rate
variability, and the broadband irregularity of atrial fibrillation. Seeded: the same key gives the same beats.
"""

from __future__ import annotations

import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.simulator.params import RhythmParams
from sediff_jax.simulator.rhythm import angular_velocity, rr_tachogram, tachogram_num_samples

Array = jax.Array
PHASE_FS = 200.0  # Hz: the grid on which the phase is saved; R crossings are interpolated between its points
RR_FS = 4.0  # Hz, the tachogram's rate (as SimulatorConfig.rr_fs)


@functools.partial(jax.jit, static_argnames=("duration_s", "fs", "rr_fs"))
def oscillator_phase(rhythm: RhythmParams, key: Array, duration_s: float, fs: float = PHASE_FS,
                     rr_fs: float = RR_FS) -> Array:
    """phi(t) (unwrapped, rad; 0 mod 2 pi at each R peak) on t = k / fs, k = 0 .. duration_s * fs: (n,) float32.

    rhythm: scalar-leaf RhythmParams (`initial_phase` is phi(0)); key: the tachogram's spectral phases."""
    rr = rr_tachogram(key, rhythm, tachogram_num_samples(duration_s, rr_fs), rr_fs)
    num = int(round(duration_s * fs)) + 1
    ts = jnp.arange(num, dtype=jnp.float32) / fs
    term = diffrax.ODETerm(lambda t, phi, args: angular_velocity(t, rr, jnp.float32(rr_fs)))
    solution = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=0.0, t1=(num - 1) / fs, dt0=1.0 / fs, y0=jnp.asarray(rhythm.initial_phase, jnp.float32),
        saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
        max_steps=16 * num)
    return solution.ys


def r_peak_times(phase: np.ndarray | Array, fs: float = PHASE_FS) -> np.ndarray:
    """Times (s, ascending) where an increasing phase on t = k / fs crosses a multiple of 2 pi (linear
    interpolation between grid points)."""
    phase = np.asarray(phase, np.float64)
    turns = np.floor(phase / (2.0 * math.pi))
    crossing = np.nonzero(turns[1:] > turns[:-1])[0]
    target = turns[crossing + 1] * 2.0 * math.pi
    fraction = (target - phase[crossing]) / (phase[crossing + 1] - phase[crossing])
    times = (crossing + fraction) / fs
    if phase.size and np.isclose(phase[0] / (2.0 * math.pi), np.round(phase[0] / (2.0 * math.pi))):
        times = np.concatenate([[0.0], times])
    return times


def simulated_beats(rhythm: RhythmParams, key: Array, duration_s: float) -> np.ndarray:
    """R-peak times (s) in [0, duration_s] of `rhythm`, from the phase oscillator."""
    return r_peak_times(oscillator_phase(rhythm, key, float(duration_s)))
