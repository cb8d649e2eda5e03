r"""Simulate 12-lead ECGs from a named preset and write WFDB, NPZ and PNG files.

    python -m experiments.simulate --preset=atrial_fibrillation --num=4 --noise --out=out/af

writes out/af_0.hea/.dat/.npz/.png ... out/af_3.*; the heart rate and its variability default to the preset's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from sediff_jax import io as ecg_io
from sediff_jax import simulator as sim
from sediff_jax.io.outputs import output_files, usable_path

HR_LO, HR_HI = sim.params.HR_RANGE_BPM
MAX_BATCH = 64
MIN_DURATION_S, MAX_DURATION_S = 0.1, 3600.0  # a few samples at the lowest rate; at most an hour

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "normal_sinus", list(sim.PRESETS), "Rhythm/morphology preset.")
flags.DEFINE_float("hr", None, f"Mean heart rate, bpm, in [{HR_LO:g}, {HR_HI:g}] (default: the preset's).")
flags.DEFINE_float("hr_std", None, "Standard deviation of the heart rate, bpm, in [0, hr/3] (default: the preset's).")
flags.DEFINE_float("duration", 10.0, f"Record length, seconds, in [{MIN_DURATION_S:g}, {MAX_DURATION_S:g}].")
flags.DEFINE_float("fs", 500.0, "Output sampling rate, Hz, in [50, 10000].")
flags.DEFINE_integer("num", 1, "Number of records (>= 1).")
flags.DEFINE_integer("seed", 0, "Random seed (RR variability and noise).")
flags.DEFINE_string("out", None, "Output path prefix: files are <out>_<i>.hea/.dat/.npz/.png.", required=True)
flags.DEFINE_bool("noise", False, "Add baseline wander, muscle noise and 50 Hz powerline interference.")
flags.DEFINE_float("powerline_hz", 50.0, "Powerline frequency for --noise, Hz.")
flags.DEFINE_enum("solver", "tsit5", list(sim.solve.SOLVERS), "ODE solver (fixed step at >= 500 Hz).")
flags.DEFINE_bool("png", True, "Also write the standard-layout 12-lead PNG.")
flags.DEFINE_bool("overwrite", False, "Replace files this tool wrote earlier under --out (as its record there, "
                  ".sediff_outputs.json, lists them); any other existing file refuses.")

flags.register_validator("hr", lambda v: v is None or HR_LO <= v <= HR_HI,
                         message=f"--hr must be within [{HR_LO:g}, {HR_HI:g}] bpm")
cli.check_float("hr_std", 0)
cli.check_float("duration", MIN_DURATION_S, MAX_DURATION_S)
cli.check_float("fs", 50, 10_000)
cli.check_int("num", 1, 100_000)
cli.check_int("seed", 0, cli.MAX_SEED)
cli.check_float("powerline_hz", 0, 1000, low_open=True)


def main(argv):
    del argv
    usable_path(FLAGS.out, "--out")
    if Path(FLAGS.out).is_dir() or FLAGS.out.endswith(("/", os.sep)):
        raise cli.UsageError(f"--out={FLAGS.out} is a folder; --out is a file prefix (files are <out>_<i>.hea ...)")
    from sediff_jax.io.wfdb_io import check_record_name

    check_record_name(f"{FLAGS.out}_0")  # (before any folder is made)
    suffixes = (".hea", ".dat", ".npz") + ((".png",) if FLAGS.png else ())
    names = [f"{FLAGS.out}_{i}{suffix}" for i in range(FLAGS.num) for suffix in suffixes]
    out = output_files(names, tool="simulate", overwrite=FLAGS.overwrite)
    preset = sim.get_preset(FLAGS.preset)
    hr = preset.hr if FLAGS.hr is None else FLAGS.hr
    hr_std = preset.hr_std if FLAGS.hr_std is None else FLAGS.hr_std
    if hr_std > hr / 3:
        raise cli.UsageError(f"--hr_std={hr_std:g} must be at most a third of the heart rate ({hr:g} bpm)")
    config = sim.SimulatorConfig(duration_s=FLAGS.duration, fs=FLAGS.fs, solver=FLAGS.solver)
    params = sim.preset_params(FLAGS.preset, hr=hr, hr_std=hr_std)

    start = time.perf_counter()
    key = jax.random.key(FLAGS.seed)
    rhythm_key, noise_key = jax.random.split(key)
    keys = jax.random.split(rhythm_key, FLAGS.num)
    chunk = min(FLAGS.num, MAX_BATCH)
    batch = sim.stack_params([params] * chunk)
    records = []
    for lo in range(0, FLAGS.num, chunk):
        k = keys[lo : lo + chunk]
        padded = jnp.concatenate([k, jnp.broadcast_to(k[:1], (chunk - len(k),))]) if len(k) < chunk else k
        records.append(np.asarray(sim.simulate_batch(batch, padded, config))[: len(k)])
    ecg = np.concatenate(records)
    if FLAGS.noise:
        noise = sim.NoiseConfig(powerline_hz=FLAGS.powerline_hz)
        ecg = np.asarray(sim.add_noise(ecg, noise_key, config.fs, noise))
    elapsed = time.perf_counter() - start

    description = f"{FLAGS.preset}, {hr:g} bpm (std {hr_std:g}), {FLAGS.duration:g} s at {FLAGS.fs:g} Hz"
    for i, record in enumerate(ecg):
        prefix = f"{FLAGS.out}_{i}"
        comments = [
            "sediff_jax simulated ECG (not a recording)",
            f"preset: {FLAGS.preset}",
            f"hr_bpm: {hr:g}",
            f"hr_std_bpm: {hr_std:g}",
            f"seed: {FLAGS.seed}",
            f"record: {i}",
            f"noise: {'yes' if FLAGS.noise else 'no'}",
        ]
        with out.writing(*(Path(f"{prefix}{suffix}").name for suffix in suffixes)):
            ecg_io.write_wfdb(prefix, record, config.fs, comments=comments)
            ecg_io.write_npz(f"{prefix}.npz", record, config.fs, preset=FLAGS.preset, hr_bpm=hr, hr_std_bpm=hr_std,
                             seed=FLAGS.seed, record=i, noise=FLAGS.noise)
            if FLAGS.png:
                ecg_io.save_ecg_png(f"{prefix}.png", record, config.fs,
                                    title=f"Simulated: {description}, record {i}")
        print(f"wrote {prefix}.hea/.dat/.npz" + ("/.png" if FLAGS.png else ""))
    print(f"simulated {FLAGS.num} record(s) ({description}) in {elapsed:.2f} s, compilation included")


if __name__ == "__main__":
    cli.run(main)
