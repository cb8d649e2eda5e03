r"""Sampling speed and heart-rate fidelity: DDPM-1000 (the paper's sampler) vs DDIM-50 and DDIM-20, in one run.

    python -m experiments.benchmarks.sampling [--checkpoint=checkpoints/sediff_ptbxl100] [--num=16]

Generates `--num` ECGs per sampler from prompts with requested heart rates spread over 50-120 bpm (the same
prompts and seeds for every sampler), times them after compilation (ms per generated ECG), and measures each
ECG's heart rate from its detected R peaks (`sediff_jax.evaluation.heart_rate_errors`), over the ECGs of both
the compiling run (seed + 1) and the timed run (seed). Reported: ms/ECG, speed-up over
DDPM-1000, median and mean |measured - requested| / requested, and how many ECGs had too few beats to measure.
Targets: DDIM-50 >= 15x faster than DDPM-1000, with a heart-rate error at most 10% above DDPM's.
`--simulator_guidance` adds DDIM-50 rows with simulator guidance at that scale.
"""

from __future__ import annotations

import platform
import time

from absl import flags

from experiments import cli
from experiments.benchmarks.timing import print_table

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Model (default: the shipped checkpoint).")
flags.DEFINE_integer("num", 16, "ECGs per sampler.")
flags.DEFINE_list("samplers", ["ddpm-1000", "ddim-50", "ddim-20"],
                  "kind-steps[-eta<value>] entries, e.g. ddim-50-eta0.5 (DDIM's eta; 0 is deterministic).")
flags.DEFINE_float("guidance_scale", 1.0, "Classifier-free guidance scale of every sampler.")
flags.DEFINE_list("simulator_guidance", [], "Scales for extra DDIM-50 rows with simulator guidance.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")

TEXTS = ("sinus rhythm, normal ECG", "sinus bradycardia, otherwise normal ECG",
         "sinus tachycardia", "sinus rhythm, left ventricular hypertrophy")


cli.check_int("num", 1)
cli.check_int("seed", 0, cli.MAX_SEED)
cli.check_float("guidance_scale", 0, None)

def main(argv):
    del argv
    import jax
    import numpy as np

    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation import heart_rate_errors
    from sediff_jax.generation import SHIPPED_CHECKPOINT, Generator, load_model, make_prompt

    runs = []
    for name, sim_scale in ([(s, "0") for s in FLAGS.samplers]
                            + [("ddim-50", g) for g in FLAGS.simulator_guidance]):
        try:
            kind, steps, *rest = name.split("-")
            eta = float(rest[0].removeprefix("eta")) if rest else 0.0
            runs.append((name, float(sim_scale), SamplerConfig(
                kind=kind, num_steps=int(steps), guidance_scale=FLAGS.guidance_scale, eta=eta,
                simulator_guidance=float(sim_scale))))
        except ValueError as e:  # (checked before the model loads)
            raise cli.UsageError(f"--samplers / --simulator_guidance: {name!r} at {sim_scale}: {e}") from None
    model = load_model(FLAGS.checkpoint or SHIPPED_CHECKPOINT)
    generator = Generator(model)
    rng = np.random.default_rng(0)
    requested = np.round(np.linspace(50, 120, FLAGS.num))
    prompts = [make_prompt(TEXTS[i % len(TEXTS)], age=float(rng.integers(25, 80)), sex="MF"[i % 2], hr=hr)
               for i, hr in enumerate(requested)]
    rows = []
    for name, sim_scale, config in runs:
        start = time.perf_counter()
        first = generator.generate(prompts, FLAGS.seed + 1, config)  # compile (same shapes as the timed call)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        ecg = generator.generate(prompts, FLAGS.seed, config)
        seconds = time.perf_counter() - start
        # heart-rate error over both runs' ECGs (two seeds, 2 x num ECGs): halves the noise for free
        errors, failed = heart_rate_errors(np.concatenate([first, ecg]), model.fs, np.tile(requested, 2))
        label = name + (f" + simulator guidance {sim_scale:g}" if sim_scale else "")
        rows.append((label, compile_s, 1e3 * seconds / len(prompts), errors, failed))

    reference = {r[0]: r for r in rows}.get("ddpm-1000")
    table = []
    for label, compile_s, ms, errors, failed in rows:
        median = float(np.median(errors)) if errors.size else float("nan")
        mean = float(np.mean(errors)) if errors.size else float("nan")
        speed = ratio = ""
        if reference is not None:
            speed = f"{reference[2] / ms:.1f}x"
            ref_mean = float(np.mean(reference[3])) if reference[3].size else float("nan")
            ratio = f"{mean / ref_mean:.2f}x" if ref_mean > 0 else ""
        table.append((label, f"{compile_s:.1f}", f"{ms:.0f}", speed, f"{100 * median:.1f}%", f"{100 * mean:.1f}%",
                      ratio, failed))
    print_table(f"Sampling, {jax.devices()[0].device_kind} x{len(jax.devices())}, {platform.machine()}, jax "
                f"{jax.__version__}; model {model.id} ({model.source}); {FLAGS.num} ECGs of "
                f"{model.num_samples / model.fs:g} s at {model.fs:g} Hz, guidance {FLAGS.guidance_scale:g}; HR error "
                f"over {2 * FLAGS.num} ECGs (seeds {FLAGS.seed} and {FLAGS.seed + 1}), relative to the requested rate",
                ["sampler", "compile + first run s", "ms / ECG", "speed-up vs DDPM-1000", "HR error median",
                 "HR error mean", "HR error vs DDPM-1000", "unmeasurable"], table, [False] + [True] * 7)


if __name__ == "__main__":
    cli.run(main)
