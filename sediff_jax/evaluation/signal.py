"""Signal-level fidelity of generated ECGs against the real records whose conditions they were generated from
(SE-Diff's paired protocol), and physical consistency of the limb leads."""

from __future__ import annotations

import numpy as np

from sediff_jax.leads import limb_lead_residuals


def _pair(generated: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    if generated.shape != real.shape or generated.ndim != 3:
        raise ValueError(f"generated {generated.shape} and real {real.shape} must both be (batch, time, leads)")
    if not (np.isfinite(generated).all() and np.isfinite(real).all()):
        raise ValueError("generated or real ECGs contain NaN or inf")
    return generated, real


def paired_mae_mv(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """(batch,) mean |generated - real| over time and leads, mV.  generated, real: (batch, time, leads) mV."""
    generated, real = _pair(generated, real)
    return np.abs(generated - real).mean(axis=(1, 2))


def paired_nrmse(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """(batch,) root-mean-square error normalised by the real lead's range (max - min), averaged over leads;
    flat real leads (range < 1 uV) are left out. Dimensionless."""
    generated, real = _pair(generated, real)
    rmse = np.sqrt(np.mean((generated - real) ** 2, axis=1))  # (batch, leads)
    span = real.max(axis=1) - real.min(axis=1)
    valid = span >= 1e-3
    ratio = np.where(valid, rmse / np.where(valid, span, 1.0), 0.0)
    counts = valid.sum(axis=1)
    return np.where(counts > 0, ratio.sum(axis=1) / np.maximum(counts, 1), np.nan)


def limb_lead_residual_mv(ecg: np.ndarray) -> np.ndarray:
    """(batch,) RMS over time of the four Einthoven/Goldberger residuals, mV (0 for a consistent recording).
    ecg: (batch, time, 12) mV in `LEAD_NAMES` order."""
    ecg = np.asarray(ecg, np.float64)
    if ecg.ndim != 3 or ecg.shape[-1] != 12:
        raise ValueError(f"ecg must be (batch, time, 12), got {ecg.shape}")
    return np.sqrt(np.mean(limb_lead_residuals(ecg) ** 2, axis=(1, 2)))
