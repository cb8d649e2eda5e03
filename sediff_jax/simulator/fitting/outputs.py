"""The files of one fit, as `experiments/fit_simulator.py` writes them: <name>.json (the summary with units),
<name>.npz (recorded and fitted signals at the record's own rate) and <name>.png (the overlay), each atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sediff_jax.io import atomic_path, save_overlay_png
from sediff_jax.io import jsonio
from sediff_jax.leads import LEAD_NAMES
from sediff_jax.signal.filters import resample
from sediff_jax.simulator.fitting.config import FitResult


def fit_output_names(name: str, png: bool) -> list[str]:
    """The files `write_fit_outputs` writes for record `name`."""
    return [f"{name}.json", f"{name}.npz"] + ([f"{name}.png"] if png else [])


def write_fit_outputs(out_dir: Path, name: str, result: FitResult, record_fs: float, source: str, png: bool
                      ) -> list[Path]:
    """<name>.json/.npz/.png of one fit in `out_dir`, each written atomically; the signals are resampled from the
    fitting rate to the record's rate `record_fs` (Hz). source: the record's path or name, kept in the JSON."""
    real, fitted, times = result.real, result.fitted, result.times_s
    mask = result.mask
    if abs(record_fs - result.fs) > 1e-6:
        real, fitted = resample(real, result.fs, record_fs), resample(fitted, result.fs, record_fs)
        times = times[0] + np.arange(real.shape[0]) / record_fs
        mask = np.interp(times, result.times_s, result.mask.astype(float)) > 0.5
    summary = {"record": source, "record_fs_hz": record_fs, **result.summary()}
    written = [jsonio.write_json(Path(out_dir) / f"{name}.json", summary, indent=2)]
    npz_path = Path(out_dir) / f"{name}.npz"
    with atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, real=real.astype(np.float32), fitted=fitted.astype(np.float32), fs=np.float32(record_fs),
                     times_s=times.astype(np.float32), mask=mask, lead_names=np.array(LEAD_NAMES))
    written.append(npz_path)
    if png:
        notes = [f"r={c:.3f}" for c in result.lead_correlation]
        what = "median beat" if result.mode == "beat" else "strip"
        title = (f"{name}: {what}, HR {float(result.params.rhythm.hr_mean):.0f} bpm, median r = "
                 f"{np.median(result.lead_correlation):.3f}, {result.iterations} iterations")
        written.append(save_overlay_png(Path(out_dir) / f"{name}.png", real, fitted, times, title=title,
                                        lead_notes=notes, labels=("recorded", "simulator fit")))
    return written
