"""Fit the dipole simulator to recorded 12-lead ECGs by gradient descent through the diffrax ODE.

Two modes (`FitConfig.mode`):

* `beat`: the median beat of the record (window `beat_window_s` around the R peaks) against one simulated
  cycle at the record's mean heart rate. Fitted: each dipole channel's wave angles, widths and amplitudes
  (3 channels x 6 waves x 3). Heart rate and its variability are measured from the R peaks.
* `strip`: the whole strip (high-passed at `strip_highpass_hz`) against a simulation whose RR tachogram is
  initialised from the R peaks and fitted sample by sample, with the initial phase and the respiratory baseline;
  the waves start from a beat-mode fit (`strip_warm_start`).

Both integrate the simulator with diffrax inside the loss (`solve.integrate`), vmapped over a batch of records
and optimised with Adam (elementwise, so records in a batch do not interact). Parameters are mapped from
unconstrained variables into physiological bounds (`THETA_BOUNDS`, `WIDTH_BOUNDS`, `AMPLITUDE_LIMIT_MV`, ...).
The initial guess comes from the median beat: Kors' dipole locates the P and T waves, and the amplitudes solve
a linear least-squares problem for the closed-form waveform. A per-lead constant offset is solved in closed form
at every step. Angles and widths are reported at 60 bpm, the simulator's convention (`params.py`), so fitted
parameters plug straight into `simulate` and into the per-class priors (`sediff_jax.simulator.priors`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sediff_jax.leads import LEAD_NAMES, NUM_LEADS, leads_from_independent
from sediff_jax.signal.beats import median_beat
from sediff_jax.signal.filters import highpass
from sediff_jax.signal.rpeaks import detect_r_peaks
from sediff_jax.simulator import dynamics
from sediff_jax.simulator.params import (
    DIPOLE_CHANNELS,
    DIPOLE_THETA_HR_EXPONENT,
    DIPOLE_WAVES,
    HR_RANGE_BPM,
    BaselineParams,
    ECGParams,
    WaveParams,
    default_rhythm,
    dipole_params,
    zero_baseline,
)
from sediff_jax.simulator.projection import DOWER, KORS
from sediff_jax.simulator.rhythm import heart_rate_scaled_waves, tachogram_num_samples
from sediff_jax.simulator.solve import SimulatorConfig, initial_state, integrate, states_to_leads

Array = jax.Array

FIT_MODES = ("beat", "strip")
NUM_CHANNELS, NUM_WAVES = len(DIPOLE_CHANNELS), len(DIPOLE_WAVES)
# Waves whose peak times are reported; T stands for the whole repolarisation (ST + T waves).
TIMED_WAVES = ("P", "Q", "R", "S", "T")

# Physiological bounds at 60 bpm, rows P, Q, R, S, ST, T; rad on the limit cycle (x 159 ms at 60 bpm).
THETA_BOUNDS = np.array(
    [[-2.1, -0.5], [-0.45, -0.02], [-0.15, 0.15], [0.02, 0.45], [0.2, 1.6], [0.7, 2.9]], np.float32
)
WIDTH_BOUNDS = np.array(
    [[0.04, 0.45], [0.015, 0.25], [0.02, 0.25], [0.015, 0.25], [0.08, 0.8], [0.08, 0.9]], np.float32
)
AMPLITUDE_LIMIT_MV = 5.0
RR_BOUNDS_S = (60.0 / HR_RANGE_BPM[1], 60.0 / HR_RANGE_BPM[0])
RESP_FREQUENCY_BOUNDS_HZ = (0.1, 0.5)
RESP_AMPLITUDE_LIMIT_MV = 1.0
# Wave peak-time search grid (points per cycle) for the reported timings.
TIMING_GRID = 4096


class FitError(ValueError):
    """A recording that cannot be fitted (flat, too short, no R peaks, NaN); the message says which and why."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to fit (static and hashable).

    mode: 'beat' (median beat) or 'strip' (the whole strip).
    fs: rate of the signals passed in and of the fit, Hz.
    solver: diffrax solver of the simulator ('heun', 'tsit5', 'euler'); min_internal_fs: its lowest rate, Hz.
      Heun at 500 Hz fits LUDB as well as Tsit5 (same correlations and timings) at a third of the cost.
    beat_window_s: (before, after) the R peak, s; the misfit covers [-cycle_before * RR, (1 - cycle_before) * RR]
      inside it, i.e. exactly one cardiac cycle.
    strip_duration_s: length of the fitted strip, s; strip_highpass_hz: baseline-wander filter of the real strip
      (None keeps it as recorded); strip_warm_start: start the strip's waves from a median-beat fit;
      strip_learning_rate: Adam's rate in strip mode (smaller: the warm start is already close; on LUDB it
      fits better than 0.02).
    max_iterations, check_every: Adam steps at most, and how often convergence is checked.
    learning_rate: Adam's in beat mode, in the unconstrained variables; decays by cosine to
      final_learning_rate_fraction.
    tolerance: converged when the loss fell by less than this fraction over the last `check_every` steps.
    lead_floor_mv: each lead's squared error is divided by (its variance + floor^2), so small leads count.
    batch_size: records per compiled batch; the last batch is padded.
    """

    mode: str = "beat"
    fs: float = 500.0
    solver: str = "heun"
    min_internal_fs: float = 500.0
    beat_window_s: tuple[float, float] = (0.45, 0.75)
    cycle_before: float = 0.4
    strip_duration_s: float = 10.0
    strip_highpass_hz: float | None = 0.5
    strip_warm_start: bool = True
    strip_learning_rate: float = 0.005
    max_iterations: int = 400
    check_every: int = 100
    learning_rate: float = 0.02
    final_learning_rate_fraction: float = 0.05
    tolerance: float = 2e-3
    lead_floor_mv: float = 0.05
    batch_size: int = 64
    rr_fs: float = 4.0

    def __post_init__(self):
        if self.mode not in FIT_MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; expected one of {FIT_MODES}")
        if self.max_iterations < 1 or self.check_every < 1:
            raise ValueError("max_iterations and check_every must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        before, after = self.beat_window_s
        if not (before > 0 and after > 0):
            raise ValueError(f"beat_window_s={self.beat_window_s} must be two positive durations, s")

    @property
    def simulator_config(self) -> SimulatorConfig:
        return SimulatorConfig(
            model="dipole",
            duration_s=self.num_samples / self.fs,
            fs=self.fs,
            min_internal_fs=self.min_internal_fs,
            solver=self.solver,
            rr_fs=self.rr_fs,
        )

    @property
    def beat_samples(self) -> int:
        """Samples in the median-beat window."""
        before, after = self.beat_window_s
        return int(round(before * self.fs)) + int(round(after * self.fs))

    @property
    def num_samples(self) -> int:
        """Samples of the fitted signal: the beat window (beat mode) or the strip."""
        return self.beat_samples if self.mode == "beat" else int(round(self.strip_duration_s * self.fs))

    @property
    def before_samples(self) -> int:
        return int(round(self.beat_window_s[0] * self.fs))


class FitTarget(NamedTuple):
    """Per-record constants of the misfit (a batch has a leading axis on every leaf).

    signal: (time, 12) mV.  mask: (time,) float 0/1.  lead_weight: (12,) sums to 1.
    rr: (num_rr,) s, the tachogram (beat mode: constant; strip: the initial guess).
    hr_mean: () bpm, for the heart-rate scaling of the waves.  initial_phase: () rad at t = 0.
    """

    signal: Array
    mask: Array
    lead_weight: Array
    rr: Array
    hr_mean: Array
    initial_phase: Array


@dataclasses.dataclass
class FitResult:
    """One record's fit, all NumPy.

    params: fitted `ECGParams` (angles and widths at 60 bpm; hr_mean/hr_std measured (beat) or from the fitted
      tachogram (strip)).
    offset_mv: (12,) per-lead constant added to the simulation.
    real, fitted: (time, 12) float32 mV at `fs`: the median beat (beat mode, R at `before_s`) or the strip.
    mask: (time,) bool, the samples the misfit covers.  times_s: (time,) relative to the R peak (beat) or from
      the strip's start.
    lead_correlation, lead_rmse_mv: (12,) over the mask.
    wave_times_ms: P, Q, R, S, T peak times relative to R from the fitted dipole (peak of each wave's vector
      magnitude; T = ST + T waves).  lead_wave_times_ms: (12, 5) the same per lead: P and T at the largest
      deflection of the wave, R at the QRS maximum, Q and S at the QRS minimum before and after R.
    loss: final misfit (lead-weighted mean square, dimensionless).  iterations: steps until converged (or all).
    converged: the loss settled within `tolerance`.  loss_history: loss at every convergence check.
    """

    mode: str
    fs: float
    params: ECGParams
    offset_mv: np.ndarray
    real: np.ndarray
    fitted: np.ndarray
    mask: np.ndarray
    times_s: np.ndarray
    lead_correlation: np.ndarray
    lead_rmse_mv: np.ndarray
    wave_times_ms: dict[str, float]
    lead_wave_times_ms: np.ndarray
    loss: float
    iterations: int
    converged: bool
    loss_history: list[float]
    num_beats: int
    rr_s: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: parameters with units, fit quality, timings, convergence."""
        waves = self.params.waves
        per_wave = {
            name: {
                channel: {
                    "theta_rad_at_60bpm": float(waves.theta[c, i]),
                    "width_rad_at_60bpm": float(waves.width[c, i]),
                    "amplitude_mv": float(waves.amplitude[c, i]),
                }
                for c, channel in enumerate(DIPOLE_CHANNELS)
            }
            for i, name in enumerate(DIPOLE_WAVES)
        }
        rhythm, baseline = self.params.rhythm, self.params.baseline
        return {
            "mode": self.mode,
            "fs_hz": self.fs,
            "num_beats": self.num_beats,
            "parameters": {
                "waves": per_wave,
                "heart_rate_bpm": float(rhythm.hr_mean),
                "heart_rate_std_bpm": float(rhythm.hr_std),
                "rr_s": self.rr_s,
                "initial_phase_rad": float(rhythm.initial_phase),
                "respiration_amplitude_mv": {c: float(v) for c, v in zip(DIPOLE_CHANNELS, baseline.resp_amplitude)},
                "respiration_frequency_hz": float(baseline.resp_frequency),
                "lead_offset_mv": {lead: float(v) for lead, v in zip(LEAD_NAMES, self.offset_mv)},
            },
            "quality": {
                "lead_correlation": {lead: float(v) for lead, v in zip(LEAD_NAMES, self.lead_correlation)},
                "lead_rmse_mv": {lead: float(v) for lead, v in zip(LEAD_NAMES, self.lead_rmse_mv)},
                "median_correlation": float(np.median(self.lead_correlation)),
                "median_rmse_mv": float(np.median(self.lead_rmse_mv)),
                "loss": self.loss,
            },
            "wave_times_ms": {k: float(v) for k, v in self.wave_times_ms.items()},
            "lead_wave_times_ms": {
                lead: {w: float(self.lead_wave_times_ms[l, k]) for k, w in enumerate(TIMED_WAVES)}
                for l, lead in enumerate(LEAD_NAMES)
            },
            "iterations": self.iterations,
            "converged": self.converged,
            "loss_history": self.loss_history,
        }


