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


def amplitude_spread(generated: np.ndarray, real: np.ndarray) -> dict[str, float | list[float]]:
    """How widely the generated ECGs' amplitudes vary across records, against the paired real records: a variety
    measure in signal space that needs no feature encoder. Per ECG and lead the peak-to-peak amplitude (mV); over
    the records its std and mean per lead. `spread_ratio` is the lead-averaged std of the generated set over the
    real set's (1 when amplitudes vary as much as the data's, < 1 under-dispersed), `mean_ratio` the same for the
    mean, `spread_ratio_per_lead` (leads,) the per-lead std ratios. generated, real: (batch, time, leads) mV."""
    generated, real = _pair(generated, real)
    if len(real) < 2:
        raise ValueError(f"the spread of amplitudes needs at least 2 records, got {len(real)}")
    ptp_generated, ptp_real = np.ptp(generated, axis=1), np.ptp(real, axis=1)  # (batch, leads)
    std_generated, std_real = ptp_generated.std(axis=0), ptp_real.std(axis=0)
    per_lead = np.where(std_real > 0, std_generated / np.where(std_real > 0, std_real, 1.0), np.nan)
    return {"spread_ratio": float(std_generated.mean() / std_real.mean()),
            "mean_ratio": float(ptp_generated.mean() / ptp_real.mean()),
            "std_generated_mv": float(std_generated.mean()), "std_real_mv": float(std_real.mean()),
            "spread_ratio_per_lead": [float(v) for v in per_lead]}
