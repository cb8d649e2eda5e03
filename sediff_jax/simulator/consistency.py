"""Simulator-consistency energies of a 12-lead beat (pure, differentiable functions; used by the diffusion
training losses and by simulator guidance at sampling time).

A beat is `(batch, samples, 12)` mV at `fs` with its R peak at sample `before` (the beat decoder's window).

* `interlead_energy`: Einthoven/Goldberger residuals of the signal and of its time derivative, relative to the
  beat's own power (SE-Diff's L_interlead).
* `euler_energy`: the beat's finite-difference derivative against the simulator's vector field
  (`dynamics.dipole_vector_field`, the function the ODE solve integrates) evaluated along the limit-cycle
  trajectory of a heart with the given waves (a class prior) at the given heart rate, projected to the leads
  (SE-Diff's L_Euler). The best non-negative scale between them is solved in closed form, so the energy judges
  timing and shape, not the patient's voltage.
* `simulation_energy`: the simulator integrated with diffrax over the beat window (`solve.integrate`), against
  the beat, with the same closed-form scale (our L_sim). `BeatSolve` says how: Heun at 500 Hz (the default),
  fewer and larger Tsit5 steps, or the exact solution of the same ODE. For a constant-rate heart that starts on
  the limit cycle, the phase advances at 2 pi / RR and the dipole channels are the closed-form
  `dynamics.dipole_waveform` of the phase (the vector field is its time derivative), so 'closed_form' is the
  diffrax solve with no truncation error and no sequential loop: one batched evaluation, for accelerators
  where hundreds of tiny solver steps are latency-bound.
Each returns (batch,) dimensionless values, 0 for a beat the simulator would produce. `simulator_energies`
evaluates a chosen set of them at given heart rates (unknown ones stand in as `UNKNOWN_HR_BPM`, all clipped to
`HR_CLIP_BPM`): the one place where training's losses and sampling's simulator guidance get them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from sediff_jax.leads import limb_lead_residuals
from sediff_jax.simulator import dynamics
from sediff_jax.simulator.params import (
    DIPOLE_THETA_HR_EXPONENT, ECGParams, WaveParams, default_rhythm, zero_baseline,
)
from sediff_jax.simulator.projection import dipole_to_leads
from sediff_jax.simulator.rhythm import heart_rate_scaled_waves, tachogram_num_samples
from sediff_jax.simulator.solve import SimulatorConfig, initial_state, integrate, states_to_leads

Array = jax.Array
HR_CLIP_BPM = (30.0, 200.0)
UNKNOWN_HR_BPM = 70.0  # where no heart rate is given (training gives such records no weight in the HR terms)
ENERGY_TERMS = ("euler", "interlead", "sim")
POWER_FLOOR = 1e-6  # mV^2 (or (mV/s)^2 scaled): keeps the relative energies finite for an all-zero beat


def time_derivative(beat: Array, fs: float) -> Array:
    """Central differences along time, mV/s: (batch, samples, leads) -> (batch, samples - 2, leads)."""
    return (beat[:, 2:] - beat[:, :-2]) * (0.5 * fs)


def interlead_energy(beat: Array, fs: float) -> Array:
    """Mean squared limb-lead residual of the signal plus that of its derivative, each relative to the
    corresponding power of the beat: (batch,)."""
    def relative(x):
        residual = jnp.mean(limb_lead_residuals(x) ** 2, axis=(1, 2))
        return residual / (jnp.mean(x**2, axis=(1, 2)) + POWER_FLOOR)

    return relative(beat) + relative(time_derivative(beat, fs) / fs)


def _scaled_fit(prediction: Array, reference: Array) -> Array:
    """Relative squared error after the best non-negative scale s of the reference: (batch,)."""
    dot = jnp.sum(prediction * reference, axis=(1, 2))
    scale = jnp.maximum(dot, 0.0) / (jnp.sum(reference**2, axis=(1, 2)) + POWER_FLOOR)
    error = jnp.sum((prediction - scale[:, None, None] * reference) ** 2, axis=(1, 2))
    return error / (jnp.sum(prediction**2, axis=(1, 2)) + POWER_FLOOR)


def vector_field_leads(waves: WaveParams, hr_mean: Array, num_samples: int, before: int, fs: float) -> Array:
    """d(lead)/dt (mV/s) that the simulator's vector field prescribes along one constant-rate cycle.

    waves: leaves (3, 6) at 60 bpm (a prior's); hr_mean: () bpm. Returns (num_samples, 12), R at `before`.
    """
    rr = 60.0 / hr_mean
    scaled = heart_rate_scaled_waves(waves, hr_mean, DIPOLE_THETA_HR_EXPONENT)
    args = dynamics.VectorFieldArgs(scaled, jnp.full((4,), rr), jnp.asarray(1.0, rr.dtype), zero_baseline(3, rr.dtype))
    t = (jnp.arange(num_samples) - before) / fs
    phase = 2.0 * math.pi * t / rr

    def at(ti, phi):
        state = jnp.concatenate([jnp.stack([jnp.cos(phi), jnp.sin(phi)]), jnp.zeros((3,), phi.dtype)])
        return dynamics.dipole_vector_field(ti, state, args)[2:]

    return dipole_to_leads(jax.vmap(at)(t, phase))  # the tachogram is constant, so any t reads the same rate


def euler_energy(beat: Array, fs: float, before: int, waves: WaveParams, hr_mean: Array) -> Array:
    """L_Euler: (batch,). waves leaves (batch, 3, 6) at 60 bpm; hr_mean (batch,) bpm."""
    field = jax.vmap(vector_field_leads, in_axes=(0, 0, None, None, None))(
        waves, hr_mean, beat.shape[1], before, fs)
    return _scaled_fit(time_derivative(beat, fs), field[:, 1:-1])


BEAT_SOLVERS = ("heun", "tsit5", "euler", "closed_form")


@dataclasses.dataclass(frozen=True)
class BeatSolve:
    """How L_sim simulates its beat: a diffrax `solver` ('heun', 'tsit5', 'euler') with steps at the lowest
    multiple of the beat's rate >= `min_internal_fs` Hz, or 'closed_form' (the exact solution; module docstring)."""

    solver: str = "heun"
    min_internal_fs: float = 500.0

    def __post_init__(self):
        if self.solver not in BEAT_SOLVERS:
            raise ValueError(f"beat solver {self.solver!r} is unknown; expected one of {BEAT_SOLVERS}")
        if not self.min_internal_fs >= 100:
            raise ValueError(f"min_internal_fs={self.min_internal_fs} Hz must be >= 100 Hz")


def closed_form_beat(waves: WaveParams, hr_mean: Array, num_samples: int, before: int, fs: float) -> Array:
    """The exact solution that `simulate_beat` approximates: (num_samples, 12) mV, R at sample `before`."""
    rr = 60.0 / hr_mean
    scaled = heart_rate_scaled_waves(waves, hr_mean, DIPOLE_THETA_HR_EXPONENT)
    phase = 2.0 * math.pi * (jnp.arange(num_samples) - before) / fs / rr
    return dipole_to_leads(dynamics.dipole_waveform(phase, scaled))


def simulate_beat(waves: WaveParams, hr_mean: Array, num_samples: int, before: int, fs: float,
                  solver: str = "heun", min_internal_fs: float = 500.0) -> Array:
    """The simulator integrated with diffrax over one beat window of a constant-rate heart: (num_samples, 12)."""
    if solver == "closed_form":
        return closed_form_beat(waves, hr_mean, num_samples, before, fs)
    config = SimulatorConfig(duration_s=num_samples / fs, fs=fs, solver=solver, min_internal_fs=min_internal_fs)
    rr = 60.0 / hr_mean
    scaled = heart_rate_scaled_waves(waves, hr_mean, DIPOLE_THETA_HR_EXPONENT)
    num_rr = tachogram_num_samples(config.duration_s, config.rr_fs)
    args = dynamics.VectorFieldArgs(scaled, jnp.full((num_rr,), rr), jnp.asarray(config.rr_fs, rr.dtype),
                                    zero_baseline(3, rr.dtype))
    rhythm = default_rhythm(hr_std=0.0)._replace(hr_mean=hr_mean, initial_phase=-2.0 * math.pi * before / fs / rr)
    params = ECGParams(waves, rhythm, args.baseline)
    return states_to_leads(integrate(args, initial_state(params, args, config), config), config)


def simulation_energy(beat: Array, fs: float, before: int, waves: WaveParams, hr_mean: Array,
                      solve: BeatSolve = BeatSolve()) -> Array:
    """L_sim: the simulated beat against the beat, each without its per-lead mean: (batch,)."""
    simulated = jax.vmap(simulate_beat, in_axes=(0, 0, None, None, None, None, None))(
        waves, hr_mean, beat.shape[1], before, fs, solve.solver, solve.min_internal_fs)
    centre = lambda x: x - jnp.mean(x, axis=1, keepdims=True)  # noqa: E731
    return _scaled_fit(centre(beat), centre(simulated))


def simulator_energies(beat: Array, fs: float, before: int, waves: WaveParams, hr_bpm: Array,
                       terms: tuple[str, ...] = ENERGY_TERMS, solve: BeatSolve = BeatSolve()) -> dict[str, Array]:
    """The energies named in `terms` ('euler', 'interlead', 'sim') of beats (batch, samples, 12) mV with R at
    `before`, judged against `waves` (leaves (batch, 3, 6)) at `hr_bpm` (batch,) (NaN: unknown): each (batch,)."""
    unknown = [t for t in terms if t not in ENERGY_TERMS]
    if unknown:
        raise ValueError(f"energy terms {unknown} are unknown; expected some of {ENERGY_TERMS}")
    hr = jnp.clip(jnp.where(jnp.isfinite(hr_bpm), hr_bpm, UNKNOWN_HR_BPM), *HR_CLIP_BPM)
    energies = {}
    if "euler" in terms:
        energies["euler"] = euler_energy(beat, fs, before, waves, hr)
    if "interlead" in terms:
        energies["interlead"] = interlead_energy(beat, fs)
    if "sim" in terms:
        energies["sim"] = simulation_energy(beat, fs, before, waves, hr, solve)
    return energies