# ----------------------------------------------------------------------------------------------------------
# Bounded parametrisation: parameters = bounded(unconstrained variables).


def _bounded(u: Array, lo, hi) -> Array:
    return lo + (hi - lo) * jax.nn.sigmoid(u)


def _unbounded(x: np.ndarray, lo, hi) -> np.ndarray:
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
        "theta": _unbounded(waves.theta, THETA_BOUNDS[:, 0], THETA_BOUNDS[:, 1]),
        "width": _unbounded(waves.width, WIDTH_BOUNDS[:, 0], WIDTH_BOUNDS[:, 1]),
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


def _optimizer(config: FitConfig) -> optax.GradientTransformation:
    rate = config.strip_learning_rate if config.mode == "strip" else config.learning_rate
    schedule = optax.cosine_decay_schedule(rate, config.max_iterations, alpha=config.final_learning_rate_fraction)
    return optax.adam(schedule)


@functools.partial(jax.jit, static_argnames=("config", "num_iterations"))
def _optimise(variables, opt_state, targets: FitTarget, config: FitConfig, num_iterations: int):
    """`num_iterations` Adam steps on a batch; returns variables, optimiser state and (num_iterations, batch)."""
    optimizer = _optimizer(config)

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
def _evaluate(variables, targets: FitTarget, config: FitConfig):
    def one(v, target):
        simulated = simulate_fit(v, target, config)
        offset = lead_offsets(simulated, target)
        return simulated + offset, offset, _misfit_of(simulated, target)

    return jax.vmap(one)(variables, targets)


