"""Fit the dipole simulator to recorded 12-lead ECGs by gradient descent through the diffrax ODE.

Two modes (`FitConfig.mode`):

* `beat`: the median beat of the record (window `beat_window_s` around the R peaks) against one simulated
  cycle at the record's mean heart rate. Fitted: each dipole channel's wave angles, widths and amplitudes
  (3 channels x 6 waves x 3). Heart rate and its variability are measured from the R peaks.
* `strip`: the whole strip (high-passed at `strip_highpass_hz`) against a simulation whose RR tachogram is
  initialised from the R peaks and fitted sample by sample, with the initial phase and the respiratory baseline;
  the waves start from a beat-mode fit (`strip_warm_start`).

Both integrate the simulator with diffrax inside the loss (`solve.integrate`), vmapped over a batch of records
and optimised with Adam (elementwise, so records in a batch do not interact). Parameters are mapped from
unconstrained variables into physiological bounds (`THETA_BOUNDS`, `WIDTH_BOUNDS`, `AMPLITUDE_LIMIT_MV`, ...).
The initial guess comes from the median beat: Kors' dipole locates the P and T waves, and the amplitudes solve
a linear least-squares problem for the closed-form waveform. A per-lead constant offset is solved in closed form
at every step. Angles and widths are reported at 60 bpm, the simulator's convention (`params.py`), so fitted
parameters plug straight into `simulate` and into the per-class priors (`sediff_jax.simulator.priors`).
"""

from sediff_jax.simulator.fitting.config import (
    AMPLITUDE_LIMIT_MV, FIT_MODES, RESP_AMPLITUDE_LIMIT_MV, RESP_FREQUENCY_BOUNDS_HZ, RR_BOUNDS_S, THETA_BOUNDS,
    TIMED_WAVES, WIDTH_BOUNDS, FitConfig, FitError, FitResult, FitTarget,
)
from sediff_jax.simulator.fitting.driver import fit_ecg, fit_ecgs
from sediff_jax.simulator.fitting.objective import (
    misfit, model_params, simulate_fit, variables_from_waves, waves_from_variables,
)
from sediff_jax.simulator.fitting.prepare import initial_waves, prepare_fit
from sediff_jax.simulator.fitting.timing import lead_matrix, wave_peak_times

__all__ = ["AMPLITUDE_LIMIT_MV", "FIT_MODES", "RESP_AMPLITUDE_LIMIT_MV", "RESP_FREQUENCY_BOUNDS_HZ", "RR_BOUNDS_S",
           "THETA_BOUNDS", "TIMED_WAVES", "WIDTH_BOUNDS", "FitConfig", "FitError", "FitResult", "FitTarget", "fit_ecg",
           "fit_ecgs", "initial_waves", "lead_matrix", "misfit", "model_params", "prepare_fit", "simulate_fit",
           "variables_from_waves", "wave_peak_times", "waves_from_variables"]
