"""Small WFDB records written by the tests themselves (simulated signals), for bad-input cases."""

from __future__ import annotations

import os

import numpy as np
import wfdb

from sediff_jax.leads import LEAD_NAMES
from sediff_jax.simulator import SimulatorConfig, preset_params, simulate

_CACHE: dict = {}


def simulated_ecg(fs: float = 500.0, duration_s: float = 10.0, hr: float = 70.0) -> np.ndarray:
    """(time, 12) mV from the dipole simulator (cached per arguments)."""
    key = (fs, duration_s, hr)
    if key not in _CACHE:
        import jax

        config = SimulatorConfig(duration_s=duration_s, fs=fs, solver="tsit5")
        _CACHE[key] = np.asarray(simulate(preset_params("normal_sinus", hr=hr), jax.random.key(0), config))
    return _CACHE[key].copy()


def write_record(
    directory: str,
    name: str,
    signal: np.ndarray,
    fs: float,
    lead_names=LEAD_NAMES,
    units: str = "mV",
    fmt: str = "16",
    comments=(),
    gain: float = 1000.0,
) -> str:
    """Write `signal` (time, channels) as a WFDB record; NaN samples become WFDB's invalid value."""
    os.makedirs(directory, exist_ok=True)
    n = signal.shape[1]
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * n,
        sig_name=list(lead_names),
        p_signal=signal.astype(np.float64),
        fmt=[fmt] * n,
        adc_gain=[gain] * n,
        baseline=[0] * n,
        write_dir=directory,
        comments=list(comments),
    )
    return os.path.join(directory, name)