# ----------------------------------------------------------------------------------------------------------
# Host side: checks, targets and the initial guess (NumPy).


@functools.lru_cache(maxsize=1)
def lead_matrix() -> np.ndarray:
    """(12, 3): the linear map from the dipole (X, Y, Z) to the 12 leads (Dower plus the derived limb leads)."""
    return leads_from_independent(DOWER.T.astype(np.float64)).T


def _scaled(waves: WaveParams, hr_mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Angles and widths at `hr_mean` (ECGSYN scaling), NumPy float64."""
    h = math.sqrt(hr_mean / 60.0)
    theta = np.asarray(waves.theta, np.float64) * h ** DIPOLE_THETA_HR_EXPONENT.astype(np.float64)
    return theta, np.asarray(waves.width, np.float64) * h


def _wave_components(waves: WaveParams, hr_mean: float, phase: np.ndarray) -> np.ndarray:
    """(len(phase), channels, waves) mV: each wave's closed-form contribution to each dipole channel."""
    theta, width = _scaled(waves, hr_mean)
    dth = phase[:, None, None] - theta
    dth = dth - 2.0 * np.pi * np.round(dth / (2.0 * np.pi))
    return np.asarray(waves.amplitude, np.float64) * np.exp(-0.5 * (dth / width) ** 2)


def wave_peak_times(waves: WaveParams, hr_mean: float) -> tuple[dict[str, float], np.ndarray]:
    """Peak times of the fitted waves relative to the R peak (ms), from the closed-form cycle at `hr_mean`.

    Returns ({'P','Q','R','S','T': ms} from the dipole's vector magnitude, (12, 5) per lead); see `FitResult`.
    """
    rr_ms = 60000.0 / hr_mean
    phase = np.linspace(-np.pi, np.pi, TIMING_GRID, endpoint=False)
    t_ms = phase / (2.0 * np.pi) * rr_ms
    comp = _wave_components(waves, hr_mean, phase)  # (G, 3, 6)
    p, q, r, s, st, t = (comp[..., k] for k in range(NUM_WAVES))
    magnitude = lambda x: np.linalg.norm(x, axis=-1)  # noqa: E731
    global_times = {
        "P": t_ms[np.argmax(magnitude(p))],
        "Q": t_ms[np.argmax(magnitude(q))],
        "R": t_ms[np.argmax(magnitude(r))],
        "S": t_ms[np.argmax(magnitude(s))],
        "T": t_ms[np.argmax(magnitude(st + t))],
    }
    leads = np.einsum("gcw,lc->glw", comp, lead_matrix())  # (G, 12, 6)
    qrs = leads[..., 1:4].sum(-1)
    repolarisation = leads[..., 4] + leads[..., 5]
    in_qrs = np.abs(t_ms) <= min(150.0, 0.3 * rr_ms)
    per_lead = np.zeros((NUM_LEADS, len(TIMED_WAVES)))
    for lead in range(NUM_LEADS):
        r_index = np.flatnonzero(in_qrs)[np.argmax(qrs[in_qrs, lead])]
        before = in_qrs & (np.arange(TIMING_GRID) <= r_index)
        after = in_qrs & (np.arange(TIMING_GRID) >= r_index)
        per_lead[lead] = [
            t_ms[np.argmax(np.abs(leads[:, lead, 0]))],
            t_ms[np.flatnonzero(before)[np.argmin(qrs[before, lead])]],
            t_ms[r_index],
            t_ms[np.flatnonzero(after)[np.argmin(qrs[after, lead])]],
            t_ms[np.argmax(np.abs(repolarisation[:, lead]))],
        ]
    return {k: float(v) for k, v in global_times.items()}, per_lead


def _check_signal(ecg: np.ndarray, fs: float, name: str) -> np.ndarray:
    ecg = np.asarray(ecg, np.float32)
    if ecg.ndim != 2 or ecg.shape[1] != NUM_LEADS:
        raise FitError(f"{name}: expected (time, {NUM_LEADS}) leads in LEAD_NAMES order, got shape {ecg.shape}")
    if not np.all(np.isfinite(ecg)):
        raise FitError(f"{name}: the signal contains NaN or infinite values")
    flat = np.std(ecg, axis=0) < 1e-3
    if flat.any():
        leads = ", ".join(LEAD_NAMES[k] for k in np.flatnonzero(flat))
        raise FitError(f"{name}: flat signal (std < 1 uV) in lead(s) {leads}")
    return ecg


def _lead_weights(signal: np.ndarray, mask: np.ndarray, floor_mv: float) -> np.ndarray:
    variance = np.var(signal[mask.astype(bool)], axis=0)
    weight = 1.0 / (variance + floor_mv**2)
    return (weight / weight.sum()).astype(np.float32)


def _cycle_mask(config: FitConfig, rr_s: float) -> np.ndarray:
    t = (np.arange(config.beat_samples) - config.before_samples) / config.fs
    return (t >= -config.cycle_before * rr_s) & (t < (1.0 - config.cycle_before) * rr_s)


def initial_waves(beat: np.ndarray, mask: np.ndarray, weight: np.ndarray, config: FitConfig, rr_s: float) -> WaveParams:
    """A starting point for one median beat (R at `config.before_samples`), NumPy leaves.

    Angles: R at the dipole magnitude's maximum near the detected R, P and T at its maxima in their windows,
    Q, S and ST from the normal template's timing. Widths: the template's. Amplitudes: weighted linear least
    squares of the closed-form waveform (with free per-lead offsets) against the beat.
    """
    fs, before = config.fs, config.before_samples
    hr = 60.0 / rr_s
    t = (np.arange(beat.shape[0]) - before) / fs
    independent = np.concatenate([beat[:, :2], beat[:, 6:]], axis=1)
    xyz = independent @ KORS.T.astype(np.float64)
    xyz = xyz - np.median(xyz[mask], axis=0)
    magnitude = np.linalg.norm(xyz, axis=1)
    template = dipole_params().waves
    theta_template, _ = _scaled(template, hr)
    t_template = theta_template[0] / (2.0 * np.pi) * rr_s

    def peak_time(lo: float, hi: float, default: float) -> float:
        window = mask & (t >= lo) & (t <= hi)
        return float(t[window][np.argmax(magnitude[window])]) if window.any() else default

    r_time = peak_time(-0.03, 0.03, 0.0)
    p_time = peak_time(-min(0.3, 0.4 * rr_s), -0.07, t_template[0])
    t_time = peak_time(max(0.1, 0.16 * math.sqrt(rr_s)), min(0.5 * rr_s + 0.05, config.beat_window_s[1]),
                       t_template[5])
    times = np.array([p_time, t_template[1] + r_time, r_time, t_template[3] + r_time,
                      r_time + 0.45 * (t_time - r_time), t_time])
    h = math.sqrt(hr / 60.0)
    theta60 = (2.0 * np.pi * times / rr_s) / h ** DIPOLE_THETA_HR_EXPONENT.astype(np.float64)
    theta60 = np.clip(theta60, THETA_BOUNDS[:, 0] + 0.01, THETA_BOUNDS[:, 1] - 0.01)
    width60 = np.clip(np.asarray(template.width[0]), WIDTH_BOUNDS[:, 0], WIDTH_BOUNDS[:, 1])
    shared = WaveParams(
        theta=np.tile(theta60, (NUM_CHANNELS, 1)),
        width=np.tile(width60, (NUM_CHANNELS, 1)),
        amplitude=np.ones((NUM_CHANNELS, NUM_WAVES)),
    )
    # Linear least squares for the amplitudes a[c, i] and per-lead offsets, rows (time, lead) on the mask.
    basis = _wave_components(shared, hr, 2.0 * np.pi * t[mask] / rr_s)[:, 0, :]  # (n, waves), unit amplitudes
    lead_map = lead_matrix()  # (12, 3)
    sqrt_w = np.sqrt(weight)[None, :, None]
    design_a = np.einsum("nw,lc->nlcw", basis, lead_map).reshape(basis.shape[0], NUM_LEADS, -1)
    design_o = np.broadcast_to(np.eye(NUM_LEADS), (basis.shape[0], NUM_LEADS, NUM_LEADS))
    design = (np.concatenate([design_a, design_o], axis=-1) * sqrt_w).reshape(-1, design_a.shape[-1] + NUM_LEADS)
    rhs = (beat[mask] * np.sqrt(weight)[None, :]).reshape(-1)
    ridge = 1e-3 * np.sqrt(np.mean(design**2)) * np.eye(design.shape[1])[: design_a.shape[-1]]
    solution, *_ = np.linalg.lstsq(
        np.concatenate([design, ridge * np.sqrt(design.shape[0])]),
        np.concatenate([rhs, np.zeros(ridge.shape[0])]),
        rcond=None,
    )
    amplitude = solution[: design_a.shape[-1]].reshape(NUM_CHANNELS, NUM_WAVES)
    return shared._replace(amplitude=amplitude.astype(np.float32), theta=shared.theta.astype(np.float32),
                           width=shared.width.astype(np.float32))


def _tachogram_from_peaks(r_peaks: np.ndarray, fs: float, num_rr: int, rr_fs: float) -> np.ndarray:
    """RR (s) at the tachogram's sample times (k - 1) / rr_fs: the interval the time falls in, held at the ends."""
    times = np.asarray(r_peaks, np.float64) / fs
    intervals = np.diff(times)
    grid = (np.arange(num_rr) - 1.0) / rr_fs
    k = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(intervals) - 1)
    return intervals[k].astype(np.float32)


