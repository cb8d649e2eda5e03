"""12-lead ECG plots in the standard clinical layout.

Three rows of four columns (I/II/III, aVR/aVL/aVF, V1-V3, V4-V6), each column a consecutive quarter of the record
(2.5 s of a 10 s ECG), plus a full-length lead II rhythm strip; 25 mm/s, 10 mm/mV on a millimetre grid with 5 mm
major lines, and a 1 mV calibration pulse at the start of every row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from sediff_jax.io.atomic import atomic_path
from sediff_jax.leads import LEAD_NAMES, lead_index

PAPER_SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
ROW_HEIGHT_MM = 35.0
LEFT_MARGIN_MM = 10.0  # room for the calibration pulse
GRID_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
_MINOR_COLOR = (1.0, 0.82, 0.82)
_MAJOR_COLOR = (0.95, 0.55, 0.55)


def _grid_lines(width_mm: float, height_mm: float, step: float) -> tuple[list, list]:
    xs = np.arange(0.0, width_mm + 1e-6, step)
    ys = np.arange(0.0, height_mm + 1e-6, step)
    return [[(x, 0.0), (x, height_mm)] for x in xs], [[(0.0, y), (width_mm, y)] for y in ys]


def plot_ecg(ecg: np.ndarray, fs: float, title: str = "", dpi: int = 150) -> Figure:
    """Draw one 12-lead ECG.

    Args:
      ecg: (time, 12) mV in `LEAD_NAMES` order.
      fs: sampling rate, Hz.
      title: printed above the grid (prompt, preset, record id...).

    Returns:
      A matplotlib Figure (Agg canvas attached; no pyplot state is touched).
    """
    ecg = np.asarray(ecg, np.float64)
    if ecg.ndim != 2 or ecg.shape[1] != len(LEAD_NAMES):
        raise ValueError(f"plot_ecg expects (time, 12), got {ecg.shape}")
    if not np.all(np.isfinite(ecg)):
        raise ValueError("plot_ecg: the ECG contains NaN or infinite values")
    num_samples = ecg.shape[0]
    duration = num_samples / fs
    segment = num_samples // 4
    width_mm = LEFT_MARGIN_MM + duration * PAPER_SPEED_MM_PER_S
    height_mm = 4 * ROW_HEIGHT_MM
    title_mm = 8.0 if title else 0.0

    fig = Figure(figsize=(width_mm / 25.4, (height_mm + title_mm) / 25.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, height_mm / (height_mm + title_mm)))
    ax.set_xlim(0.0, width_mm)
    ax.set_ylim(0.0, height_mm)
    ax.set_axis_off()
    for step, color, lw in ((1.0, _MINOR_COLOR, 0.25), (5.0, _MAJOR_COLOR, 0.6)):
        vertical, horizontal = _grid_lines(width_mm, height_mm, step)
        ax.add_collection(LineCollection(vertical + horizontal, colors=[color], linewidths=lw, zorder=0))

    t_mm = np.arange(num_samples) / fs * PAPER_SPEED_MM_PER_S + LEFT_MARGIN_MM
    traces, labels = [], []
    for row in range(4):
        base_y = height_mm - (row + 0.6) * ROW_HEIGHT_MM
        # 1 mV, 200 ms calibration pulse.
        x0 = 2.0
        traces.append([(x0, base_y), (x0 + 1, base_y), (x0 + 1, base_y + GAIN_MM_PER_MV),
                       (x0 + 6, base_y + GAIN_MM_PER_MV), (x0 + 6, base_y), (x0 + 7, base_y)])
        if row < 3:
            for col, name in enumerate(GRID_LAYOUT[row]):
                lo = col * segment
                hi = num_samples if col == 3 else (col + 1) * segment + 1
                y = ecg[lo:hi, lead_index(name)] * GAIN_MM_PER_MV + base_y
                traces.append(np.column_stack([t_mm[lo:hi], y]))
                labels.append((t_mm[lo] + 1.0, base_y + 0.45 * ROW_HEIGHT_MM, name))
                if col > 0:  # lead-change marker
                    traces.append([(t_mm[lo], base_y - 3.0), (t_mm[lo], base_y + 3.0)])
        else:
            y = ecg[:, lead_index(RHYTHM_LEAD)] * GAIN_MM_PER_MV + base_y
            traces.append(np.column_stack([t_mm, y]))
            labels.append((t_mm[0] + 1.0, base_y + 0.45 * ROW_HEIGHT_MM, RHYTHM_LEAD))
    ax.add_collection(LineCollection(traces, colors="black", linewidths=0.6, zorder=2))
    for x, y, text in labels:
        ax.text(x, y, text, fontsize=8, fontweight="bold", va="center", zorder=3)
    ax.text(width_mm - 2.0, 2.0, f"{PAPER_SPEED_MM_PER_S:g} mm/s   {GAIN_MM_PER_MV:g} mm/mV   {fs:g} Hz",
            fontsize=7, ha="right", va="bottom", zorder=3)
    if title:
        fig.text(0.01, 1.0 - 0.5 * title_mm / (height_mm + title_mm), title, fontsize=9, va="center")
    return fig


def save_ecg_png(path: str | os.PathLike, ecg: np.ndarray, fs: float, title: str = "", dpi: int = 150) -> Path:
    """Plot one 12-lead ECG (see `plot_ecg`) and write it as a PNG, atomically."""
    path = Path(path)
    fig = plot_ecg(ecg, fs, title=title, dpi=dpi)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def plot_overlay(
    real: np.ndarray,
    fitted: np.ndarray,
    times_s: np.ndarray,
    title: str = "",
    labels: tuple[str, str] = ("real", "fitted"),
    lead_notes: list[str] | None = None,
    dpi: int = 110,
) -> Figure:
    """Two 12-lead signals overlaid, one panel per lead (limb leads left, chest leads right).

    real, fitted: (time, 12) mV in `LEAD_NAMES` order.  times_s: (time,) s for the x axis.
    lead_notes: optional text per lead (e.g. the correlation), shown in the panel's corner.
    """
    fig = Figure(figsize=(11, 9), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(6, 2, sharex=True)
    lo = min(float(np.min(real)), float(np.min(fitted)))
    hi = max(float(np.max(real)), float(np.max(fitted)))
    pad = 0.1 * max(hi - lo, 0.5)
    for k, name in enumerate(LEAD_NAMES):
        ax = axes[k % 6, k // 6]
        ax.plot(times_s, real[:, k], color="black", lw=1.0, label=labels[0])
        ax.plot(times_s, fitted[:, k], color="tab:red", lw=1.0, ls="--", label=labels[1])
        ax.set_ylim(lo - pad, hi + pad)
        ax.grid(True, color=_MINOR_COLOR, lw=0.6)
        ax.text(0.01, 0.95, name, transform=ax.transAxes, va="top", fontsize=9, fontweight="bold")
        if lead_notes is not None:
            ax.text(0.99, 0.95, lead_notes[k], transform=ax.transAxes, va="top", ha="right", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(loc="lower left", fontsize=7, frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("time, s", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("mV", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_overlay_png(path: str | os.PathLike, real: np.ndarray, fitted: np.ndarray, times_s: np.ndarray,
                     **kwargs) -> Path:
    """`plot_overlay` written as a PNG, atomically."""
    path = Path(path)
    fig = plot_overlay(real, fitted, times_s, **kwargs)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
