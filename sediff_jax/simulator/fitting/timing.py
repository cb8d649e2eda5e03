"""Wave peak times of fitted parameters (NumPy, on a fine phase grid) and the lead matrix."""

from __future__ import annotations

import functools

import jax
import numpy as np

from sediff_jax.leads import NUM_LEADS, leads_from_independent
from sediff_jax.simulator.dynamics import dipole_wave_components
from sediff_jax.simulator.fitting.config import NUM_WAVES, TIMED_WAVES, TIMING_GRID
from sediff_jax.simulator.params import (
    DIPOLE_THETA_HR_EXPONENT,
    WaveParams,
)
from sediff_jax.simulator.projection import DOWER
from sediff_jax.simulator.rhythm import heart_rate_scaled_waves

Array = jax.Array

# ----------------------------------------------------------------------------------------------------------
# Host side: checks, targets and the initial guess (NumPy).


@functools.lru_cache(maxsize=1)
def lead_matrix() -> np.ndarray:
    """(12, 3): the linear map from the dipole (X, Y, Z) to the 12 leads (Dower plus the derived limb leads)."""
    return leads_from_independent(DOWER.T.astype(np.float64)).T


def scaled_waves(waves: WaveParams, hr_mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Angles and widths at `hr_mean` (`rhythm.heart_rate_scaled_waves`), NumPy float64."""
    scaled = heart_rate_scaled_waves(_float64(waves), float(hr_mean), DIPOLE_THETA_HR_EXPONENT.astype(np.float64))
    return scaled.theta, scaled.width


def wave_components(waves: WaveParams, hr_mean: float, phase: np.ndarray) -> np.ndarray:
    """(len(phase), channels, waves) mV: each wave's closed-form contribution to each dipole channel at `hr_mean`
    (`dynamics.dipole_wave_components` of the rate-scaled waves), NumPy float64."""
    scaled = heart_rate_scaled_waves(_float64(waves), float(hr_mean), DIPOLE_THETA_HR_EXPONENT.astype(np.float64))
    return dipole_wave_components(np.asarray(phase, np.float64), scaled)


def _float64(waves: WaveParams) -> WaveParams:
    return WaveParams(*(np.asarray(leaf, np.float64) for leaf in waves))


def wave_peak_times(waves: WaveParams, hr_mean: float) -> tuple[dict[str, float], np.ndarray]:
    """Peak times of the fitted waves relative to the R peak (ms), from the closed-form cycle at `hr_mean`.

    Returns ({'P','Q','R','S','T': ms} from the dipole's vector magnitude, (12, 5) per lead); see `FitResult`.
    """
    rr_ms = 60000.0 / hr_mean
    phase = np.linspace(-np.pi, np.pi, TIMING_GRID, endpoint=False)
    t_ms = phase / (2.0 * np.pi) * rr_ms
    comp = wave_components(waves, hr_mean, phase)  # (G, 3, 6)
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