@dataclasses.dataclass
class _Prepared:
    target: FitTarget
    variables: dict[str, np.ndarray]
    num_beats: int
    hr_std: float
    times_s: np.ndarray


def prepare_fit(ecg: np.ndarray, config: FitConfig, r_peaks: np.ndarray | None = None, name: str = "record") -> _Prepared:
    """Checks one recording and builds its misfit target and initial variables.

    Args:
      ecg: (time, 12) mV at `config.fs`, `LEAD_NAMES` order.
      r_peaks: sample indices; detected (`sediff_jax.signal.rpeaks`) when None.
    Raises:
      FitError naming `name`: wrong shape, NaN, a flat lead, too short, fewer than two R peaks, heart rate out
      of range, or no complete beat window.
    """
    ecg = _check_signal(ecg, config.fs, name)
    duration = ecg.shape[0] / config.fs
    if config.mode == "strip" and ecg.shape[0] < config.num_samples:
        raise FitError(f"{name}: {duration:.2f} s long; strip fitting needs {config.strip_duration_s:g} s")
    minimum = sum(config.beat_window_s)
    if duration < minimum:
        raise FitError(f"{name}: {duration:.2f} s long; too short to fit (need at least {minimum:g} s)")
    if r_peaks is None:
        r_peaks = detect_r_peaks(ecg, config.fs)
    r_peaks = np.asarray(r_peaks, np.int64)
    if r_peaks.size < 2:
        raise FitError(f"{name}: fewer than two R peaks detected; is this an ECG?")
    rr_beats = np.diff(r_peaks) / config.fs
    rr_s = float(np.median(rr_beats))
    hr = 60.0 / rr_s
    if not HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1]:
        raise FitError(f"{name}: heart rate {hr:.0f} bpm from the R peaks is outside {HR_RANGE_BPM} bpm")
    hr_std = float(np.std(60.0 / rr_beats))
    try:
        beat, num_beats = median_beat(ecg, r_peaks, config.fs, *config.beat_window_s)
    except ValueError as e:
        raise FitError(f"{name}: {e}") from None
    mask = _cycle_mask(config, rr_s)
    weight = _lead_weights(beat, mask, config.lead_floor_mv)
    waves = initial_waves(beat, mask, weight, config, rr_s)
    variables = variables_from_waves(waves)
    num_rr = tachogram_num_samples(config.simulator_config.duration_s, config.rr_fs)
    if config.mode == "beat":
        signal, times = beat, (np.arange(config.num_samples) - config.before_samples) / config.fs
        rr = np.full((num_rr,), rr_s, np.float32)
        initial_phase = -2.0 * np.pi * config.before_samples / config.fs / rr_s
    else:
        signal = ecg[: config.num_samples]
        if config.strip_highpass_hz:
            signal = highpass(signal, config.fs, config.strip_highpass_hz)
        times = np.arange(config.num_samples) / config.fs
        peaks = r_peaks[r_peaks < config.num_samples]
        if peaks.size < 2:
            raise FitError(f"{name}: fewer than two R peaks in the first {config.strip_duration_s:g} s")
        mask = np.ones(config.num_samples, bool)
        weight = _lead_weights(signal, mask, config.lead_floor_mv)
        rr = _tachogram_from_peaks(peaks, config.fs, num_rr, config.rr_fs)
        first = peaks[0] / config.fs
        initial_phase = -2.0 * np.pi * first / (np.diff(peaks[:2])[0] / config.fs)
        initial_phase = initial_phase - 2.0 * np.pi * np.round(initial_phase / (2.0 * np.pi))
        hr = 60.0 / float(np.mean(np.diff(peaks)) / config.fs)
        variables.update(
            rr=_unbounded(rr, *RR_BOUNDS_S),
            initial_phase=np.float32(initial_phase),
            resp_amplitude=np.zeros((NUM_CHANNELS,), np.float32),
            resp_frequency=_unbounded(0.25, *RESP_FREQUENCY_BOUNDS_HZ),
        )
    target = FitTarget(
        signal=np.asarray(signal, np.float32),
        mask=mask.astype(np.float32),
        lead_weight=weight,
        rr=rr,
        hr_mean=np.float32(hr),
        initial_phase=np.float32(initial_phase),
    )
    return _Prepared(target, variables, num_beats, hr_std, times)


