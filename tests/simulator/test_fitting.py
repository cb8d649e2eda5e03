"""Fitting the simulator: parameter recovery on simulated records, gradients, timings, bounds and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax import simulator as sim
from sediff_jax.simulator import fitting
from sediff_jax.simulator.fitting import FitConfig, FitError

FS = 500.0


def _true_params(hr: float, hr_std: float = 0.5) -> sim.ECGParams:
    """A normal heart with every wave moved off the fitter's template, so recovery is not trivial."""
    params = sim.with_heart_rate(sim.dipole_params(), hr, hr_std)
    waves = params.waves
    theta = waves.theta + jnp.asarray([-0.15, 0.03, 0.02, -0.03, 0.1, 0.25])
    width = waves.width * jnp.asarray([1.2, 0.9, 1.1, 1.0, 1.0, 0.85])
    amplitude = waves.amplitude.at[:, 5].multiply(1.4).at[:, 2].multiply(0.8)
    return params._replace(waves=sim.WaveParams(theta, width, amplitude))


def _record(params: sim.ECGParams, seed: int, duration_s: float = 10.0, noise_mv: float = 0.02) -> np.ndarray:
    config = sim.SimulatorConfig(duration_s=duration_s, fs=FS, solver="tsit5")
    key_rr, key_noise = jax.random.split(jax.random.key(seed))
    ecg = sim.simulate(params, key_rr, config)
    noise = sim.NoiseConfig(baseline_wander_mv=0.0, muscle_mv=noise_mv, powerline_mv=0.0)
    return np.array(sim.add_noise(ecg, key_noise, FS, noise))


@pytest.fixture(scope="module")
def beat_fits():
    truths = [_true_params(66.0), _true_params(95.0)]
    ecgs = [_record(p, seed) for seed, p in enumerate(truths)]
    results = fitting.fit_ecgs(ecgs, FitConfig(batch_size=2, max_iterations=300))
    return truths, ecgs, results


def test_beat_fit_recovers_timings_amplitudes_and_heart_rate(beat_fits):
    truths, _, results = beat_fits
    for truth, result in zip(truths, results):
        hr = float(truth.rhythm.hr_mean)
        # Measured heart rate within 1 bpm; std of the instantaneous rate within 1 bpm of the requested 0.5.
        assert float(result.params.rhythm.hr_mean) == pytest.approx(hr, abs=1.0)
        assert float(result.params.rhythm.hr_std) < 1.5
        true_global, true_leads = fitting.wave_peak_times(truth.waves, hr)
        # Wave peak times: within 3 ms for R, 8 ms for P and T (global and in every lead with a clear wave).
        for wave, tol in (("P", 8.0), ("R", 3.0), ("T", 8.0)):
            assert result.wave_times_ms[wave] == pytest.approx(true_global[wave], abs=tol), wave
        k = {"P": 0, "R": 2, "T": 4}
        for wave, tol in (("P", 10.0), ("R", 4.0), ("T", 10.0)):
            err = np.abs(result.lead_wave_times_ms[:, k[wave]] - true_leads[:, k[wave]])
            assert np.median(err) <= tol, (wave, err)
        # The dominant amplitudes (R and T in X, the lead-I axis) within 10 % of the truth.
        for wave in (2, 5):
            assert float(result.params.waves.amplitude[0, wave]) == pytest.approx(
                float(truth.waves.amplitude[0, wave]), rel=0.1
            )
        assert np.min(result.lead_correlation) > 0.9  # aVL is near-isoelectric here: 0.02 mV noise limits r
        assert np.median(result.lead_correlation) > 0.99


