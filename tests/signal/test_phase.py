"""The cardiac phase from R peaks: exact on simulated beats, batched and jittable, null without a rhythm."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.signal.phase import cardiac_phase, latent_times, pad_peaks, rhythm_features


def _irregular_peaks(seed: int, n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 37.0 + np.concatenate([[0.0], np.cumsum(rng.uniform(45.0, 140.0, n - 1))])  # samples at 100 Hz


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phase_is_zero_at_every_r_peak_monotone_and_two_pi_per_beat(seed):
    peaks = _irregular_peaks(seed)
    times = np.arange(0.0, 1000.0, 0.5)
    phase, valid = cardiac_phase(pad_peaks([peaks], 40)[0], np.concatenate([peaks, times]))
    phase = np.asarray(phase, np.float64)
    assert bool(valid)
    at_peaks, on_grid = phase[: peaks.size], phase[peaks.size:]
    np.testing.assert_allclose(at_peaks, 2 * np.pi * np.arange(peaks.size), atol=2e-4)  # 0 mod 2 pi, one per beat
    assert np.all(np.diff(on_grid) > 0)
    # linear in time between peaks, and the ends continue with the neighbouring RR
    mid = 0.5 * (peaks[3] + peaks[4])
    first_rr, last_rr = peaks[1] - peaks[0], peaks[-1] - peaks[-2]
    check, _ = cardiac_phase(peaks, np.array([mid, peaks[0] - 10.0, peaks[-1] + 10.0]))
    np.testing.assert_allclose(np.asarray(check), [2 * np.pi * 3.5, -2 * np.pi * 10.0 / first_rr,
                                                   2 * np.pi * (peaks.size - 1 + 10.0 / last_rr)], rtol=1e-5)


def test_batched_jitted_and_null_without_two_peaks():
    peaks = pad_peaks([_irregular_peaks(0), np.array([50.0]), np.zeros(0)], 16)
    features = jax.jit(rhythm_features, static_argnums=(1, 2))(jnp.asarray(peaks), 125, 8)
    assert features.shape == (3, 125, 3)
    np.testing.assert_allclose(np.asarray(features[0, :, 0] ** 2 + features[0, :, 1] ** 2), 1.0, atol=1e-5)
    assert np.all(np.asarray(features[0, :, 2]) == 1.0)
    assert np.all(np.asarray(features[1:]) == 0.0)  # one peak or none: no scaffold
    phase, _ = cardiac_phase(peaks[0], latent_times(125, 8))
    np.testing.assert_allclose(np.asarray(features[0, :, 0]), np.cos(np.asarray(phase)), atol=1e-5)


def test_latent_times_are_the_centres_of_each_latent_step():
    np.testing.assert_array_equal(latent_times(3, 8), [3.5, 11.5, 19.5])
    with pytest.raises(ValueError, match="do not fit"):
        pad_peaks([np.arange(5.0)], 4)
    assert math.isclose(float(pad_peaks([np.arange(3.0)])[0, -1]), 2.0)


def _premature_reference(peaks: np.ndarray) -> np.ndarray:
    """A loop over beats: premature when RR < 0.8 * max(median RR, the next RR)."""
    rr = np.diff(peaks)
    out = np.zeros(len(peaks), bool)
    for k in range(1, len(peaks)):
        after = rr[k] if k < len(rr) else 0.0
        out[k] = rr[k - 1] < 0.8 * max(np.median(rr), after)
    return out


def test_premature_beats_mark_bigeminy_trigeminy_and_a_single_ectopic_beat():
    from sediff_jax.signal.phase import premature_beats

    normal, early, pause = 100.0, 65.0, 135.0
    bigeminy = 20.0 + np.concatenate([[0.0], np.cumsum([early, pause] * 4)])  # half the intervals short
    trigeminy = 20.0 + np.concatenate([[0.0], np.cumsum([normal, early, pause] * 3)])
    single = 20.0 + np.concatenate([[0.0], np.cumsum([normal] * 3 + [early, pause] + [normal] * 3)])
    sinus = 20.0 + np.concatenate([[0.0], np.cumsum(np.linspace(95.0, 105.0, 9))])
    cases = [bigeminy, trigeminy, single, sinus, _irregular_peaks(3)]
    got = np.asarray(premature_beats(jnp.asarray(pad_peaks(cases, 16))))
    for case, row in zip(cases, got):
        np.testing.assert_array_equal(row[:len(case)], _premature_reference(case))
        assert not row[len(case):].any()
    np.testing.assert_array_equal(np.flatnonzero(got[0]), [1, 3, 5, 7])
    np.testing.assert_array_equal(np.flatnonzero(got[1]), [2, 5, 8])
    np.testing.assert_array_equal(np.flatnonzero(got[2]), [4])
    assert not got[3].any()
    nothing = np.asarray(premature_beats(jnp.asarray(pad_peaks([np.array([50.0]), np.zeros(0)], 4))))
    assert not nothing.any()


def test_the_ectopic_channel_marks_the_latent_steps_nearest_a_premature_beat():
    from sediff_jax.signal.phase import ECTOPIC_RHYTHM_FEATURES, premature_beats

    peaks = 20.0 + np.concatenate([[0.0], np.cumsum([100.0] * 3 + [65.0, 135.0] + [100.0] * 3)])  # 4th early
    padded = jnp.asarray(pad_peaks([peaks, np.array([50.0])], 16))
    features = jax.jit(rhythm_features, static_argnums=(1, 2, 3))(padded, 125, 8, ECTOPIC_RHYTHM_FEATURES)
    plain = rhythm_features(padded, 125, 8)
    assert features.shape == (2, 125, 4)
    np.testing.assert_array_equal(np.asarray(features[..., :3]), np.asarray(plain))  # the first three unchanged
    times = latent_times(125, 8)
    nearest = np.argmin(np.abs(times[:, None] - peaks[None, :]), axis=1)
    np.testing.assert_array_equal(np.asarray(features[0, :, 3]), (nearest == 4).astype(np.float32))
    assert 6 <= float(features[0, :, 3].sum()) <= 13  # about one RR (65 + 135) / 2 samples / 8 per step
    assert not np.asarray(features[1]).any()  # no scaffold, no ectopic marks
    assert bool(premature_beats(padded)[0, 4])
    with pytest.raises(ValueError, match="channels=5"):
        rhythm_features(padded, 125, 8, 5)