# ----------------------------------------------------------------------------------------------------------
# The driver.


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    a, b = a[mask] - a[mask].mean(0), b[mask] - b[mask].mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-20)


def fit_ecgs(
    ecgs: Sequence[np.ndarray],
    config: FitConfig = FitConfig(),
    r_peaks: Sequence[np.ndarray | None] | None = None,
    names: Sequence[str] | None = None,
    progress=None,
) -> list[FitResult]:
    """Fit the simulator to each recording, `config.batch_size` at a time under one compiled, vmapped step.

    Args:
      ecgs: each (time, 12) float mV at `config.fs` in `LEAD_NAMES` order (lengths may differ in beat mode).
      r_peaks: optional R-peak sample indices per record (detected when None).
      names: how errors name each record (default 'record <i>').
      progress: optional callable(num_records_done) after each batch.

    Returns:
      one `FitResult` per recording, in order.
    Raises:
      FitError for a recording that cannot be fitted (before any fitting starts).
    """
    names = list(names) if names is not None else [f"record {i}" for i in range(len(ecgs))]
    r_peaks = list(r_peaks) if r_peaks is not None else [None] * len(ecgs)
    prepared = [prepare_fit(e, config, p, n) for e, p, n in zip(ecgs, r_peaks, names)]
    if config.mode == "strip" and config.strip_warm_start:
        # The median beat pins the waves down cheaply; the strip fit then refines them with the rhythm.
        beat_config = dataclasses.replace(config, mode="beat")
        beat_fits = fit_ecgs(ecgs, beat_config, r_peaks, names)
        for prep, beat_fit in zip(prepared, beat_fits):
            prep.variables.update(variables_from_waves(beat_fit.params.waves))
    results: list[FitResult] = []
    for start in range(0, len(prepared), config.batch_size):
        chunk = prepared[start : start + config.batch_size]
        padded = chunk + [chunk[-1]] * (min(config.batch_size, len(prepared)) - len(chunk))
        results += _fit_batch(padded, config)[: len(chunk)]
        if progress is not None:
            progress(len(results))
    return results


