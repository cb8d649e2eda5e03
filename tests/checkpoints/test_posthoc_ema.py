"""Post-hoc EMA: the snapshots' weight profiles against `optim.update_ema` itself, EDM2's power profile against
its definition, and averages rebuilt from snapshots against the same averages taken over every iterate."""

import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.checkpoints.posthoc_ema import (SIGMA_REL_MAX, combine_snapshots, ema_profile, fit_profile,
                                                power_exponent, power_profile)
from sediff_jax.optim import update_ema

T = 1200
EVERY = 40
DECAY = 0.99


@pytest.fixture(scope="module")
def run():
    """A random walk of T + 1 parameter iterates (a 2-leaf tree each), and the EMA snapshots training keeps
    every EVERY steps, computed by update_ema as the train step does."""
    rng = np.random.default_rng(0)
    iterates = np.cumsum(rng.normal(size=(T + 1, 7)), axis=0).astype(np.float32)
    ema, snapshots = jnp.asarray(iterates[0]), {}
    for k in range(1, T + 1):
        ema = update_ema(ema, jnp.asarray(iterates[k]), jnp.asarray(k - 1, jnp.int32), DECAY)
        if k % EVERY == 0:
            snapshots[k] = np.asarray(ema)
    return iterates, snapshots


def _tree(x):
    return {"w": x[:4], "b": {"bias": x[4:]}}


def test_the_ema_profile_is_what_update_ema_computes(run):
    iterates, snapshots = run
    for step in (EVERY, 400, T):  # inside the warm-up (decay k / (9 + k)) and past it (DECAY)
        weights = ema_profile(step, DECAY)
        assert weights.shape == (step + 1,) and weights.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(weights @ iterates[: step + 1], snapshots[step], rtol=2e-5, atol=2e-4)
    np.testing.assert_array_equal(ema_profile(5, 0.0), [0, 0, 0, 0, 0, 1])  # decay 0: the parameters themselves


def test_the_power_profile_has_the_asked_relative_width_and_exponent():
    for sigma_rel in (0.05, 0.1, 0.2):
        gamma = power_exponent(sigma_rel)
        assert (gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)) == pytest.approx(sigma_rel**2, rel=1e-9)
        weights = power_profile(4000, sigma_rel)
        t = np.arange(4001) / 4000
        mean = weights @ t
        assert weights.sum() == pytest.approx(1.0) and weights[0] == 0
        assert np.sqrt(weights @ (t - mean) ** 2) == pytest.approx(sigma_rel, rel=2e-3)
        # EDM2's update: decay (1 - 1/k)^(gamma + 1) at update k, applied as an EMA
        decays = (1 - 1 / np.arange(1, 4001)) ** (gamma + 1)
        ema_weights = np.zeros(4001)
        ema_weights[0] = 1.0
        for k, d in enumerate(decays, start=1):
            ema_weights *= d
            ema_weights[k] = 1 - d
        np.testing.assert_allclose(weights, ema_weights, atol=1e-12)
    for bad in (0.0, -0.1, SIGMA_REL_MAX, 0.5):
        with pytest.raises(ValueError, match="sigma_rel"):
            power_exponent(bad)


def test_a_longer_or_shorter_average_rebuilt_from_snapshots_matches_it_taken_over_every_iterate(run):
    iterates, snapshots = run
    own = snapshots[T]
    for sigma_rel in (0.06, 0.2):  # the run's own EMA is ~0.09 (its warm-up)
        target = power_profile(T, sigma_rel)
        fit = fit_profile(list(snapshots), DECAY, target)
        assert fit.relative_error < 0.1 and fit.steps == tuple(sorted(snapshots))
        (rebuilt,) = combine_snapshots([fit], lambda s: _tree(snapshots[s]))
        exact = target @ iterates
        rebuilt = np.concatenate([rebuilt["w"], rebuilt["b"]["bias"]])
        assert rebuilt.dtype == np.float32
        # far closer to the asked average than the run's own EMA is: the change is real, and it is the right one
        assert np.abs(rebuilt - exact).max() < 0.2 * np.abs(own - exact).max()


def test_a_snapshot_asked_for_is_itself_and_later_snapshots_do_not_count(run):
    _, snapshots = run
    fit = fit_profile(list(snapshots), DECAY, ema_profile(400, DECAY))
    assert fit.steps[-1] == 400 and fit.relative_error < 1e-9
    np.testing.assert_allclose(fit.coefficients, np.eye(len(fit.steps))[-1], atol=1e-8)
    (rebuilt,) = combine_snapshots([fit], lambda s: snapshots[s])
    np.testing.assert_allclose(rebuilt, snapshots[400], rtol=1e-6)
    with pytest.raises(ValueError, match="no snapshot at or before step 20"):
        fit_profile(list(snapshots), DECAY, power_profile(20, 0.1))


def test_several_fits_read_each_snapshot_once(run):
    _, snapshots = run
    fits = [fit_profile(list(snapshots), DECAY, power_profile(T, s)) for s in (0.05, 0.1, 0.2)]
    reads = []
    combined = combine_snapshots(fits, lambda s: reads.append(s) or snapshots[s])
    assert sorted(reads) == sorted(snapshots) and len(combined) == 3
    for fit, tree in zip(fits, combined):
        np.testing.assert_allclose(tree, sum(c * snapshots[s].astype(np.float64)
                                             for s, c in zip(fit.steps, fit.coefficients)), rtol=1e-6, atol=1e-5)


def test_within_its_warm_up_the_run_ema_is_the_power_ema_of_exponent_8():
    """update_ema's warm-up min(decay, (1 + t) / (10 + t)) binds until ~9,000 steps at decay 0.999: the EMA there
    is EDM2's power EMA with gamma 8 (sigma_rel 0.0905), as docs/training.md says."""
    run, power = ema_profile(8000, 0.999), power_profile(8000, np.sqrt(9 / 1100))
    assert power_exponent(np.sqrt(9 / 1100)) == pytest.approx(8.0)
    assert np.linalg.norm(run - power) / np.linalg.norm(power) < 0.005
