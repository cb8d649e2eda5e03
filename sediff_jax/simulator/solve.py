"""Integrate the simulator with diffrax and project it to leads.

`simulate(params, key, config)` returns one ECG; `simulate_batch` vmaps it over a batch of parameter sets and
keys and is jitted with the config static, so changing parameter values never retraces. The solve uses a fixed
step at `config.internal_fs` (>= 500 Hz: the QRS is ~16 ms wide), an integer multiple of the output rate so the
output samples fall on solver steps, and `RecursiveCheckpointAdjoint(checkpoints=num_steps)`: everything is
differentiable with `jax.grad`, and runs under `jax.jit` over a batch sharded on a device mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.simulator import dynamics, rhythm
from sediff_jax.simulator.params import (
    DIPOLE_THETA_HR_EXPONENT,
    MCSHARRY_THETA_HR_EXPONENT,
    ECGParams,
)
from sediff_jax.simulator.projection import dipole_to_leads

Array = jax.Array

MODELS = ("dipole", "mcsharry")
SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun, "tsit5": diffrax.Tsit5}
# ECGSYN maps the McSharry z signal linearly onto this range, mV.
MCSHARRY_RANGE_MV = (-0.4, 1.2)


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Static settings of a simulation (hashable: a jit static argument).

    model: 'dipole' -> (time, 12) leads in mV; 'mcsharry' -> (time, 1), ECGSYN-scaled to [-0.4, 1.2] mV.
    duration_s: record length, s.   fs: output sampling rate, Hz.
    min_internal_fs: lower bound of the solver rate, Hz; the solver rate is the smallest integer multiple of fs
      at or above it.
    solver: 'heun' (training), 'tsit5' (fitting) or 'euler'.
    rr_fs: sampling rate of the RR tachogram, Hz (4 Hz resolves the 0.25 Hz respiratory band; ECGSYN uses 1).
    heart_rate_scaling: apply ECGSYN's widths/angles adaptation to the mean heart rate.
    """

    model: str = "dipole"
    duration_s: float = 10.0
    fs: float = 500.0
    min_internal_fs: float = 500.0
    solver: str = "heun"
    rr_fs: float = 4.0
    heart_rate_scaling: bool = True

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r} is unknown; expected one of {MODELS}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r} is unknown; expected one of {tuple(SOLVERS)}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"duration_s={self.duration_s} must be > 0 seconds")
        if not (math.isfinite(self.fs) and self.fs >= 50):
            raise ValueError(f"fs={self.fs} Hz must be >= 50 Hz")
        if not self.min_internal_fs >= 100:
            raise ValueError(f"min_internal_fs={self.min_internal_fs} Hz must be >= 100 Hz")
        if not self.rr_fs > 0:
            raise ValueError(f"rr_fs={self.rr_fs} Hz must be > 0")

    @property
    def num_samples(self) -> int:
        """Output samples: round(duration_s * fs)."""
        return int(round(self.duration_s * self.fs))

    @property
    def substeps(self) -> int:
        """Solver steps per output sample."""
        return max(1, int(math.ceil(self.min_internal_fs / self.fs - 1e-9)))

    @property
    def internal_fs(self) -> float:
        return self.fs * self.substeps

    @property
    def num_steps(self) -> int:
        return (self.num_samples - 1) * self.substeps

    @property
    def num_leads(self) -> int:
        return 12 if self.model == "dipole" else 1


def prepare_args(params: ECGParams, key: Array, config: SimulatorConfig) -> dynamics.VectorFieldArgs:
    """Heart-rate scaling and the RR tachogram: everything the vector field reads, for one record."""
    exponent = DIPOLE_THETA_HR_EXPONENT if config.model == "dipole" else MCSHARRY_THETA_HR_EXPONENT
    if params.waves.theta.shape[-1] != exponent.shape[0]:
        raise ValueError(
            f"the {config.model!r} model has {exponent.shape[0]} waves but the parameters have "
            f"{params.waves.theta.shape[-1]}"
        )
    waves = params.waves
    if config.heart_rate_scaling:
        waves = rhythm.heart_rate_scaled_waves(waves, params.rhythm.hr_mean, exponent)
    num_rr = rhythm.tachogram_num_samples(config.duration_s, config.rr_fs)
    rr = rhythm.rr_tachogram(key, params.rhythm, num_rr, config.rr_fs)
    rr_fs = jnp.asarray(config.rr_fs, params.rhythm.hr_mean.dtype)
    return dynamics.VectorFieldArgs(waves, rr, rr_fs, params.baseline)


