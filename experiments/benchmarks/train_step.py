r"""Train-step time of both stages, with and without SE-Diff's simulator terms, in one run on one machine.

    python -m experiments.benchmarks.train_step [--configs=tiny,ptbxl100] [--steps=10] [--batch=0]

For each named config: the VAE step, and the diffusion step as plain DDPM (the reference: what the paper's
release trains, since its simulator terms carry no gradient), with each simulator term alone, and with all of
them (full SE-Diff, including the diffrax solve inside the step). The batch is simulated 10 s 12-lead records
at the config's rate with made-up text tokens and a retrieved report of `experience.max_tokens` tokens (as the
shipped recipe trains; --experience_tokens=1 is the "w/o experience" condition), so no data is needed; models,
schedule, batch size and loss weights are the config's. Variants are compiled first (compile time reported separately), then
take turns for `--rounds` rounds of `--steps` steps, so that the shared machine's slow spells hit them alike;
reported: median step time, samples/s, and the median over rounds of each variant's time / the DDPM time. The target is
full SE-Diff <= 1.25x the DDPM step. The simulator terms run on the config's `sim_fraction` of the batch (a random
half by default); `full_every_record` shows the cost with them on every record. `ddpm_only_latents` and
`full_latents` are the same steps from a latent cache (`sediff_jax.data.latents`: the batch holds the VAE's
latent means, so the step does not run the encoder); beside ddpm_only and full they show what the cache saves.
GFLOP/step is XLA's cost analysis of the compiled step (all devices; a while loop's body, e.g. the simulator's ODE
solve, counted once, so the full steps' figure is a lower bound) and GFLOP/s what the step achieves;
--peak_gflops (e.g. 166 for two Zen 4 cores at 2.6 GHz: 2 x 2.6e9 x 32 fp32 FLOP per cycle) adds % of peak.
"""

from __future__ import annotations

import importlib
import platform
import statistics
import time

from absl import flags

from experiments import cli
from experiments.benchmarks.timing import print_table

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["tiny", "ptbxl100"], "Configs of experiments/configs to time.")
flags.DEFINE_integer("steps", 4, "Timed steps per variant per round.")
flags.DEFINE_integer("rounds", 5, "Rounds in which the variants take turns (medians reported).")
flags.DEFINE_integer("experience_tokens", 0, "Experience tokens per record (0: the config's experience.max_tokens, "
                     "what a run with retrieved experience trains on; 1: without experience).")
flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's diffusion batch size).")
flags.DEFINE_float("interlead_crop", None, "Override the configs' diffusion.loss.interlead_crop.")
flags.DEFINE_float("sim_fraction", None, "Override the configs' diffusion.loss.sim_fraction.")
flags.DEFINE_list("variants", ["ddpm_only", "interlead", "euler", "sim", "full", "full_every_record",
                               "ddpm_only_latents", "full_latents"],
                  "Diffusion variants: ddpm_only, interlead, euler, sim (one term alone), full, or "
                  "full_every_record (full with the simulator terms on every record: sim_fraction = 1), full_repa "
                  "(full + L_REPA); a "
                  "'_latents' suffix: from a latent cache (the batch holds the VAE's latent means, no encoding).")


flags.DEFINE_float("peak_gflops", 0.0, "The machine's fp32 peak in GFLOP/s, for a '% of peak' column (0: none).")
cli.check_int("steps", 1)
cli.check_int("rounds", 1)
cli.check_int("batch", 0)
cli.check_int("experience_tokens", 0)

cli.check_config_names("configs")

def _compile(run) -> float:
    import jax

    start = time.perf_counter()
    run.compile()
    jax.block_until_ready(run.run())
    return time.perf_counter() - start


def _interleaved(runs: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Median step time of each variant in each of `rounds` rounds; the variants take turns within a round, so
    a slow spell of the (shared) machine hits all of them alike."""
    import jax

    per_round = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                jax.block_until_ready((run.run(), run.state))
                times.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(times))
    return per_round


def main(argv):
    del argv
    import jax

    from experiments.benchmarks.common import diffusion_runs, synthetic_batch, vae_run
    from experiments.benchmarks.device_report import cost_flops
    from sediff_jax.parallel import make_mesh

    mesh = make_mesh()
    device = f"{jax.devices()[0].device_kind} x{mesh.devices.size}"
    overrides = {k: getattr(FLAGS, k) for k in ("interlead_crop", "sim_fraction") if getattr(FLAGS, k) is not None}
    rows = []
    for name in FLAGS.configs:
        config = importlib.import_module(f"experiments.configs.{name}").get_config()
        batch_size = FLAGS.batch or int(config.diffusion.training.batch_size)
        batch_size -= batch_size % mesh.devices.size
        host = synthetic_batch(config, batch_size,
                               experience_tokens=FLAGS.experience_tokens or int(config.experience.max_tokens))
        runs = {"VAE": vae_run(config, host, mesh), **diffusion_runs(config, host, mesh, FLAGS.variants, **overrides)}
        compile_s = {variant: _compile(run) for variant, run in runs.items()}
        flops = {variant: (cost_flops(run.compiled) or 0.0) * mesh.devices.size for variant, run in runs.items()}
        per_round = _interleaved(runs, FLAGS.rounds, FLAGS.steps)
        for variant, times in per_round.items():
            ratio = None
            if variant != "VAE" and "ddpm_only" in per_round:
                ratio = statistics.median(t / r for t, r in zip(times, per_round["ddpm_only"]))
            label = "VAE" if variant == "VAE" else f"diffusion: {variant}"
            rows.append((name, label, batch_size, compile_s[variant], statistics.median(times), ratio,
                         flops[variant]))

    print_table(f"Train step, {device}, {platform.processor() or platform.machine()}, jax {jax.__version__}; "
                f"{FLAGS.rounds} rounds x {FLAGS.steps} steps, variants taking turns; medians",
                ["config", "step", "batch", "compile s", "ms/step", "samples/s", "x DDPM step", "GFLOP/step",
                 "GFLOP/s"] + (["% of peak"] if FLAGS.peak_gflops else []),
                [(name, what, b, f"{compile_s:.1f}", f"{step_s * 1e3:.0f}", f"{b / step_s:.0f}",
                  "" if ratio is None else f"{ratio:.2f}", f"{flops / 1e9:.1f}" if flops else "",
                  f"{flops / 1e9 / step_s:.1f}" if flops else "")
                 + ((f"{100 * flops / 1e9 / step_s / FLAGS.peak_gflops:.0f}" if flops else "",)
                    if FLAGS.peak_gflops else ())
                 for name, what, b, compile_s, step_s, ratio, flops in rows],
                [False, False] + [True] * (7 + bool(FLAGS.peak_gflops)))


if __name__ == "__main__":
    cli.run(main)