def test_beat_fit_matches_the_noiseless_beat(beat_fits):
    """The fitted beat is closer to the clean simulated beat than the noise level (muscle noise 0.02 mV)."""
    truths, _, results = beat_fits
    for truth, result in zip(truths, results):
        clean = _record(truth, 0, noise_mv=0.0)
        from sediff_jax.signal.beats import median_beat
        from sediff_jax.signal.rpeaks import detect_r_peaks

        beat, _ = median_beat(clean, detect_r_peaks(clean, FS), FS, *FitConfig().beat_window_s)
        mask = result.mask
        residual = (result.fitted - beat)[mask]
        residual -= residual.mean(0)
        assert np.sqrt(np.mean(residual**2)) < 0.02


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_strip_fit_follows_the_rhythm():
    truth = _true_params(80.0, hr_std=3.0)
    ecg = _record(truth, 7, duration_s=4.0, noise_mv=0.01)
    config = FitConfig(mode="strip", strip_duration_s=4.0, strip_highpass_hz=None, max_iterations=200)
    result = fitting.fit_ecg(ecg, config)
    assert result.fitted.shape == (2000, 12) and result.real.shape == (2000, 12)
    assert float(result.params.rhythm.hr_mean) == pytest.approx(80.0, abs=4.0)
    assert np.median(result.lead_correlation) > 0.97
    assert result.loss_history[-1] < result.loss_history[0]


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_misfit_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        truth = _true_params(70.0)
        ecg = _record(truth, 3, duration_s=4.0)
        for mode in ("beat", "strip"):
            config = FitConfig(mode=mode, beat_window_s=(0.3, 0.5), strip_duration_s=2.0, fs=250.0)
            prepared = fitting.prepare_fit(ecg[::2], config)
            to64 = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
            target = fitting.FitTarget(*map(to64, prepared.target))
            variables = jax.tree.map(to64, prepared.variables)
            # Move off the initial guess so no gradient is zero by symmetry.
            variables = jax.tree.map(lambda x: x + 0.05, variables)
            loss = lambda v: fitting.misfit(v, target, config)  # noqa: E731
            grads = jax.grad(loss)(variables)
            checks = [("theta", (0, 0)), ("theta", (1, 5)), ("width", (0, 2)), ("amplitude", (2, 5))]
            if mode == "strip":
                checks += [("rr", (3,)), ("initial_phase", ()), ("resp_amplitude", (1,))]
            eps = 1e-6
            for name, index in checks:
                def moved(delta):
                    return loss({**variables, name: variables[name].at[index].add(delta)})

                fd = (moved(eps) - moved(-eps)) / (2 * eps)
                assert float(grads[name][index]) == pytest.approx(float(fd), rel=1e-4, abs=1e-9), (mode, name)


def test_wave_peak_times_agree_with_the_simulated_signal():
    """Per-lead R (QRS maximum) and T times from the closed form match the ODE output sampled at 2 kHz."""
    params = sim.with_heart_rate(sim.dipole_params(), 60.0, 0.0)
    config = sim.SimulatorConfig(duration_s=2.0, fs=2000.0, solver="tsit5")
    ecg = np.asarray(sim.simulate(params._replace(rhythm=params.rhythm._replace(initial_phase=jnp.float32(-np.pi))),
                                  jax.random.key(0), config))
    # Phase -pi at t = 0 and 60 bpm: R peaks at t = 0.5 s and 1.5 s.
    _, per_lead = fitting.wave_peak_times(params.waves, 60.0)
    t_ms = (np.arange(ecg.shape[0]) / 2000.0 - 1.5) * 1000.0
    qrs = np.abs(t_ms) <= 150
    for lead in range(12):
        r_time = t_ms[qrs][np.argmax(ecg[qrs, lead])]
        assert per_lead[lead, 2] == pytest.approx(r_time, abs=1.0)
    lead_ii = 1
    window = (t_ms > 150) & (t_ms < 450)
    t_time = t_ms[window][np.argmax(np.abs(ecg[window, lead_ii] - ecg[qrs, lead_ii][0]))]
    assert per_lead[lead_ii, 4] == pytest.approx(t_time, abs=4.0)