def fit_ecg(ecg: np.ndarray, config: FitConfig = FitConfig(), r_peaks: np.ndarray | None = None,
            name: str = "record") -> FitResult:
    """`fit_ecgs` for one recording."""
    return fit_ecgs([ecg], dataclasses.replace(config, batch_size=1), [r_peaks], [name])[0]


def _fit_batch(prepared: list[_Prepared], config: FitConfig) -> list[FitResult]:
    targets = FitTarget(*(jnp.asarray(x) for x in _stack([p.target for p in prepared])))
    variables = jax.tree.map(jnp.asarray, _stack([p.variables for p in prepared]))
    opt_state = _optimizer(config).init(variables)
    batch = len(prepared)
    converged = np.zeros(batch, bool)
    iterations = np.full(batch, config.max_iterations)
    history: list[np.ndarray] = []
    done = 0
    while done < config.max_iterations:
        n = min(config.check_every, config.max_iterations - done)
        variables, opt_state, losses = _optimise(variables, opt_state, targets, config, n)
        done += n
        current = np.asarray(losses[-1], np.float64)
        if not np.all(np.isfinite(current)):
            bad = int(np.flatnonzero(~np.isfinite(current))[0])
            raise FitError(f"fit diverged (non-finite misfit) for batch item {bad} after {done} iterations")
        if history:
            settled = ~converged & (history[-1] - current <= config.tolerance * np.abs(history[-1]))
            converged |= settled
            iterations[settled] = done
        history.append(current)
        if converged.all():
            break
    fitted, offsets, losses = jax.device_get(_evaluate(variables, targets, config))
    host_vars = jax.device_get(variables)
    results = []
    for k, prep in enumerate(prepared):
        v = jax.tree.map(lambda x: x[k], host_vars)
        target = jax.tree.map(lambda x: np.asarray(x[k]), targets)
        params, rr = jax.device_get(model_params(jax.tree.map(jnp.asarray, v), FitTarget(*map(jnp.asarray, target)),
                                                 config))
        if config.mode == "strip":
            # Heart rate statistics of the fitted tachogram over the strip.
            grid = (np.arange(rr.shape[0]) - 1.0) / config.rr_fs
            inside = (grid >= 0) & (grid <= config.strip_duration_s)
            hr_series = 60.0 / np.asarray(rr)[inside]
            hr_mean, hr_std = float(np.mean(hr_series)), float(np.std(hr_series))
        else:
            hr_mean, hr_std = float(target.hr_mean), prep.hr_std
        params = jax.tree.map(np.asarray, params)
        params = params._replace(rhythm=params.rhythm._replace(hr_mean=np.float32(hr_mean), hr_std=np.float32(hr_std)))
        mask = target.mask.astype(bool)
        real, fit = target.signal, np.asarray(fitted[k], np.float32)
        global_times, lead_times = wave_peak_times(params.waves, float(target.hr_mean))
        results.append(
            FitResult(
                mode=config.mode,
                fs=config.fs,
                params=params,
                offset_mv=np.asarray(offsets[k], np.float32),
                real=real,
                fitted=fit,
                mask=mask,
                times_s=prep.times_s,
                lead_correlation=_pearson(real, fit, mask),
                lead_rmse_mv=np.sqrt(np.mean((real[mask] - fit[mask]) ** 2, axis=0)),
                wave_times_ms=global_times,
                lead_wave_times_ms=lead_times,
                loss=float(losses[k]),
                iterations=int(iterations[k]),
                converged=bool(converged[k]),
                loss_history=[float(h[k]) for h in history],
                num_beats=prep.num_beats,
                rr_s=60.0 / float(target.hr_mean),
            )
        )
    return results
