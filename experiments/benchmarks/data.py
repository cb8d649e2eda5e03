r"""Data-layer throughput: preparing PTB-XL and loading batches, against plain `wfdb` reading, in one run.

    python -m experiments.benchmarks.data [--data_dir=../shared/data] [--batch=32] [--num_batches=50]

For the 100 Hz and 500 Hz shapes (10 s, 12 leads) it times
  * preparation (records/s): `prepare` of the PTB-XL records in --data_dir, in one process and in one per core,
    against the reference of reading each record with `wfdb.rdsamp` and nothing else;
  * loading (batches/s): `BatchLoader` over the prepared dataset against reading each batch's records with
    `wfdb.rdsamp` (what a loader without a prepared dataset does every step);
  * what a training step consumes: the gradient of a loss through the simulator for one batch (the physics
    part of every SE-Diff step, so a lower bound on the step time). Loading must be faster than this.
Prints a Markdown table.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from absl import flags

from experiments import cli
from experiments.benchmarks.timing import compile_and_time

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", os.environ.get("SEDIFF_DATA_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "data")),
                    "Folder with ptb-xl/ (default: $SEDIFF_DATA_DIR or ../shared/data).")
flags.DEFINE_integer("batch", 32, "Records per batch.")
flags.DEFINE_integer("num_batches", 50, "Batches timed per loader.")
flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Processes for the parallel preparation.")


cli.check_int("batch", 1)
cli.check_int("num_batches", 1)
cli.check_int("num_workers", 1)

def main(argv):
    del argv
    import jax
    import numpy as np
    import tensorflow_datasets as tfds
    import wfdb

    from sediff_jax import simulator as sim
    from sediff_jax.data import builder
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.loader import BatchLoader
    from sediff_jax.data.prepare import PrepareConfig, prepare
    from sediff_jax.data.ptbxl import read_ptbxl

    tfds.disable_progress_bar()
    source_dir = os.path.join(FLAGS.data_dir, "ptb-xl")
    if not os.path.isdir(source_dir):
        raise cli.UsageError(f"{source_dir} not found; pass --data_dir")
    rows = []
    for fs in (100, 500):
        entries = read_ptbxl(source_dir, fs)
        n = len(entries)
        start = time.perf_counter()
        for e in entries:
            wfdb.rdsamp(e.path)
        ref_prepare = n / (time.perf_counter() - start)

        config = CanonicalConfig(fs=float(fs))
        prepare_rates = {}
        with tempfile.TemporaryDirectory() as out:
            for workers in sorted({1, FLAGS.num_workers}):
                start = time.perf_counter()
                report = prepare(PrepareConfig(dataset="ptbxl", source_dir=source_dir, out_dir=f"{out}/w{workers}",
                                               canonical=config, num_workers=workers))
                prepare_rates[workers] = report.read / (time.perf_counter() - start)
            source = builder.open_split(report.path, "train")
            loader = BatchLoader(source, FLAGS.batch, seed=0, process_index=0, process_count=1)
            next(loader)
            start = time.perf_counter()
            for _ in range(FLAGS.num_batches):
                next(loader)
            ours_load = FLAGS.num_batches / (time.perf_counter() - start)
            loader.close()

        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(FLAGS.num_batches):
            np.stack([wfdb.rdsamp(entries[i].path)[0] for i in rng.integers(n, size=FLAGS.batch)])
        ref_load = FLAGS.num_batches / (time.perf_counter() - start)

        sim_config = sim.SimulatorConfig(duration_s=10.0, fs=float(fs))
        params = sim.stack_params([sim.preset_params("normal_sinus")] * FLAGS.batch)
        keys = jax.random.split(jax.random.key(0), FLAGS.batch)
        target = np.zeros((FLAGS.batch, sim_config.num_samples, 12), np.float32)
        loss = lambda p: ((sim.simulate_batch(p, keys, sim_config) - target) ** 2).mean()  # noqa: E731
        step = jax.jit(jax.grad(loss))
        step_per_s = 1.0 / compile_and_time(lambda: step(params), repeats=3).seconds
        rows.append((fs, n, prepare_rates, ref_prepare, ours_load, ref_load, step_per_s))

    print(f"\nData layer, PTB-XL records from {source_dir}, batch {FLAGS.batch}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}\n")
    print("| shape | prepare, 1 process (rec/s) | prepare, "
          f"{FLAGS.num_workers} processes (rec/s) | wfdb.rdsamp only (rec/s) | load (batches/s) | "
          "wfdb per batch (batches/s) | load / wfdb | simulator-gradient steps/s | load / step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fs, n, rates, ref_prepare, ours_load, ref_load, step_per_s in rows:
        print(f"| {fs} Hz x 10 s x 12 | {rates[1]:.0f} | {rates[max(rates)]:.0f} | {ref_prepare:.0f} | "
              f"{ours_load:.0f} | {ref_load:.1f} | {ours_load / ref_load:.1f}x | {step_per_s:.2f} | "
              f"{ours_load / step_per_s:.0f}x |")


if __name__ == "__main__":
    cli.run(main)
