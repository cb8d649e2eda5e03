"""Lead amplitudes from retrieved patients: each generated ECG's leads rescaled to the peak-to-peak amplitudes of
one real record drawn from the prompt's retrieved neighbours (`SamplerConfig(lead_amplitudes='retrieved')`).

Why: the denoiser draws every lead's amplitude from noise and draws it narrowly. On all 2,198 PTB-XL fold-10
prompts the shipped model's per-lead peak-to-peak amplitudes vary 0.55-0.70 as widely across records as the real
ones. Moving each lead all the way to a retrieved patient's amplitude takes FID from 0.48 to 0.27 and k-NN recall
from 0.49 to 0.62; the default, 3/4 of the way on a log scale, to 0.31 and 0.60 at equal precision
(docs/variety.md). How large a patient's QRS is in each lead (body habitus, heart position, electrode distance) is
a property of the patient that a report does not state; the retrieved neighbours share the prompt's findings
(voltage criteria included), so one of them supplies a real patient's amplitudes for those findings. The
waveform's timing and shapes stay the model's: each lead's gain changes (and, through the Einthoven projection,
the limb leads' mix).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sediff_jax.checkpoints import CheckpointError
from sediff_jax.data.canonical import CanonicalConfig, canonicalize
from sediff_jax.data.wfdb_reader import RecordError, read_record
from sediff_jax.experience.profiles import ProfileCorpus
from sediff_jax.generation.model import experience_profiles_path
from sediff_jax.generation.prompts import PromptError
from sediff_jax.leads import NUM_LEADS, project_to_lead_space
from sediff_jax.signal.measurement import lead_amplitudes

MIN_RECORD_S = 2.0  # a record gives lead amplitudes from at least this much signal (two beats at 60 bpm)
MAX_GAIN = 4.0  # a lead is never scaled by more than this factor, or less than its inverse
LIMB_PASSES = 3  # scale-then-project rounds: the projection moves the limb leads' amplitudes off their targets


class AmplitudeError(PromptError):
    """Lead amplitudes a prompt asks for that cannot be had; the message names the record and the problem."""


def amplitudes_from_record(path: str, fs: float, duration_s: float) -> np.ndarray:
    """(12,) float32 mV: the lead amplitudes (`signal.lead_amplitudes`) of a WFDB record's first `duration_s`
    seconds (all of it when shorter, at least `MIN_RECORD_S`) brought to canonical form at `fs` Hz, as the profile
    corpus measures its records. AmplitudeError names the record when it cannot be read, is too short, or has a
    flat lead (the reader's check)."""
    where = f"amplitudes_from={path}"
    try:
        raw = read_record(path)
        if raw.duration_s < MIN_RECORD_S:
            raise AmplitudeError(f"{where}: the record has {raw.duration_s:.2f} s of signal; lead amplitudes need at "
                                 f"least {MIN_RECORD_S:g} s")
        record = canonicalize(raw, CanonicalConfig(fs=fs, duration_s=min(duration_s, raw.duration_s)))
    except (RecordError, OSError) as e:
        raise AmplitudeError(f"{where}: {e}") from None
    return lead_amplitudes(record.ecg).astype(np.float32)  # (the reader refuses a flat lead, naming it)


def given_amplitudes(amplitudes: np.ndarray | None, n: int) -> tuple[np.ndarray | None, np.ndarray]:
    """(amplitudes (n, 12) float32 mV or None, given (n,) bool): lead amplitudes handed to the generator per
    prompt, a row of NaN where none. ValueError for another shape, AmplitudeError for a row that is partly NaN or
    not positive."""
    if amplitudes is None:
        return None, np.zeros(n, bool)
    amplitudes = np.asarray(amplitudes, np.float32)
    if amplitudes.shape != (n, NUM_LEADS):
        raise ValueError(f"amplitudes: expected shape ({n}, {NUM_LEADS}) (one row of lead amplitudes per prompt), "
                         f"got {amplitudes.shape}")
    known = np.isfinite(amplitudes)
    if np.any(known.any(1) != known.all(1)) or np.any(amplitudes[known] <= 0):
        raise AmplitudeError("amplitudes: each given row must be 12 positive lead amplitudes (mV), or all NaN for "
                             "none")
    return amplitudes, known.all(1)


def amplitude_source(lead_amplitudes: str, experience: str, available: bool) -> str:
    """Where a generated ECG's lead amplitudes come from, 'retrieved' or 'model', for `SamplerConfig.lead_amplitudes`
    and the generator's `experience` mode; 'auto' retrieves when `available` (the model's corpus has amplitudes at
    its rate) and experience is not 'off'."""
    if lead_amplitudes == "auto":
        return "retrieved" if available and experience != "off" else "model"
    return lead_amplitudes


def model_draws_amplitudes(model) -> bool:
    """Whether `lead_amplitudes='auto'` retrieves for `model` (an `SEDiffModel`): it was trained with experience
    and its profile corpus is at hand with lead amplitudes at the model's rate."""
    try:
        path = experience_profiles_path(model)
    except CheckpointError:
        return False
    return path is not None and ProfileCorpus.load(path).has_amplitudes_at(model.fs)


def match_lead_amplitudes(ecg: np.ndarray, target: np.ndarray, exact_limb_leads: bool = True,
                          strength: float = 1.0, max_gain: float = MAX_GAIN) -> np.ndarray:
    """Each lead of each ECG multiplied by target / its `lead_amplitudes`, the gain clipped to [1/max_gain,
    max_gain]; a lead whose target is NaN (none retrieved) or whose own amplitude is 0 keeps gain 1.

    strength: in [0, 1], how far each lead moves from its own amplitude a to the target b on a log scale: the lead
    is brought to a^(1 - strength) b^strength (1: to the target; 0: unchanged). Below 1 the model's own amplitude,
    which carries the prompt's findings (an ST elevation's size, voltage criteria), keeps a share.

    With `exact_limb_leads` the limb leads are projected back onto Einthoven's and Goldberger's space after the
    scaling (`leads.project_to_lead_space`), LIMB_PASSES times, so the result obeys the laws exactly and its limb
    amplitudes come close to the targets (the six targets need not be reachable by one consistent pair I, II).
    Chest leads meet their targets exactly (up to the gain clip). An ECG whose targets are all NaN, or any ECG at
    strength 0, is returned unchanged.

    Args:
      ecg: (batch, time, 12) mV, finite.
      target: (batch, 12) mV, > 0 or NaN.
    Returns:
      (batch, time, 12) float32 mV.
    """
    ecg = np.asarray(ecg, np.float32)
    target = np.asarray(target, np.float32)
    if ecg.ndim != 3 or ecg.shape[-1] != NUM_LEADS:
        raise ValueError(f"ecg must be (batch, time, {NUM_LEADS}), got {ecg.shape}")
    if target.shape != (ecg.shape[0], NUM_LEADS):
        raise ValueError(f"target must be ({ecg.shape[0]}, {NUM_LEADS}) amplitudes (mV), got {target.shape}")
    if np.any(target[np.isfinite(target)] <= 0) or np.any(np.isinf(target)):
        raise ValueError("target amplitudes must be > 0 mV (NaN: keep the lead as it is)")
    if not max_gain >= 1:
        raise ValueError(f"max_gain={max_gain} must be >= 1")
    if not 0 <= strength <= 1:
        raise ValueError(f"strength={strength} must be in [0, 1]")
    rows = np.isfinite(target).any(axis=1) & (strength > 0)  # an ECG with no target is returned as it is
    out = ecg[rows]
    target = target[rows]
    if strength != 1:
        own = lead_amplitudes(out)
        target = np.where(own > 0, np.where(own > 0, own, 1.0) ** (1 - strength) * target ** strength, target)
    for _ in range(LIMB_PASSES if exact_limb_leads else 1):
        own = lead_amplitudes(out)
        gain = np.where(np.isfinite(target) & (own > 0), target / np.where(own > 0, own, 1.0), 1.0)
        out = out * np.clip(gain, 1.0 / max_gain, max_gain)[:, None, :]
        if exact_limb_leads:
            out = project_to_lead_space(out)
    result = ecg.copy()
    result[rows] = out
    return result


def draw_neighbour_amplitudes(neighbour_amplitudes: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """One neighbour's amplitudes per prompt, drawn uniformly: (n, 12) float32 mV, NaN where a prompt has none.

    neighbour_amplitudes: per prompt, (k_i, 12) mV of its retrieved neighbours (k_i may be 0; rows with a NaN are
    not drawn). Prompt i draws with `np.random.default_rng((seed mod 2**64, i))`, so its draw does not depend on
    the other prompts or on how they are batched."""
    out = np.full((len(neighbour_amplitudes), NUM_LEADS), np.nan, np.float32)
    for i, rows in enumerate(neighbour_amplitudes):
        rows = np.asarray(rows, np.float32).reshape(-1, NUM_LEADS)
        rows = rows[np.isfinite(rows).all(axis=1)]
        if len(rows):
            out[i] = rows[np.random.default_rng((seed % 2**64, i)).integers(len(rows))]  # (any int seed)
    return out
