"""Named rhythms and morphologies for the 12-lead dipole model.

Each preset starts from the normal adult dipole (`dipole_params`) and changes a documented set of parameters.
They are caricatures built from textbook criteria, good for tests, demos and synthetic pre-training; they are
not fitted to patients (see the simulator fitting API for that) and are not for clinical use.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from sediff_jax.simulator.params import DIPOLE_WAVES, ECGParams, dipole_params, validate_rhythm, with_heart_rate

_P, _Q, _R, _S, _ST, _T = (DIPOLE_WAVES.index(w) for w in ("P", "Q", "R", "S", "ST", "T"))
_QRS = [_Q, _R, _S]


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named parameter set.

    name: identifier used on the command line.  changes: what differs from normal sinus rhythm.
    limits: what the caricature does not reproduce.  hr, hr_std: default heart rate and its std, bpm.
    lf_hf_ratio, irregularity: RR spectrum (see RhythmParams).  morphology: edits the wave/baseline params.
    report: the English report a cardiologist would write for such an ECG (text of the synthetic dataset).
    """

    name: str
    changes: str
    limits: str
    hr: float
    hr_std: float
    lf_hf_ratio: float = 0.5
    irregularity: float = 0.0
    morphology: Callable[[ECGParams], ECGParams] = lambda p: p
    report: str = ""


def _edit_waves(params: ECGParams, amplitude=None, width=None, theta=None) -> ECGParams:
    waves = params.waves
    if amplitude is not None:
        waves = waves._replace(amplitude=jnp.asarray(amplitude(np.array(waves.amplitude)), jnp.float32))
    if width is not None:
        waves = waves._replace(width=jnp.asarray(width(np.array(waves.width)), jnp.float32))
    if theta is not None:
        waves = waves._replace(theta=jnp.asarray(theta(np.array(waves.theta)), jnp.float32))
    return params._replace(waves=waves)


def _set(column: int, xyz):
    def edit(a):
        a = a.copy()
        a[:, column] = xyz
        return a

    return edit


def _scale(columns, factor):
    def edit(a):
        a = a.copy()
        a[:, columns] *= factor
        return a

    return edit


def _atrial_fibrillation(p: ECGParams) -> ECGParams:
    p = _edit_waves(p, amplitude=_set(_P, [0.0, 0.0, 0.0]))
    baseline = p.baseline._replace(
        fib_amplitude=jnp.asarray([0.02, 0.03, -0.06], jnp.float32), fib_frequency=jnp.asarray(6.0, jnp.float32)
    )
    return p._replace(baseline=baseline)


def _wide_qrs(p: ECGParams) -> ECGParams:
    # LBBB-like: no septal q, slow broad leftward-posterior activation, discordant T.
    def amplitude(a):
        a = a.copy()
        a[:, _Q] = 0.0
        a[:, _R] = [1.0, 0.25, 0.9]
        a[:, _S] = [0.15, -0.05, 0.35]
        a[:, _T] = [-0.25, -0.05, -0.35]
        return a

    def theta(t):
        t = t.copy()
        t[:, _S] = 0.4
        t[:, _T] = 1.6
        return t

    return _edit_waves(p, amplitude=amplitude, width=_scale(_QRS, 2.2), theta=theta)


def _with_st(xyz):
    def morphology(p: ECGParams) -> ECGParams:
        return _edit_waves(p, amplitude=_set(_ST, xyz))

    return morphology


def _inverted_t(p: ECGParams) -> ECGParams:
    return _edit_waves(p, amplitude=_scale([_T], -1.0))


def _lvh(p: ECGParams) -> ECGParams:
    def amplitude(a):
        a = a.copy()
        a[:, _R] = [2.0, 0.9, 1.1]
        a[:, _S] = [-0.4, -0.2, 1.0]
        a[:, _T] = [-0.15, 0.05, 0.05]  # lateral strain pattern
        return a

    return _edit_waves(p, amplitude=amplitude, width=_scale(_QRS, 1.15))


