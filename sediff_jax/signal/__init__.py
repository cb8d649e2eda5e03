"""Signal processing of ECG arrays, at the bottom of the house (it imports no other sediff_jax package but
`leads`): filters and resampling, R peaks and heart rate, beats and the median beat (NumPy and jittable JAX),
delineation (P onset, QRS, T end; PR, QRS, QT, QTc, axis), one ECG measured once (measure), and each lead's
robust peak-to-peak amplitude (lead_amplitudes). The data layer, the simulator's fitting and the evaluation metrics
all use it.
"""

from sediff_jax.signal.beats import median_beat, median_beat_jax
from sediff_jax.signal.delineation import Delineation, DelineationError, delineate
from sediff_jax.signal.filters import bandpass, highpass, resample
from sediff_jax.signal.measurement import Measurement, lead_amplitudes, measure, measure_batch
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm

__all__ = ["Delineation", "DelineationError", "bandpass", "delineate", "detect_r_peaks", "heart_rate_bpm", "highpass",
           "Measurement", "lead_amplitudes", "measure", "measure_batch", "median_beat", "median_beat_jax", "resample"]
