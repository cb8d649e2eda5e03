"""The interval metrics recover the known intervals of simulated ECGs.

The simulator's waves are Gaussians in phase, so their fiducials are known in closed form from the parameters:
the tangent method (used for P onset and T end) puts the onset of a Gaussian of centre c and width s at c - 2s
and its end at c + 2s; QRS onset / offset are taken as Q - 2s_Q and S + 2s_S. Angles and widths follow ECGSYN's
heart-rate scaling, and a phase of a rad lasts a / (2 pi) RR.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.signal.delineation import delineate
from sediff_jax.evaluation import interval_errors
from sediff_jax.simulator.params import DIPOLE_THETA_HR_EXPONENT
from sediff_jax.simulator.presets import preset_params
from sediff_jax.simulator.solve import SimulatorConfig, simulate_batch

P, Q, S, T = 0, 1, 3, 5
CASES = [(hr, d_t, d_p) for hr in (55.0, 70.0, 90.0) for d_t in (0.0, 0.15) for d_p in (0.0, -0.1)]


def _params(hr, d_t, d_p):
    params = preset_params("normal_sinus", hr=hr, hr_std=0.0)
    theta = np.array(params.waves.theta)
    theta[:, T] += d_t  # a later T wave: longer QT
    theta[:, P] += d_p  # an earlier P wave: longer PR
    return params._replace(waves=params.waves._replace(theta=jnp.asarray(theta)))


def _known(params, hr):
    h, rr_ms = math.sqrt(hr / 60.0), 60000.0 / hr
    theta = np.asarray(params.waves.theta)[0] * h ** DIPOLE_THETA_HR_EXPONENT
    width = np.asarray(params.waves.width)[0] * h
    ms = lambda angle: angle / (2 * np.pi) * rr_ms  # noqa: E731
    p_on, q_on = ms(theta[P] - 2 * width[P]), ms(theta[Q] - 2 * width[Q])
    s_off, t_end = ms(theta[S] + 2 * width[S]), ms(theta[T] + 2 * width[T])
    qt = t_end - q_on
    return {"hr_bpm": hr, "pr_ms": q_on - p_on, "qrs_ms": s_off - q_on, "qt_ms": qt,
            "qtc_bazett_ms": qt / math.sqrt(rr_ms / 1000), "qtc_fridericia_ms": qt / (rr_ms / 1000) ** (1 / 3)}


@pytest.mark.parametrize("fs", [100.0, 500.0])
def test_interval_metrics_recover_simulated_intervals(fs):
    params = [_params(*case) for case in CASES]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *params)
    ecg = np.asarray(simulate_batch(batch, jax.random.split(jax.random.key(0), len(CASES)),
                                    SimulatorConfig(fs=fs, duration_s=10.0)))
    measured = [delineate(record, fs).intervals() for record in ecg]
    known = [_known(p, case[0]) for p, case in zip(params, CASES)]
    errors = interval_errors(measured, known)
    print(fs, {name: round(e["mean"], 1) for name, e in errors.items()})
    assert all(e["n"] == len(CASES) for e in errors.values()), errors
    assert errors["hr_bpm"]["mean"] < 0.5
    tolerance = {"pr_ms": 10, "qt_ms": 10, "qtc_bazett_ms": 12, "qtc_fridericia_ms": 12, "qrs_ms": 16}
    for name, limit in tolerance.items():
        assert errors[name]["mean"] < limit, (name, errors[name])
    # Changes are recovered more tightly than absolute values (the onset convention cancels).
    step = 10.0 if fs == 100 else 4.0
    for i, (hr, d_t, d_p) in enumerate(CASES):
        base = CASES.index((hr, 0.0, 0.0))
        for name in ("qt_ms", "pr_ms"):
            change_measured = measured[i][name] - measured[base][name]
            change_known = known[i][name] - known[base][name]
            assert abs(change_measured - change_known) < step, (CASES[i], name, change_measured, change_known)
