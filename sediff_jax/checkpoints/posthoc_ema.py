"""Post-hoc EMA (Karras et al. 2024, EDM2 sec. 3): choose the EMA length after training, from kept checkpoints.

Every kept checkpoint of a run holds the EMA of its parameter iterates p_0 (the initial or warm-start weights),
p_1, ..., p_s: a known weighting of them (`ema_profile`, `optim.update_ema`'s warm-up included). Any other
averaging of the iterates, written as a weight vector (`power_profile`: EDM2's power-function EMA of relative
width sigma_rel; `ema_profile` with another decay), is approximated by the least-squares combination of the
kept snapshots' profiles (`fit_profile`), and the same coefficients combine the snapshots' weights
(`combine_snapshots`). With a checkpoint every ~EMA length / 4 steps, the profiles of lengths from that spacing
up to the whole run are matched to within a few per cent; `fit_profile` reports the error, so an unreachable
target is visible rather than silently approximated.

The profiles assume one continuous run from step 0 (resumes are continuous; a warm start begins a new run at
step 0) in which every step updated the EMA: a step skipped for a non-finite loss shifts them by one step.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from sediff_jax.checkpoints import stage
from sediff_jax.checkpoints.errors import CheckpointError
from sediff_jax.checkpoints.trained import load_denoiser

PyTree = Any

SIGMA_REL_MAX = float(np.sqrt(1.0 / 12.0))  # a power profile's sigma_rel at exponent 0 (the plain mean): 0.2887


def ema_profile(step: int, decay: float) -> np.ndarray:
    """(step + 1,) weights of the iterates p_0..p_step in the EMA after `step` updates of `optim.update_ema`
    (effective decay d_k = min(decay, k / (9 + k)) at update k = 1..step, EMA_0 = p_0); they sum to 1."""
    if step < 0 or not 0.0 <= decay < 1.0:
        raise ValueError(f"step={step} must be >= 0 and decay={decay} in [0, 1)")
    k = np.arange(1, step + 1, dtype=np.float64)
    d = np.minimum(decay, k / (9.0 + k))
    if decay == 0.0:  # update_ema returns the parameters themselves
        d = np.zeros_like(k)
    with np.errstate(divide="ignore"):
        log_d = np.log(d)
    tail = np.concatenate([np.cumsum(log_d[::-1])[::-1][1:], [0.0]]) if step else np.zeros(0)  # sum_{j>k} log d_j
    weights = np.empty(step + 1)
    weights[0] = np.exp(log_d.sum())
    weights[1:] = (1.0 - d) * np.exp(tail)
    return weights


def power_exponent(sigma_rel: float) -> float:
    """The exponent gamma of EDM2's power-function EMA (weights ~ k^gamma over the run) whose relative standard
    deviation is `sigma_rel` in (0, SIGMA_REL_MAX): the positive root of
    sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))."""
    if not 0.0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel={sigma_rel} must be in (0, {SIGMA_REL_MAX:.4f}) (larger would weigh early "
                         "iterates more than late ones)")
    inverse = sigma_rel ** -2.0
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_profile(step: int, sigma_rel: float) -> np.ndarray:
    """(step + 1,) weights of p_0..p_step in EDM2's power-function EMA at `step` (update k with decay
    (1 - 1/k)^(gamma + 1)): w_k = (k^(gamma+1) - (k-1)^(gamma+1)) / step^(gamma+1), w_0 = 0."""
    if step < 1:
        raise ValueError(f"step={step} must be >= 1")
    exponent = power_exponent(sigma_rel) + 1.0
    k = np.arange(step + 1, dtype=np.float64)
    cumulative = (k / step) ** exponent
    return np.concatenate([[0.0], np.diff(cumulative)])


@dataclasses.dataclass(frozen=True)
class ProfileFit:
    """coefficients: (snapshots,) the least-squares weights of the snapshots.  relative_error: ||fit - target|| /
    ||target|| of the weight profiles.  steps: the snapshots' steps."""

    steps: tuple[int, ...]
    coefficients: np.ndarray
    relative_error: float


def fit_profile(snapshot_steps: Sequence[int], decay: float, target: np.ndarray) -> ProfileFit:
    """The combination of EMA snapshots (decay `decay`, taken at `snapshot_steps`) whose weights over the
    iterates best match `target` ((T + 1,) weights of p_0..p_T); snapshots after step T cannot contribute."""
    last = len(target) - 1
    steps = tuple(sorted(int(s) for s in snapshot_steps if 0 <= int(s) <= last))
    if not steps:
        raise ValueError(f"no snapshot at or before step {last} (have {sorted(snapshot_steps)})")
    basis = np.zeros((len(steps), last + 1))
    for row, s in enumerate(steps):
        basis[row, : s + 1] = ema_profile(s, decay)
    coefficients, *_ = np.linalg.lstsq(basis.T, target, rcond=None)
    error = np.linalg.norm(basis.T @ coefficients - target) / np.linalg.norm(target)
    return ProfileFit(steps, coefficients, float(error))


def combine_snapshots(fits: Sequence[ProfileFit], read: Callable[[int], PyTree]) -> list[PyTree]:
    """For each fit, sum_i fit.coefficients[i] * read(fit.steps[i]), accumulated in float64 and returned in the
    snapshots' dtypes; `read(step)` returns one snapshot's parameter tree, and each step is read once (a run
    keeps dozens, so they are not held together)."""
    totals: list[PyTree] = [None] * len(fits)
    dtypes = None
    for step in sorted(set().union(*(fit.steps for fit in fits))):
        snapshot = jax.device_get(read(step))
        if dtypes is None:
            dtypes = jax.tree.map(lambda x: np.asarray(x).dtype, snapshot)
        tree = jax.tree.map(lambda x: np.asarray(x, np.float64), snapshot)
        for i, fit in enumerate(fits):
            if step not in fit.steps:
                continue
            c = float(fit.coefficients[fit.steps.index(step)])
            totals[i] = (jax.tree.map(lambda x: c * x, tree) if totals[i] is None
                         else jax.tree.map(lambda t, x: t + c * x, totals[i], tree))
    return [jax.tree.map(lambda t, dtype: t.astype(dtype), total, dtypes) for total in totals]


def run_ema_decay(stage_dir: str) -> float:
    """The EMA decay a diffusion stage directory was trained with (its workdir's config.json)."""
    path = os.path.join(os.path.dirname(os.path.abspath(stage_dir)), "config.json")
    try:
        with open(path) as f:
            return float(json.load(f)["diffusion"]["optimizer"]["ema_decay"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; post-hoc EMA needs the run's config (its EMA decay)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: no diffusion.optimizer.ema_decay ({e})") from None


def posthoc_ema_params(stage_dir: str, sigma_rels: Sequence[float], step: int | None = None,
                       ema_decay: float | None = None) -> list[tuple[PyTree, ProfileFit]]:
    """[(denoiser params, fit)] of the power-function EMAs of relative widths `sigma_rels` at `step` (default:
    the last kept), combined from a diffusion stage directory's kept checkpoints at or before it (each read
    once); `ema_decay` defaults to the run's own."""
    steps = stage.kept_steps(stage_dir)
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise CheckpointError(f"{stage_dir}: no checkpoint at step {step} (has {steps})")
    decay = run_ema_decay(stage_dir) if ema_decay is None else ema_decay
    fits = [fit_profile(steps, decay, power_profile(step, s)) for s in sigma_rels]
    params = combine_snapshots(fits, lambda s: load_denoiser(stage_dir, "latest", s)[1])
    return list(zip(params, fits))
