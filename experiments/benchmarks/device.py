r"""The prepared accelerator benchmark: one command that measures what a GPU or TPU does with sediff_jax.

    python -m experiments.benchmarks.device --out=DIR [--text_encodings=FILE] [--smoke]

Writes `DIR/device_benchmark.md` (Markdown tables) and `DIR/device_benchmark.json` after every row, so a run
cut short still leaves what it measured. Sections, in order of what a lent machine should answer first:

1. Train steps, for each of `--configs` (ptbxl100, ptbxl500, and the pod config's model) and `--precisions`
   (float32; bfloat16 = mixed precision) at `--per_device_batch` records per device: the VAE step, the
   DDPM-only diffusion step (the reference: what the paper's release trains), the L_sim step (the diffrax solve
   alone: its share), the full SE-Diff step, and the full step with L_sim's beat in closed form (the exact
   solution of the same ODE, no sequential solver loop; first config only). ms/step, samples/s, x DDPM, FLOPs per step from XLA's cost
   analysis, achieved TFLOP/s, MFU against the device's bf16 and fp32 peaks, XLA's memory footprint, compile s.
2. Sampling: DDIM-50 ECGs/s of the shipped model at batch `--sample_batch` (text from `--text_encodings`, since
   the MiniLM weights are not on an accelerator machine; without the file, the MiniLM encoder).
3. The simulator: 12-lead 10 s records/s at 500 Hz (batch `--sim_batch`), and simulator fitting records/s at
   batch `--fit_batch`.

Rows run while the elapsed time is under `--budget_s`; the rest are listed as skipped. `--smoke` runs the same
code on CPU at tiny sizes (the `tiny` config, small batches) in under 3 minutes; CI runs it.

Caveats printed with the table: XLA's cost analysis counts a while-loop body once, so the FLOPs of steps with a
diffrax solve (euler/sim/full) are a lower bound and so is their MFU; MFU is against dense peaks.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from typing import Any

from absl import flags

from experiments import cli
from experiments.benchmarks.device_report import Report, cost_flops, memory_bytes, peak_flops
from experiments.benchmarks.timing import compile_and_time
from sediff_jax.io.outputs import output_dir, usable_path

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Folder for device_benchmark.md and .json (new, or holding only those).")
flags.DEFINE_bool("overwrite", False, "Replace this benchmark's outputs in --out.")
flags.DEFINE_bool("smoke", False, "Tiny sizes on any device (CPU in CI): the same code, < 3 minutes.")
flags.DEFINE_list("configs", ["ptbxl100", "ptbxl500", "pod"], "Model configs of experiments/configs.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Compute precisions of the train-step rows.")
flags.DEFINE_list("variants", ["ddpm_only", "sim", "full", "full_closed_form", "full_latents"],
                  "Diffusion variants (experiments.benchmarks.common); 'sim' and '*_closed_form' run for the first "
                  "config only.")
flags.DEFINE_integer("per_device_batch", 256, "Train-step records per device.", lower_bound=1)
flags.DEFINE_integer("steps", 10, "Timed steps per row (after one untimed step).", lower_bound=1)
flags.DEFINE_integer("sample_batch", 512, "ECGs per DDIM-50 call.", lower_bound=1)
flags.DEFINE_integer("sample_steps", 50, "DDIM steps.", lower_bound=2)
flags.DEFINE_integer("sim_batch", 4096, "Simulated records per call.", lower_bound=1)
flags.DEFINE_integer("fit_batch", 256, "Records per fitting batch.", lower_bound=1)
flags.DEFINE_integer("fit_iterations", 0, "Adam steps per fit (0: FitConfig's default).", lower_bound=0)
flags.DEFINE_string("text_encodings", None, "Precomputed text encodings (make device-bundle) for the sampling rows.")
flags.DEFINE_string("encode_prompts_to", None, "Only write the sampling prompts' MiniLM encodings to this NPZ "
                    "(for the device bundle) and exit.")
flags.DEFINE_float("budget_s", 450.0, "Start no new row after this many seconds.", lower_bound=1)

cli.check_config_names("configs")

OUTPUTS = ("device_benchmark.md", "device_benchmark.json")
SMOKE = dict(configs=["tiny"], precisions=["float32"], variants=["ddpm_only", "full"], per_device_batch=4, steps=2,
             sample_batch=4, sample_steps=4, sim_batch=8, fit_batch=2, fit_iterations=4)
TEXTS = ("sinus rhythm, normal ECG", "sinus bradycardia, otherwise normal ECG", "sinus tachycardia",
         "sinus rhythm, left ventricular hypertrophy", "atrial fibrillation with rapid ventricular response",
         "sinus rhythm, complete left bundle branch block", "sinus rhythm, complete right bundle branch block",
         "acute anterior myocardial infarction, ST elevation", "old inferior myocardial infarction",
         "first degree AV block", "atrial flutter", "sinus rhythm, prolonged QT interval",
         "sinus arrhythmia", "left anterior fascicular block", "non-specific ST-T changes",
         "ventricular premature complexes")


def sampling_prompts(count: int):
    import numpy as np

    from sediff_jax.generation import make_prompt

    rng = np.random.default_rng(0)
    return [make_prompt(TEXTS[i % len(TEXTS)], age=float(rng.integers(25, 85)), sex="MF"[i % 2],
                        hr=float(rng.integers(45, 130))) for i in range(count)]


def _timed(run, steps: int) -> tuple[float, float]:
    """(compile s incl. the first call, s per step over `steps` steps dispatched back to back)."""
    def first():
        run.compile()
        return run.run()

    timing = compile_and_time(lambda: (run.run(), run.state), steps, first=first)
    return timing.first_s, timing.seconds


def train_step_rows(report: Report, config_name: str, precision: str, mesh, budget_left) -> None:
    from experiments.benchmarks.common import diffusion_runs, synthetic_batch, vae_run

    config = importlib.import_module(f"experiments.configs.{config_name}").get_config()
    config.precision = precision
    if config_name == "pod" or FLAGS.smoke:
        config.experience.max_tokens = min(int(config.experience.max_tokens), 128)
    batch_size = FLAGS.per_device_batch * mesh.devices.size
    host = synthetic_batch(config, batch_size, experience_tokens=int(config.experience.max_tokens))
    peak_bf16, peak_fp32 = report.header["peak_bf16"], report.header["peak_fp32"]
    runs = {"VAE": lambda: vae_run(config, host, mesh)}
    variants = [v for v in FLAGS.variants  # the solve's share and its alternative: measured once
                if (v != "sim" and not v.endswith("_closed_form")) or config_name == FLAGS.configs[0]]
    runs.update({v: (lambda v=v: diffusion_runs(config, host, mesh, [v])[v]) for v in variants})
    ddpm_s = None
    for name, make in runs.items():
        label = f"{config_name}/{precision}/{name}"
        if not budget_left():
            report.skipped.append(label)
            report.write()
            continue
        run = make()
        compile_s, seconds = _timed(run, FLAGS.steps)
        flops = cost_flops(run.compiled)
        memory = memory_bytes(run.compiled)
        if name == "ddpm_only":
            ddpm_s = seconds
        per_device = flops / seconds if flops else None
        report.add("train_step", {
            "config": config_name, "precision": precision, "step": name if name == "VAE" else f"diffusion {name}",
            "batch": batch_size, "compile_s": compile_s, "ms_per_step": 1e3 * seconds,
            "samples_per_s": batch_size / seconds,
            "x_ddpm": seconds / ddpm_s if ddpm_s and name != "VAE" else None,
            "gflop_per_step": flops / 1e9 if flops else None,
            "tflop_per_s": per_device / 1e12 if per_device else None,
            "mfu_bf16": per_device / peak_bf16 if per_device and peak_bf16 else None,
            "mfu_fp32": per_device / peak_fp32 if per_device and peak_fp32 else None,
            "memory_gib": memory / 2**30 if memory else None})
        del run


def sampling_row(report: Report) -> None:
    import jax

    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.generation import SHIPPED_CHECKPOINT, Generator, load_model
    from sediff_jax.text import PrecomputedEncoder

    model = load_model(SHIPPED_CHECKPOINT)
    encoder = PrecomputedEncoder(FLAGS.text_encodings) if FLAGS.text_encodings else None
    if encoder is not None and encoder.id != model.spec.text_encoder:
        raise cli.UsageError(f"{FLAGS.text_encodings}: encodings of {encoder.id}, the model needs "
                             f"{model.spec.text_encoder}; rebuild them (make device-bundle)")
    generator = Generator(model, text_encoder=encoder, max_batch=FLAGS.sample_batch)
    prompts = sampling_prompts(FLAGS.sample_batch)
    sampler = SamplerConfig(kind="ddim", num_steps=FLAGS.sample_steps, guidance_scale=2.0)
    timing = compile_and_time(lambda: generator.generate(prompts, 0, sampler, experience="off"),
                              first=lambda: generator.generate(prompts, 1, sampler, experience="off"))
    ecg, seconds, compile_s = timing.result, timing.seconds, timing.first_s
    if not jax.numpy.isfinite(ecg).all():
        raise FloatingPointError("DDIM sampling gave non-finite ECGs")
    report.add("sampling", {"what": f"DDIM-{FLAGS.sample_steps}, guidance 2, shipped model", "batch": len(prompts),
                            "compile_s": compile_s - seconds, "seconds": seconds, "rate": len(prompts) / seconds})


def simulator_rows(report: Report, mesh, budget_left) -> None:
    import jax
    import numpy as np

    from sediff_jax import simulator as sim
    from sediff_jax.simulator.fitting import FitConfig, fit_ecgs
    from sediff_jax.parallel import shard_batch

    batch = max(mesh.devices.size, FLAGS.sim_batch - FLAGS.sim_batch % mesh.devices.size)
    config = sim.SimulatorConfig(duration_s=10.0, fs=500.0, solver="heun")
    params = sim.stack_params([sim.preset_params("normal_sinus")] * batch)
    params = params._replace(rhythm=params.rhythm._replace(hr_mean=jax.numpy.linspace(50.0, 110.0, batch)))
    params, keys = shard_batch((params, jax.random.split(jax.random.key(0), batch)), mesh)
    timing = compile_and_time(lambda: sim.simulate_batch(params, keys, config))
    ecg, seconds, compile_s = timing.result, timing.seconds, timing.first_s
    report.add("simulator", {"what": "simulate: 12-lead 10 s at 500 Hz (Heun)", "batch": batch,
                             "compile_s": compile_s - seconds, "seconds": seconds, "rate": batch / seconds})
    if not budget_left():
        report.skipped.append("fitting")
        report.write()
        return
    n = FLAGS.fit_batch
    records = np.asarray(ecg[: min(n, 16)])  # simulated 500 Hz records, tiled to the batch
    records = [records[i % len(records)] for i in range(n)]
    iterations = FLAGS.fit_iterations or FitConfig.max_iterations
    fit = FitConfig(batch_size=n, max_iterations=iterations, check_every=min(FitConfig.check_every, iterations))
    timing = compile_and_time(lambda: [r.params for r in fit_ecgs(records, fit)])
    first, seconds = timing.first_s, timing.seconds
    report.add("simulator", {"what": f"fit the simulator (median beat, <= {iterations} Adam steps)",
                             "batch": n, "compile_s": first - seconds, "seconds": seconds, "rate": n / seconds})


def main(argv):
    del argv
    import datetime

    import jax

    if FLAGS.encode_prompts_to:
        from sediff_jax.generation import SHIPPED_CHECKPOINT, load_model, text_encoder_for
        from sediff_jax.text import save_encodings

        path = usable_path(FLAGS.encode_prompts_to, "--encode_prompts_to")
        save_encodings(text_encoder_for(load_model(SHIPPED_CHECKPOINT)), TEXTS, path)
        print(f"{len(TEXTS)} prompt encodings written to {path}")
        return
    if not FLAGS.out:
        raise cli.UsageError("--out is required")
    if FLAGS.smoke:
        for name, value in SMOKE.items():
            if not FLAGS[name].present:
                setattr(FLAGS, name, value)
    out = output_dir(FLAGS.out, overwrite=FLAGS.overwrite, flag="--out", tool="the device benchmark")
    out.mkdir()
    from sediff_jax.parallel import make_mesh

    mesh = make_mesh()
    kind = jax.devices()[0].device_kind
    peak_bf16, peak_fp32 = peak_flops(kind)
    start = time.time()
    header: dict[str, Any] = {
        "device": kind, "platform": jax.devices()[0].platform, "devices": mesh.devices.size, "jax": jax.__version__,
        "python": platform.python_version(), "date": datetime.date.today().isoformat(), "smoke": FLAGS.smoke,
        "peak_bf16": peak_bf16, "peak_fp32": peak_fp32, "budget_s": FLAGS.budget_s, "start": start,
        "per_device_batch": FLAGS.per_device_batch, "steps": FLAGS.steps}
    report = Report(out, header)

    def budget_left() -> bool:
        return time.time() - start < FLAGS.budget_s

    order = [(FLAGS.configs[0], p) for p in FLAGS.precisions]
    for config_name, precision in order:
        train_step_rows(report, config_name, precision, mesh, budget_left)
    for section in ("sampling", "simulator"):
        if not budget_left():
            report.skipped.append(section)
        elif section == "sampling":
            sampling_row(report)
        else:
            simulator_rows(report, mesh, budget_left)
    for config_name in FLAGS.configs[1:]:
        for precision in FLAGS.precisions:
            train_step_rows(report, config_name, precision, mesh, budget_left)
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU
    if "peak_bytes_in_use" in stats:
        report.header["peak_device_memory_gib"] = stats["peak_bytes_in_use"] / 2**30
    report.write()
    print(report.markdown())
    print(f"written: {os.path.join(out.path, OUTPUTS[0])}, {OUTPUTS[1]}")


if __name__ == "__main__":
    cli.run(main)
