"""NPZ archives of ECG batches, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sediff_jax.io.atomic import atomic_path
from sediff_jax.leads import LEAD_NAMES


def write_npz(path: str | os.PathLike, ecg: np.ndarray, fs: float, **metadata) -> Path:
    """Write `ecg` ((batch, time, 12) or (time, 12) float32 mV), `fs`, `lead_names` and metadata arrays.

    Metadata values must be array-like (strings are stored as numpy unicode arrays, so `allow_pickle` is never
    needed to read the file back).
    """
    ecg = np.asarray(ecg, np.float32)
    if ecg.shape[-1] != len(LEAD_NAMES):
        raise ValueError(f"{path}: expected 12 leads on the last axis, got shape {ecg.shape}")
    if not np.all(np.isfinite(ecg)):
        raise ValueError(f"{path}: the ECG contains NaN or infinite values")
    arrays = {"ecg": ecg, "fs": np.float32(fs), "lead_names": np.array(LEAD_NAMES)}
    for key, value in metadata.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(f"{path}: metadata {key!r} is not a plain array")
        arrays[key] = array
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path
