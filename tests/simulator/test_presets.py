"""Each preset shows the textbook feature it claims, measured on the simulated 12 leads."""

import jax
import numpy as np
import pytest

from sediff_jax import simulator as sim
from sediff_jax.leads import lead_index
from sediff_jax.signal.beats import beat_window_samples, median_beat
from tests.helpers import r_peak_times

FS = 500.0


@pytest.fixture(scope="module")
def records():
    names = list(sim.PRESETS)
    config = sim.SimulatorConfig(duration_s=20.0, fs=FS)
    params = sim.stack_params([sim.preset_params(n) for n in names])
    ecg = np.asarray(sim.simulate_batch(params, jax.random.split(jax.random.key(7), len(names)), config))
    out = {}
    for name, x in zip(names, ecg):
        # Time the beats on the spatial QRS: robust to any lead's polarity.
        magnitude = np.linalg.norm(np.asarray(sim.leads_to_dipole(x)), axis=-1)
        r = r_peak_times(magnitude, FS)
        beat, _ = median_beat(x, np.round(r * FS).astype(int), FS, 0.35, 0.55)
        r_index, _ = beat_window_samples(FS, 0.35, 0.55)
        out[name] = dict(ecg=x, r=r, beat=beat, r_index=r_index)
    return out


def _at(rec, lead, ms):
    return rec["beat"][rec["r_index"] + int(round(ms * FS / 1000)), lead_index(lead)]


def _window(rec, lead, start_ms, end_ms):
    i = rec["r_index"]
    return rec["beat"][i + int(start_ms * FS / 1000) : i + int(end_ms * FS / 1000), lead_index(lead)]


def _pr_baseline(rec, lead):
    return float(np.median(_window(rec, lead, -90, -60)))


def _qrs_duration_ms(rec):
    dipole = np.asarray(sim.leads_to_dipole(rec["beat"]))
    magnitude = np.linalg.norm(dipole - dipole[rec["r_index"] - int(0.09 * FS)], axis=-1)
    i = rec["r_index"]
    around = magnitude[i - int(0.12 * FS) : i + int(0.12 * FS)]
    above = np.where(around > 0.1 * around.max())[0]
    return (above[-1] - above[0]) / FS * 1000


def _hr(rec):
    return 60.0 / np.diff(rec["r"]).mean()


def test_rates(records):
    for name in sim.PRESETS:
        assert _hr(records[name]) == pytest.approx(sim.PRESETS[name].hr, abs=3.0), name


def test_normal_sinus_morphology(records):
    rec = records["normal_sinus"]
    assert 0.5 < _at(rec, "II", 0) < 1.5
    v1 = _window(rec, "V1", -60, 60)
    assert v1.min() < -2 * v1.max()  # rS in V1
    v6 = _window(rec, "V6", -60, 60)
    assert v6.max() > 3 * -v6.min()  # qR in V6
    p_wave = _window(rec, "II", -220, -100)
    assert 0.07 < p_wave.max() - _pr_baseline(rec, "II") < 0.3
    t_wave = _window(rec, "II", 150, 400)
    assert t_wave.max() > 0.15


def test_sinus_arrhythmia_varies_more(records):
    def hr_std(rec):
        return np.std(60.0 / np.diff(rec["r"]))

    assert hr_std(records["sinus_arrhythmia"]) > 2.5 * hr_std(records["normal_sinus"])


def test_atrial_fibrillation(records):
    af = records["atrial_fibrillation"]
    rr = np.diff(af["r"])
    assert np.std(rr) / np.mean(rr) > 0.08  # irregularly irregular
    assert np.abs(np.diff(rr)).mean() > 0.03
    # No P wave; f-waves: the record minus the same record without atrial activity oscillates at 4-9 Hz,
    # ~0.05 mV in V1.
    params = sim.preset_params("atrial_fibrillation")
    assert np.max(np.abs(params.waves.amplitude[:, 0])) == 0.0
    quiet = params._replace(baseline=params.baseline._replace(fib_amplitude=params.baseline.fib_amplitude * 0))
    config = sim.SimulatorConfig(duration_s=10.0, fs=FS, solver="tsit5")
    key = jax.random.key(3)
    f_waves = np.asarray(sim.simulate(params, key, config) - sim.simulate(quiet, key, config))[:, lead_index("V1")]
    freqs = np.fft.rfftfreq(len(f_waves), 1 / FS)
    power = np.abs(np.fft.rfft(f_waves)) ** 2
    assert power[(freqs > 4) & (freqs < 9)].sum() > 0.9 * power.sum()
    assert 0.03 < np.sqrt(2) * f_waves.std() < 0.1


def test_wide_qrs(records):
    wide, normal = _qrs_duration_ms(records["wide_qrs"]), _qrs_duration_ms(records["normal_sinus"])
    assert normal < 115 and wide > 120 and wide > 1.4 * normal, (normal, wide)


def test_st_elevation_and_depression(records):
    def st_level(rec, lead):  # J point + 60 ms, relative to the PR segment
        return _at(rec, lead, 110) - _pr_baseline(rec, lead)

    assert st_level(records["st_elevation"], "V2") > 0.2
    assert st_level(records["normal_sinus"], "V2") < 0.1
    assert st_level(records["st_depression"], "V5") < -0.08
    assert st_level(records["st_depression"], "II") < -0.08
    assert abs(st_level(records["normal_sinus"], "V5")) < 0.05


def test_inverted_t(records):
    for lead in ("I", "II", "V4", "V5"):
        t_wave = _window(records["inverted_t"], lead, 150, 400) - _pr_baseline(records["inverted_t"], lead)
        assert t_wave.min() < -0.1 and t_wave.max() < 0.05, lead


def test_lvh_voltage(records):
    def sokolow_lyon(rec):
        return -_window(rec, "V1", -60, 60).min() + max(_window(rec, "V5", -60, 60).max(), _window(rec, "V6", -60, 60).max())

    assert sokolow_lyon(records["lvh"]) > 3.5
    assert sokolow_lyon(records["normal_sinus"]) < 3.5


def test_low_voltage(records):
    for lead in ("I", "II", "III", "aVR", "aVL", "aVF"):
        qrs = _window(records["low_voltage"], lead, -60, 60)
        assert qrs.max() - qrs.min() < 0.5, lead


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="unknown preset 'vfib'.*normal_sinus"):
        sim.preset_params("vfib")


def test_presets_are_documented():
    for preset in sim.PRESETS.values():
        assert len(preset.changes) > 10 and len(preset.limits) > 10
