r"""Compile the real train steps for TPU slices on this CPU, with libtpu's compile-only devices: no TPU needed.

    make tpu-compile                  # installs libtpu into .tpu-site (a pip --target folder) and runs this
    python -m experiments.benchmarks.tpu_compile --configs=ptbxl100_full --slices=v5e:4x4,v5e:16x16 --out=DIR

For each config, slice and step (`--steps`: the VAE step, the full SE-Diff diffusion step with its diffrax
solve), the step is built as training builds it (`sediff_jax.training.stages`, the `data` mesh over the slice's
chips) and AOT-compiled (`jax.jit(...).lower(abstract arguments).compile()`, as MaxText's train_compile does).
One table (DIR/tpu_compile.md and .json, rewritten after every row), per chip:

* argument, temporary and output bytes (XLA's memory analysis; donated state counted once) against the chip's HBM;
* GFLOP and bytes accessed per step (XLA's cost analysis), and the roofline step time: the larger of the FLOPs
  at the chip's bf16 peak and the bytes at its HBM bandwidth (XLA's own `optimal_seconds` is negative for these
  compile-only programs, so it is recorded only when positive);
* the bytes all-reduced per step, read from the compiled HLO, and their ring time over the chip's ICI bandwidth;
* estimated samples/s per chip, and (with `--max_batch`) the largest per-chip batch that fits, by doubling then
  bisecting on compile.

Every time and rate here is XLA's or our estimate, not a measurement: no TPU ran. XLA's cost analysis counts a
while-loop body once, so the diffrax solve's FLOPs and time are under-counted. The DDIM sampling call is not
compiled here (it is measured on a GPU by `experiments.benchmarks.device`).

Run with JAX_PLATFORMS=cpu (the Makefile sets it): the default backend stays the CPU, and the TPU devices exist
only to compile for.
"""

from __future__ import annotations

import importlib
import platform
import time

from absl import flags

from experiments import cli
from experiments.benchmarks.tpu_report import allreduce_bytes, chip_info, markdown, roofline_seconds

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["ptbxl100_full", "ptbxl500", "pod"], "Configs of experiments/configs.")
flags.DEFINE_list("slices", ["v4:2x2x1", "v5e:4x4", "v5e:16x16", "v5p:4x4x4", "v6e:16x16"],
                  "TPU topologies (libtpu names, e.g. v5e:16x16 is a 256-chip v5e slice).")
flags.DEFINE_list("steps", ["vae", "diffusion"], "Train steps: vae, diffusion (the full SE-Diff step).")
flags.DEFINE_list("precisions", ["float32"], "Compute precisions (float32; bfloat16 = mixed precision).")
flags.DEFINE_integer("per_chip_batch", 32, "Records per chip of each compiled step.")
flags.DEFINE_integer("max_batch", 0, "Also find the largest per-chip batch that fits, up to this (0: off).")
flags.DEFINE_bool("smoke", False, "The tiny config on a 4-chip v5e slice, both steps, batch 4 per chip.")
flags.DEFINE_string("out", None, "Folder for tpu_compile.md and .json.", required=True)
flags.DEFINE_bool("overwrite", False, "Replace this benchmark's outputs in --out.")
cli.check_config_names("configs")
cli.check_int("per_chip_batch", 1, 1 << 16)
cli.check_int("max_batch", 0, 1 << 16)

def compile_step(config, step: str, mesh, per_chip_batch: int):
    """The compiled train step `step` of `config` for `mesh` at `per_chip_batch` records per chip."""
    import jax
    import numpy as np

    from experiments.benchmarks.common import CONTEXT_DIM, synthetic_batch, variant_weights
    from sediff_jax.simulator.priors import load_prior
    from sediff_jax.training import stages
    from sediff_jax.training.state import init_state
    from sediff_jax.training.steps import DIFFUSION_BATCH_KEYS, VAE_BATCH_KEYS

    one = synthetic_batch(config, 1)
    batch_size = per_chip_batch * mesh.size

    def abstract_batch(keys):
        return {k: jax.ShapeDtypeStruct((batch_size,) + np.shape(one[k])[1:], np.asarray(one[k]).dtype)
                for k in keys}

    def abstract_state(model):
        return jax.eval_shape(lambda p: init_state(p, model.tx, 0), model.params)

    vae = stages.vae_model(config, 0)
    if step == "vae":
        train_step, _ = stages.vae_steps(config, vae, mesh)
        return train_step.lower(abstract_state(vae), abstract_batch(VAE_BATCH_KEYS)).compile()
    model = stages.diffusion_model(config, stages.vae_config(config).latent_channels, CONTEXT_DIM, 1)
    prior = load_prior()
    loss = stages.diffusion_loss_config(config, **variant_weights(config, "full"))
    train_step, _ = stages.diffusion_steps(config, model, vae.graphdef, loss, stages.diffusion_step_config(config, 1.0),
                                           prior.wave_table(prior.class_names), mesh)
    vae_params = jax.eval_shape(lambda p: p, vae.params)
    return train_step.lower(abstract_state(model), vae_params, abstract_batch(DIFFUSION_BATCH_KEYS)).compile()


