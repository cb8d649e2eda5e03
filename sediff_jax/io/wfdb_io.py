"""Write 12-lead ECGs as WFDB records (format 16, 1 uV resolution), readable by every PhysioNet tool."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import wfdb

from sediff_jax.errors import SediffError
from sediff_jax.io.atomic import atomic_directory
from sediff_jax.leads import LEAD_NAMES

ADC_GAIN_PER_MV = 1000.0  # 1 digital unit = 1 uV, as in PTB-XL.
_INT16_MAX = 32767




class RecordNameError(SediffError, ValueError):
    """A WFDB record name with characters the format does not allow."""


def check_record_name(record_path: str | os.PathLike) -> None:
    """RecordNameError unless the path's last part is a valid WFDB record name (letters, digits, '_', '-')."""
    name = Path(record_path).name
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise RecordNameError(f"invalid WFDB record name {name!r} ({record_path}): use letters, digits, '_' and '-'")

def _check_signal(ecg: np.ndarray, num_leads: int, where: str) -> np.ndarray:
    ecg = np.asarray(ecg, np.float64)
    if ecg.ndim != 2 or ecg.shape[1] != num_leads:
        raise ValueError(f"{where}: expected an ECG of shape (time, {num_leads}), got {ecg.shape}")
    if ecg.shape[0] < 2:
        raise ValueError(f"{where}: an ECG needs at least 2 samples, got {ecg.shape[0]}")
    if not np.all(np.isfinite(ecg)):
        bad = np.argwhere(~np.isfinite(ecg))[0]
        raise ValueError(f"{where}: non-finite value at sample {bad[0]}, lead index {bad[1]}")
    peak = np.max(np.abs(ecg))
    if peak * ADC_GAIN_PER_MV > _INT16_MAX:
        raise ValueError(
            f"{where}: |amplitude| reaches {peak:.2f} mV, beyond the +-{_INT16_MAX / ADC_GAIN_PER_MV:.1f} mV that "
            "16-bit WFDB at 1 uV resolution can store"
        )
    return ecg


def header_text(text: str) -> str:
    """`text` safe for a header line: control characters (terminal escape codes, tabs, NUL...) become spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


def write_wfdb(
    record_path: str | os.PathLike,
    ecg: np.ndarray,
    fs: float,
    lead_names: Sequence[str] = LEAD_NAMES,
    comments: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write one record as `<record_path>.hea` and `<record_path>.dat`, atomically.

    Args:
      record_path: path without extension; its last component is the record name.
      ecg: (time, leads) mV.
      fs: sampling rate, Hz.
      lead_names: one name per lead (default: the 12 standard leads).
      comments: header comment lines (no newlines).

    Returns:
      (header path, data path). The .dat file is moved into place before the .hea, so a header that exists
      always describes a complete signal file.
    """
    record_path = Path(record_path)
    name = record_path.name
    lead_names = list(lead_names)
    ecg = _check_signal(ecg, len(lead_names), str(record_path))
    check_record_name(record_path)
    comments = [str(c) for c in comments]
    for c in comments:
        if "\n" in c or "\r" in c:
            raise ValueError(f"{record_path}: header comments must be single lines, got {c!r}")
    comments = [header_text(c) for c in comments]
    digital = np.round(ecg * ADC_GAIN_PER_MV).astype(np.int16)
    header, data = Path(f"{record_path}.hea"), Path(f"{record_path}.dat")
    with atomic_directory(record_path.parent) as tmp:
        wfdb.wrsamp(
            name,
            fs=float(fs),
            units=["mV"] * len(lead_names),
            sig_name=lead_names,
            d_signal=digital,
            fmt=["16"] * len(lead_names),
            adc_gain=[ADC_GAIN_PER_MV] * len(lead_names),
            baseline=[0] * len(lead_names),
            comments=comments,
            write_dir=str(tmp),
        )
        os.replace(tmp / f"{name}.dat", data)
        os.replace(tmp / f"{name}.hea", header)
    return header, data
