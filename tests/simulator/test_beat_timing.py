"""Beat times from the phase oscillator: exact for a constant rate, seeded, the rhythm's mean and variability."""

import math

import jax
import numpy as np
import pytest

from sediff_jax.simulator.beat_timing import oscillator_phase, r_peak_times, simulated_beats
from sediff_jax.simulator.params import default_rhythm


@pytest.mark.parametrize("hr", [45.0, 75.0, 150.0])
def test_a_constant_rate_gives_the_exact_beat_times(hr):
    initial = -1.3
    rhythm = default_rhythm(hr_mean=hr, hr_std=0.0, initial_phase=initial)
    phase = np.asarray(oscillator_phase(rhythm, jax.random.key(0), 10.0))
    t = np.arange(phase.size) / 200.0
    np.testing.assert_allclose(phase, initial + 2 * np.pi * hr / 60.0 * t, atol=2e-4 * max(1.0, hr / 60.0 * 10))
    rr = 60.0 / hr
    exact = (-initial / (2 * np.pi)) * rr + rr * np.arange(40)
    exact = exact[exact <= 10.0]
    np.testing.assert_allclose(simulated_beats(rhythm, jax.random.key(0), 10.0), exact, atol=2e-4)


def test_same_key_same_beats_and_the_rhythm_s_variability():
    sinus = default_rhythm(hr_mean=70.0, hr_std=2.1, initial_phase=-math.pi / 2)
    a = simulated_beats(sinus, jax.random.key(3), 10.0)
    np.testing.assert_array_equal(a, simulated_beats(sinus, jax.random.key(3), 10.0))
    assert not np.array_equal(a, simulated_beats(sinus, jax.random.key(4), 10.0))
    af = default_rhythm(hr_mean=90.0, hr_std=18.0, irregularity=1.0, initial_phase=-math.pi / 2)
    cv = {name: [] for name in ("sinus", "af")}
    for seed in range(12):
        for name, rhythm in (("sinus", sinus), ("af", af)):
            rr = np.diff(simulated_beats(rhythm, jax.random.key(seed), 10.0))
            cv[name].append(rr.std() / rr.mean())
    assert np.median(cv["sinus"]) < 0.045 and np.mean(cv["af"]) > 0.12


def test_r_peak_times_interpolate_crossings():
    phase = np.array([-0.5, 0.5, 2 * np.pi - 0.1, 2 * np.pi + 0.3])
    np.testing.assert_allclose(r_peak_times(phase, fs=10.0), [0.05, 0.2 + 0.1 / 0.4 * 0.1])
