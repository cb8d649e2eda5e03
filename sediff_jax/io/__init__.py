"""Writers for ECGs: WFDB records, NPZ archives and standard-layout 12-lead PNGs, all atomic."""

from sediff_jax.io.atomic import atomic_directory, atomic_path
from sediff_jax.io.npz import write_npz
from sediff_jax.io.plot import plot_ecg, plot_overlay, save_ecg_png, save_overlay_png
from sediff_jax.io.wfdb_io import ADC_GAIN_PER_MV, write_wfdb
