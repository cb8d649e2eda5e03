r"""Simulator throughput against neurokit2, in one run on the same machine.

    python -m experiments.benchmarks.simulator [--batch=512] [--repeats=3] [--nk_records=3]

Times 12-lead 10 s records at 500 Hz: ours (dipole model, Heun at 500 Hz, jitted, batch sharded over every
local device; on CPU one device per core) against `neurokit2.ecg_simulate(method="multileads")`, and the
gradient of a loss through the simulator w.r.t. every parameter. Also the single-lead McSharry model against
neurokit2's ECGSYN. Prints a Markdown table; compilation is reported separately and excluded from throughput.
"""

from __future__ import annotations

import os
import platform
import time

from absl import flags

from experiments import cli
from experiments.benchmarks.timing import best_time, compile_and_time, print_table

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 512, "Records per simulator call (divisible by the device count).")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (best is reported).")
flags.DEFINE_integer("nk_records", 3, "Records simulated with neurokit2 per method.")
flags.DEFINE_integer("cpu_devices", None, "CPU devices to shard over (default: one per core).")
flags.DEFINE_float("duration", 10.0, "Record length, s.")
flags.DEFINE_float("fs", 500.0, "Sampling rate, Hz.")


cli.check_int("batch", 1)
cli.check_int("repeats", 1)
cli.check_int("nk_records", 1)
cli.check_int("cpu_devices", 1)
cli.check_float("duration", 0.1, 3600, low_open=True)
cli.check_float("fs", 1, 10000, low_open=True)

def main(argv):
    del argv
    import jax

    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices or os.cpu_count() or 1)
    import jax.numpy as jnp
    import neurokit2 as nk

    from sediff_jax import simulator as sim
    from sediff_jax.parallel import make_mesh, shard_batch

    mesh = make_mesh()
    n_dev = mesh.devices.size
    batch = FLAGS.batch - FLAGS.batch % n_dev or n_dev
    rows = []

    def ours(model: str):
        config = sim.SimulatorConfig(model=model, duration_s=FLAGS.duration, fs=FLAGS.fs, solver="heun")
        base = sim.preset_params("normal_sinus") if model == "dipole" else sim.mcsharry_params(hr_mean=70.0)
        params = sim.stack_params([base] * batch)
        params = params._replace(rhythm=params.rhythm._replace(hr_mean=jnp.linspace(50.0, 110.0, batch)))
        params, keys = shard_batch((params, jax.random.split(jax.random.key(0), batch)), mesh)

        def forward():
            return sim.simulate_batch(params, keys, config)

        compile_s = compile_and_time(forward, repeats=0).first_s
        seconds = best_time(forward, FLAGS.repeats)

        target = sim.simulate_batch(params, keys, config) * 1.05
        grad_fn = jax.jit(jax.grad(lambda p: jnp.mean((sim.simulate_batch(p, keys, config) - target) ** 2)))

        def backward():
            return grad_fn(params)

        grad_compile_s = compile_and_time(backward, repeats=0).first_s
        grad_seconds = best_time(backward, FLAGS.repeats)
        return batch / seconds, compile_s, 1e3 * grad_seconds / batch, grad_compile_s

    def neurokit(method: str):
        def one(seed):
            nk.ecg_simulate(duration=FLAGS.duration, sampling_rate=FLAGS.fs, method=method, random_state=seed)

        one(0)  # warm-up (imports, caches)
        start = time.perf_counter()
        for seed in range(FLAGS.nk_records):
            one(seed + 1)
        return FLAGS.nk_records / (time.perf_counter() - start)

    for label, model, method in (("12-lead", "dipole", "multileads"), ("single lead", "mcsharry", "ecgsyn")):
        rate, compile_s, grad_ms, grad_compile_s = ours(model)
        nk_rate = neurokit(method)
        rows.append((label, rate, nk_rate, compile_s, grad_ms, grad_compile_s))

    title = (f"Simulator benchmark: {FLAGS.duration:g} s records at {FLAGS.fs:g} Hz; ours: batch {batch}, Heun at "
             f"{sim.SimulatorConfig(fs=FLAGS.fs).internal_fs:g} Hz, {n_dev} x {jax.devices()[0].platform} device(s); "
             f"neurokit2 {nk.__version__}; jax {jax.__version__}; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores")
    print_table(title, ["record", "ours (records/s)", "neurokit2 (records/s)", "ratio", "ours compile (s)",
                        "gradient (ms/record)", "gradient compile (s)"],
                [(label, f"{rate:,.0f}", f"{nk_rate:.2f}", f"{rate / nk_rate:,.0f}x", f"{compile_s:.1f}",
                  f"{grad_ms:.2f}", f"{grad_compile_s:.1f}")
                 for label, rate, nk_rate, compile_s, grad_ms, grad_compile_s in rows],
                [False] + [True] * 6,
                "neurokit2 methods: 12-lead = ecg_simulate(method='multileads'), single lead = method='ecgsyn'.")


if __name__ == "__main__":
    cli.run(main)