def initial_state(params: ECGParams, args: dynamics.VectorFieldArgs, config: SimulatorConfig) -> Array:
    """(2 + channels,): on the unit limit cycle at `initial_phase`; dipole channels at their waveform value."""
    phase = params.rhythm.initial_phase
    cycle = jnp.stack([jnp.cos(phase), jnp.sin(phase)])
    if config.model == "dipole":
        channels = dynamics.dipole_waveform(phase, args.waves) + dynamics.baseline(jnp.zeros(()), args.baseline)
    else:
        channels = jnp.zeros(params.waves.amplitude.shape[:-1], cycle.dtype)
    return jnp.concatenate([cycle, channels])


def vector_field_for(config: SimulatorConfig):
    return dynamics.dipole_vector_field if config.model == "dipole" else dynamics.mcsharry_vector_field


class _StepTo(diffrax.StepTo):
    """`diffrax.StepTo` without its run-time checks (ts increasing, t0 == ts[0], t1 == ts[-1]), which hold by
    construction in `integrate`. Equinox implements those checks as host callbacks: a device-host round trip
    in every program that simulates, and programs that JAX's persistent compilation cache refuses to store
    (so the training step was recompiled in every process)."""

    def wrap(self, direction):
        return self  # integrate always runs forwards (direction +1)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return self.ts[1], 2


def integrate(args: dynamics.VectorFieldArgs, y0: Array, config: SimulatorConfig) -> Array:
    """Solve the ODE from `y0` with prepared `args`: the state at the output samples, (num_samples, 2 + channels).

    The lower-level entry for callers that build `args` themselves (fitting uses an observed RR tachogram).
    """
    # Step times computed in float64 on the host, then cast to the state's dtype; the output samples are
    # every `substeps`-th step.
    step_times = np.arange(config.num_steps + 1, dtype=np.float64) / config.internal_fs
    step_times = jnp.asarray(step_times, y0.dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field_for(config)),
        SOLVERS[config.solver](),
        t0=step_times[0],
        t1=step_times[-1],
        dt0=None,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(t0=True, steps=True),
        stepsize_controller=_StepTo(ts=step_times),
        max_steps=config.num_steps,
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=config.num_steps),
        # exactly max_steps fixed steps cannot run out of steps, and a non-finite state propagates as NaN (the
        # training loop's NaN guard names it); throw=True would add a host callback, as _StepTo explains
        throw=False,
    )
    return sol.ys[:: config.substeps]


def solve_states(params: ECGParams, key: Array, config: SimulatorConfig) -> Array:
    """The ODE state at the output samples: (num_samples, 2 + channels)."""
    args = prepare_args(params, key, config)
    return integrate(args, initial_state(params, args, config), config)


def states_to_leads(states: Array, config: SimulatorConfig) -> Array:
    """(time, 2 + channels) states -> (time, leads) mV."""
    channels = states[:, 2:]
    if config.model == "dipole":
        return dipole_to_leads(channels)
    lo, hi = MCSHARRY_RANGE_MV
    zmin, zmax = jnp.min(channels), jnp.max(channels)
    return lo + (channels - zmin) * (hi - lo) / (zmax - zmin)


def simulate(params: ECGParams, key: Array, config: SimulatorConfig = SimulatorConfig()) -> Array:
    """One ECG.

    Args:
      params: `ECGParams` with unbatched leaves (dipole: 3 channels x 6 waves; mcsharry: 1 x 5).
      key: PRNG key of the RR tachogram.
      config: static settings.

    Returns:
      ecg: (config.num_samples, 12) float32 mV in `LEAD_NAMES` order (dipole), or (num_samples, 1) (mcsharry).
    """
    return states_to_leads(solve_states(params, key, config), config)


@functools.partial(jax.jit, static_argnames=("config",))
def simulate_batch(params: ECGParams, keys: Array, config: SimulatorConfig = SimulatorConfig()) -> Array:
    """A batch of ECGs: params leaves (batch, ...), keys (batch, ...) -> (batch, num_samples, leads) mV."""
    return jax.vmap(simulate, in_axes=(0, 0, None))(params, keys, config)


def sample_times(config: SimulatorConfig) -> np.ndarray:
    """(num_samples,) s, the times of the output samples."""
    return np.arange(config.num_samples) / config.fs