def test_bounds_round_trip_and_hold():
    waves = sim.dipole_params().waves
    back = fitting.waves_from_variables(jax.tree.map(jnp.asarray, fitting.variables_from_waves(waves)))
    for field in ("theta", "width", "amplitude"):
        np.testing.assert_allclose(getattr(back, field), getattr(waves, field), atol=2e-3)
    extreme = {k: jnp.full((3, 6), 1e3) for k in ("theta", "width", "amplitude")}
    for sign in (1.0, -1.0):
        w = fitting.waves_from_variables(jax.tree.map(lambda x: sign * x, extreme))
        assert np.all(w.theta >= fitting.THETA_BOUNDS[:, 0]) and np.all(w.theta <= fitting.THETA_BOUNDS[:, 1])
        assert np.all(w.width >= fitting.WIDTH_BOUNDS[:, 0]) and np.all(w.width <= fitting.WIDTH_BOUNDS[:, 1])
        assert np.all(np.abs(w.amplitude) <= fitting.AMPLITUDE_LIMIT_MV)


def test_summary_is_json_ready(beat_fits):
    import json

    summary = beat_fits[2][0].summary()
    text = json.dumps(summary)
    assert "amplitude_mv" in text and set(summary["wave_times_ms"]) == set("PQRST")
    assert len(summary["quality"]["lead_correlation"]) == 12


@pytest.mark.parametrize(
    "case, message",
    [
        ("flat", "flat signal"),
        ("nan", "NaN"),
        ("short", "too short"),
        ("one_peak", "fewer than two R peaks"),
        ("shape", r"expected \(time, 12\)"),
        ("fast", "outside"),
    ],
)
def test_bad_input_is_named(case, message):
    ecg = _record(_true_params(70.0), 1, duration_s=3.0)
    r_peaks = None
    if case == "flat":
        ecg[:, 7] = 0.1
    elif case == "nan":
        ecg[100, 3] = np.nan
    elif case == "short":
        ecg = ecg[:400]
    elif case == "one_peak":
        r_peaks = np.array([700])
    elif case == "shape":
        ecg = ecg[:, :8]
    elif case == "fast":
        r_peaks = np.arange(300, 1400, 40)  # 750 bpm
    with pytest.raises(FitError, match=message) as info:
        fitting.prepare_fit(ecg, FitConfig(), r_peaks, name="patient-7")
    assert "patient-7" in str(info.value)


def test_strip_longer_than_the_record_is_an_error():
    ecg = _record(_true_params(70.0), 1, duration_s=3.0)
    with pytest.raises(FitError, match="strip fitting needs 10 s"):
        fitting.prepare_fit(ecg, dataclasses.replace(FitConfig(), mode="strip"), name="r")


@pytest.mark.data
def test_ludb_fits_agree_with_cardiologists(data_dir):
    """Four LUDB sinus records: fitted R/P/T peak times against the annotated peaks, and beat correlation."""
    from sediff_jax.data.canonical import CanonicalConfig, canonicalize
    from sediff_jax.data.ludb import annotated_peak_times_ms, read_ludb
    from sediff_jax.data.wfdb_reader import read_record

    entries = [e for e in read_ludb(str(data_dir / "ludb")) if e.codes and e.codes[0] == "Sinus rhythm"][:4]
    records = [canonicalize(read_record(e.path), CanonicalConfig(fs=FS)) for e in entries]
    results = fitting.fit_ecgs([r.ecg for r in records], FitConfig(batch_size=4, max_iterations=200),
                               [r.r_peaks for r in records])
    errors = {"P": [], "R": [], "T": []}
    for entry, record, result in zip(entries, records, results):
        truth = annotated_peak_times_ms(entry.path, record.r_peaks)
        for wave, column in (("P", 0), ("R", 2), ("T", 4)):
            errors[wave].append(np.abs(result.lead_wave_times_ms[:, column] - truth[wave]))
        assert np.median(result.lead_correlation) > 0.93
    median = {w: np.nanmedian(np.concatenate(e)) for w, e in errors.items()}
    assert median["R"] <= 8.0 and median["P"] <= 20.0 and median["T"] <= 30.0, median
