"""The driver: records in batches of one compiled, vmapped fit; results with correlations and timings."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.simulator.fitting.config import FitConfig, FitError, FitResult, FitTarget
from sediff_jax.simulator.fitting.objective import evaluate, optimise, fit_optimizer, model_params, variables_from_waves
from sediff_jax.simulator.fitting.prepare import Prepared, prepare_fit
from sediff_jax.simulator.fitting.timing import wave_peak_times

Array = jax.Array

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


def _fit_batch(prepared: list[Prepared], config: FitConfig) -> list[FitResult]:
    targets = FitTarget(*(jnp.asarray(x) for x in _stack([p.target for p in prepared])))
    variables = jax.tree.map(jnp.asarray, _stack([p.variables for p in prepared]))
    opt_state = fit_optimizer(config).init(variables)
    batch = len(prepared)
    converged = np.zeros(batch, bool)
    iterations = np.full(batch, config.max_iterations)
    history: list[np.ndarray] = []
    done = 0
    while done < config.max_iterations:
        n = min(config.check_every, config.max_iterations - done)
        variables, opt_state, losses = optimise(variables, opt_state, targets, config, n)
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
    fitted, offsets, losses = jax.device_get(evaluate(variables, targets, config))
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
