"""The differentiable cardiac simulator (McSharry phase model, dipole channels, diffrax solve), fitting it to
recordings (`fitting`) and per-class parameter priors (`priors`)."""

from sediff_jax.simulator.dynamics import (
    VectorFieldArgs,
    dipole_vector_field,
    dipole_waveform,
    mcsharry_vector_field,
)
from sediff_jax.simulator.noise import NoiseConfig, add_noise
from sediff_jax.simulator.params import (
    DIPOLE_CHANNELS,
    DIPOLE_WAVES,
    MCSHARRY_WAVES,
    BaselineParams,
    ECGParams,
    RhythmParams,
    WaveParams,
    dipole_params,
    mcsharry_params,
    stack_params,
    validate_rhythm,
    with_heart_rate,
)
from sediff_jax.simulator.presets import PRESETS, Preset, get_preset, preset_params
from sediff_jax.simulator.projection import DOWER, KORS, dipole_to_leads, leads_to_dipole
from sediff_jax.simulator.rhythm import rr_tachogram
from sediff_jax.simulator.solve import (
    SimulatorConfig,
    prepare_args,
    sample_times,
    simulate,
    simulate_batch,
    solve_states,
)
from sediff_jax.simulator.fitting import FitConfig, FitError, FitResult, fit_ecg, fit_ecgs
from sediff_jax.simulator.priors import SimulatorPrior, load_prior