def _low_voltage(p: ECGParams) -> ECGParams:
    return _edit_waves(p, amplitude=lambda a: 0.35 * a)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset(
            "normal_sinus",
            "normal adult dipole, 70 bpm, mild LF/HF heart-rate variability",
            "one fixed heart geometry; real normal ECGs vary in axis, voltage and intervals",
            hr=70.0,
            hr_std=2.0,
            report="Sinus rhythm. Normal ECG.",
        ),
        Preset(
            "sinus_bradycardia",
            "heart rate 48 bpm",
            "no change in morphology beyond ECGSYN's heart-rate scaling",
            hr=48.0,
            hr_std=1.5,
            report="Sinus bradycardia. Otherwise normal ECG.",
        ),
        Preset(
            "sinus_tachycardia",
            "heart rate 120 bpm",
            "P and T do not merge as they may above ~150 bpm in real records",
            hr=120.0,
            hr_std=1.5,
            report="Sinus tachycardia. Otherwise normal ECG.",
        ),
        Preset(
            "sinus_arrhythmia",
            "heart rate 70 bpm with large respiratory variability (HR std 7 bpm, HF-dominant, LF/HF 0.2)",
            "variability follows the spectrum, not an explicit coupling to the respiratory baseline",
            hr=70.0,
            hr_std=7.0,
            report="Sinus arrhythmia. Otherwise normal ECG.",
            lf_hf_ratio=0.2,
        ),
        Preset(
            "atrial_fibrillation",
            "irregularly irregular RR (broadband RR spectrum, HR 100 +- 15 bpm), no P wave, fibrillatory f-waves "
            "(0.03-0.06 mV, 6 +- 1 Hz, largest in V1 and the inferior leads)",
            "f-waves are one frequency-modulated sinusoid rather than chaotic atrial activity; RR intervals are "
            "a smooth 1 Hz-band process, not independent beat to beat",
            hr=100.0,
            hr_std=15.0,
            report="Atrial fibrillation.",
            irregularity=1.0,
            morphology=_atrial_fibrillation,
        ),
        Preset(
            "wide_qrs",
            "bundle-branch-like (LBBB pattern): QRS widths x2.2 (QRS ~150 ms), no septal q, broad R in I/V6, deep "
            "QS-like V1-V2, discordant T",
            "no notching (RsR'), no explicit conduction sequence; RBBB is not separately modelled",
            hr=70.0,
            hr_std=1.5,
            report="Sinus rhythm. Complete left bundle branch block.",
            morphology=_wide_qrs,
        ),
        Preset(
            "st_elevation",
            "anterior injury current: ST segment raised ~0.3 mV in V2-V3, ~0.1-0.2 mV in V1 and V4",
            "a smooth dome between S and T; no reciprocal evolution over time, no Q-wave formation",
            hr=75.0,
            hr_std=1.5,
            report="Sinus rhythm. ST elevation in the anterior leads, consistent with acute anterior injury.",
            morphology=_with_st([0.05, 0.0, -0.25]),
        ),
        Preset(
            "st_depression",
            "subendocardial ischaemia: ST depressed ~0.1-0.15 mV in II, aVF, V4-V6",
            "horizontal/down-sloping shape is approximated by one Gaussian; no exercise dynamics",
            hr=80.0,
            hr_std=1.5,
            report="Sinus rhythm. ST depression in the inferior and lateral leads, suggestive of ischemia.",
            morphology=_with_st([-0.2, -0.12, 0.05]),
        ),
        Preset(
            "inverted_t",
            "T-wave dipole reversed: T negative in I, II, V2-V6",
            "uniform inversion; real T inversion is often regional",
            hr=70.0,
            hr_std=1.5,
            report="Sinus rhythm. Widespread T wave inversion.",
            morphology=_inverted_t,
        ),
        Preset(
            "lvh",
            "high voltage (LVH-like): R ~2.3 mV in V5, S ~2 mV in V2 (Sokolow-Lyon > 3.5 mV), QRS x1.15 wider, "
            "lateral T flattening/strain",
            "voltage only; no left-atrial P, no axis deviation",
            hr=70.0,
            hr_std=1.5,
            report="Sinus rhythm. Left ventricular hypertrophy with repolarization abnormality.",
            morphology=_lvh,
        ),
        Preset(
            "low_voltage",
            "all wave amplitudes x0.35: limb-lead QRS < 0.5 mV",
            "uniform damping (as with effusion or obesity), no other change",
            hr=75.0,
            hr_std=1.5,
            report="Sinus rhythm. Low QRS voltages.",
            morphology=_low_voltage,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None


def preset_params(name: str, hr: float | None = None, hr_std: float | None = None, **rhythm) -> ECGParams:
    """The parameters of preset `name`, optionally with another heart rate (bpm) and rhythm fields."""
    preset = get_preset(name)
    hr = preset.hr if hr is None else hr
    hr_std = preset.hr_std if hr_std is None else hr_std
    validate_rhythm(hr, hr_std)
    params = with_heart_rate(dipole_params(lf_hf_ratio=preset.lf_hf_ratio), hr, hr_std)
    fields = {"irregularity": preset.irregularity, **rhythm}
    params = params._replace(
        rhythm=params.rhythm._replace(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})
    )
    return preset.morphology(params)
