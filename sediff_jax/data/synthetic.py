"""A synthetic 12-lead dataset from the simulator presets: the embedded default that needs no download.

Each record draws a preset, a heart rate around the preset's (x0.9 .. x1.15, so bradycardia stays < 60 bpm
and tachycardia > 100 bpm), a global voltage scale (x0.8 .. x1.2), an age (20-85 y) and a sex, and adds
recording noise. Its text is the preset's report. Everything follows from the seed.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.data.canonical import CanonicalConfig, CanonicalRecord
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm
from sediff_jax.data.sources import SPLITS, RecordEntry
from sediff_jax.simulator import NoiseConfig, SimulatorConfig, add_noise, preset_params, simulate_batch, stack_params
from sediff_jax.simulator.presets import PRESETS

CHUNK = 64  # records simulated per jitted call (a fixed shape, so one compilation)


def _split_seed(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{split}".encode()).digest()[:4], "big")


def synthetic_records(
    num_records: int,
    config: CanonicalConfig = CanonicalConfig(),
    *,
    split: str = "train",
    seed: int = 0,
    presets: Sequence[str] | None = None,
    noise: NoiseConfig | None = NoiseConfig(),
) -> Iterator[tuple[RecordEntry, CanonicalRecord]]:
    """Yield `num_records` simulated records of one split as (entry, canonical record)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    names = list(presets or PRESETS)
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    rng = np.random.default_rng(_split_seed(seed, split))
    sim_config = SimulatorConfig(model="dipole", duration_s=config.duration_s, fs=config.fs)
    key = jax.random.key(_split_seed(seed, split))
    for lo in range(0, num_records, CHUNK):
        n = min(CHUNK, num_records - lo)
        chosen = rng.integers(len(names), size=CHUNK)
        hr_scale = rng.uniform(0.9, 1.15, size=CHUNK)
        voltage = rng.uniform(0.8, 1.2, size=CHUNK)
        ages = rng.integers(20, 86, size=CHUNK).astype(float)
        sexes = rng.choice(["male", "female"], size=CHUNK)
        params = stack_params(
            [preset_params(names[c], hr=PRESETS[names[c]].hr * s) for c, s in zip(chosen, hr_scale)]
        )
        params = params._replace(waves=params.waves._replace(
            amplitude=params.waves.amplitude * jnp.asarray(voltage, jnp.float32)[:, None, None]))
        key, sim_key, noise_key = jax.random.split(key, 3)
        ecg = simulate_batch(params, jax.random.split(sim_key, CHUNK), sim_config)
        if noise is not None:
            ecg = add_noise(ecg, noise_key, config.fs, noise)
        ecg = np.asarray(ecg, np.float32)
        for j in range(n):
            preset = PRESETS[names[chosen[j]]]
            r_peaks = detect_r_peaks(ecg[j], config.fs)
            record_id = f"synthetic/{split}/{lo + j:06d}"
            entry = RecordEntry(
                record_id=record_id,
                patient_id=record_id,
                path="",
                fs=config.fs,
                split=split,
                age=float(ages[j]),
                sex=str(sexes[j]),
                text=preset.report,
                original_text=preset.report,
                codes=(preset.name,),
            )
            yield entry, CanonicalRecord(
                ecg=ecg[j], fs=config.fs, r_peaks=r_peaks, hr_bpm=heart_rate_bpm(r_peaks, config.fs)
            )