def measure(compiled, per_chip_batch: int, chip: tuple) -> dict:
    """Per-chip memory, cost, all-reduce traffic and the estimated step time of a compiled step; chip:
    `chip_info`'s (HBM GiB, ICI GB/s, HBM GB/s, bf16 peak FLOP/s)."""
    from experiments.benchmarks.device_report import cost_flops, memory_bytes

    hbm_gib, ici_gbs, hbm_gbs, peak = chip
    memory = compiled.memory_analysis()
    analysis = compiled.cost_analysis()
    analysis = (analysis[0] if isinstance(analysis, (list, tuple)) else analysis) or {}
    total = memory_bytes(compiled)
    reduced = allreduce_bytes(compiled.as_text())
    flops, accessed = cost_flops(compiled) or 0.0, float(analysis.get("bytes accessed", 0.0))
    roofline = roofline_seconds(flops, accessed, hbm_gbs, peak)
    ring_s = 2 * reduced / (ici_gbs * 1e9) if ici_gbs else None  # (a ring all-reduce sends ~2x the data)
    step_s = roofline + (ring_s or 0) if roofline else None
    optimal = analysis.get("optimal_seconds")  # (XLA's own estimate: negative, so meaningless, on libtpu 0.0.42)
    return {"argument_gib": memory.argument_size_in_bytes / 2**30, "temp_gib": memory.temp_size_in_bytes / 2**30,
            "output_gib": memory.output_size_in_bytes / 2**30, "total_gib": total / 2**30 if total else None,
            "hbm_fraction": total / (hbm_gib * 2**30) if total and hbm_gib else None,
            "gflop": flops / 1e9, "gb_accessed": accessed / 1e9, "roofline_s": roofline,
            "xla_optimal_s": optimal if optimal and optimal > 0 else None,
            "allreduce_mib": reduced / 2**20, "allreduce_s": ring_s,
            "samples_per_s_per_chip": per_chip_batch / step_s if step_s else None}


def fits(config, step, mesh, batch, hbm_gib) -> bool:
    from experiments.benchmarks.device_report import memory_bytes

    try:
        return memory_bytes(compile_step(config, step, mesh, batch)) <= hbm_gib * 2**30
    except Exception as e:  # noqa: BLE001 - XLA refuses a program that cannot fit (RESOURCE_EXHAUSTED)
        if "RESOURCE_EXHAUSTED" in str(e) or "memory" in str(e).lower():
            return False
        raise


def largest_batch(config, step, mesh, start: int, limit: int, hbm_gib: float) -> int:
    """The largest per-chip batch <= limit whose compiled step fits in HBM (doubling from `start`, then
    bisection); 0 if not even `start` fits."""
    low, high = 0, None
    batch = start
    while batch <= limit:
        if fits(config, step, mesh, batch, hbm_gib):
            low, batch = batch, batch * 2
        else:
            high = batch
            break
    if high is None:
        return low
    while high - low > max(1, low // 8):
        middle = (low + high) // 2
        low, high = (middle, high) if fits(config, step, mesh, middle, hbm_gib) else (low, middle)
    return low


def main(argv):
    del argv
    from sediff_jax.io.outputs import output_dir

    out = output_dir(FLAGS.out, tool="tpu_compile", overwrite=FLAGS.overwrite, flag="--out")
    unknown = [s for s in FLAGS.steps if s not in ("vae", "diffusion")]
    if unknown:
        raise cli.UsageError(f"--steps: unknown {unknown}; expected vae, diffusion")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise cli.UsageError("libtpu is not installed: run `make tpu-compile`, or pip install it beside jax "
                             "(pip install \"jax[tpu]==<your jax version>\")") from None
    import jax
    from jax.experimental import topologies

    from sediff_jax.io import atomic_path, jsonio
    from sediff_jax.parallel import make_mesh
    from sediff_jax.training.config import resolve

    configs, slices, batch = FLAGS.configs, FLAGS.slices, FLAGS.per_chip_batch
    if FLAGS.smoke:
        configs, slices, batch = ["tiny"], ["v5e:2x2"], 4
    header = {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "host": platform.node() or "this CPU",
              "libtpu": getattr(importlib.import_module("libtpu"), "__version__", "?")}
    rows: list[dict] = []
    for name in configs:
        for precision in FLAGS.precisions:
            config = importlib.import_module(f"experiments.configs.{name}").get_config()
            config.precision = precision
            config = resolve(config)
            for slice_name in slices:
                try:
                    devices = topologies.get_topology_desc(platform="tpu", topology_name=slice_name).devices
                except Exception as e:  # noqa: BLE001 - libtpu's own error for a topology it does not know
                    raise cli.UsageError(f"--slices: {slice_name}: {str(e).splitlines()[0][:200]}") from None
                mesh = make_mesh(devices)
                kind = devices[0].device_kind
                chip = chip_info(kind)
                hbm = chip[0]
                for step in FLAGS.steps:
                    start = time.perf_counter()
                    compiled = compile_step(config, step, mesh, batch)
                    row = {"config": name, "precision": precision, "slice": slice_name, "chips": len(devices),
                           "device_kind": kind, "step": step, "per_chip_batch": batch,
                           "compile_s": time.perf_counter() - start, **measure(compiled, batch, chip)}
                    if FLAGS.max_batch and hbm:
                        row["max_per_chip_batch"] = largest_batch(config, step, mesh, batch, FLAGS.max_batch, hbm)
                    rows.append(row)
                    print(f"{name} {precision} {slice_name} {step}: compiled in {row['compile_s']:.0f} s, "
                          f"{row['total_gib'] or 0:.2f} GiB/chip", flush=True)
                    out.mkdir()
                    with out.writing("tpu_compile.json", "tpu_compile.md"):
                        jsonio.write_json(out.path / "tpu_compile.json", {**header, "rows": rows})
                        with atomic_path(out.path / "tpu_compile.md") as tmp:
                            tmp.write_text(markdown(header, rows))
    print(markdown(header, rows))
    return 0


if __name__ == "__main__":
    cli.run(main)
