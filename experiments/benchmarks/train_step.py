r"""Train-step time of both stages, with and without SE-Diff's simulator terms, in one run on one machine.

    python -m experiments.benchmarks.train_step [--configs=tiny,ptbxl100] [--steps=10] [--batch=0]

For each named config: the VAE step, and the diffusion step as plain DDPM (the reference: what the paper's
release trains, since its simulator terms carry no gradient), with each simulator term alone, and with all of
them (full SE-Diff, including the diffrax solve inside the step). The batch is simulated 10 s 12-lead records
at the config's rate with made-up text tokens, so no data is needed; models, schedule, batch size and loss
weights are the config's. Variants are compiled first (compile time reported separately), then
take turns for `--rounds` rounds of `--steps` steps, so that the shared machine's slow spells hit them alike;
reported: median step time, samples/s, and the median over rounds of each variant's time / the DDPM time. The target is
full SE-Diff <= 1.25x the DDPM step. The simulator terms run on the config's `sim_fraction` of the batch (a random
half by default); `full_every_record` shows the cost with them on every record.
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["tiny", "ptbxl100"], "Configs of experiments/configs to time.")
flags.DEFINE_integer("steps", 4, "Timed steps per variant per round.")
flags.DEFINE_integer("rounds", 5, "Rounds in which the variants take turns (medians reported).")
flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's diffusion batch size).")
flags.DEFINE_float("interlead_crop", None, "Override the configs' diffusion.loss.interlead_crop.")
flags.DEFINE_float("sim_fraction", None, "Override the configs' diffusion.loss.sim_fraction.")
flags.DEFINE_list("variants", ["ddpm_only", "interlead", "euler", "sim", "full", "full_every_record"],
                  "Diffusion variants: ddpm_only, interlead, euler, sim (one term alone), full, or "
                  "full_every_record (full with the simulator terms on every record: sim_fraction = 1).")


def _compile(step, state, inputs):
    import jax

    start = time.perf_counter()
    state, metrics = step(state, inputs)
    jax.block_until_ready((state, metrics))
    return state, time.perf_counter() - start


def _interleaved(runs: dict, rounds: int, steps: int) -> dict[str, list[float]]:
    """Median step time of each variant in each of `rounds` rounds; the variants take turns within a round, so
    a slow spell of the (shared) machine hits all of them alike."""
    import jax

    per_round = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            step, inputs = run["step"], run["inputs"]
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                run["state"], metrics = step(run["state"], inputs)
                jax.block_until_ready((run["state"], metrics))
                times.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(times))
    return per_round


def _batch(config, batch_size: int, context_dim: int):
    import jax
    import numpy as np

    from sediff_jax import simulator as sim
    from sediff_jax.data.rpeaks import detect_r_peaks

    fs = float(config.data.fs)
    names = list(sim.PRESETS)
    params = sim.stack_params([sim.preset_params(names[i % len(names)]) for i in range(batch_size)])
    ecg = np.asarray(sim.simulate_batch(params, jax.random.split(jax.random.key(0), batch_size),
                                        sim.SimulatorConfig(duration_s=float(config.data.duration_s), fs=fs)),
                     np.float32)
    peaks = np.full((batch_size, 51), -1, np.int32)
    for i in range(batch_size):
        p = detect_r_peaks(ecg[i], fs)[:51]
        peaks[i, : len(p)] = p
    rng = np.random.default_rng(0)
    return {
        "ecg": ecg, "r_peaks": peaks, "mask": np.ones(batch_size, bool),
        "hr_bpm": rng.uniform(50, 110, batch_size).astype(np.float32),
        "age": rng.uniform(20, 90, batch_size).astype(np.float32), "sex": rng.integers(0, 2, batch_size).astype(np.int32),
        "text_tokens": rng.normal(size=(batch_size, config.text.max_length, context_dim)).astype(np.float32),
        "text_mask": np.arange(config.text.max_length)[None] < rng.integers(8, 30, (batch_size, 1)),
        "experience_tokens": np.zeros((batch_size, 1, context_dim), np.float32),
        "experience_mask": np.zeros((batch_size, 1), bool),
        "class_index": np.zeros(batch_size, np.int32),
    }


def main(argv):
    del argv
    import jax
    from flax import nnx

    from sediff_jax.diffusion.losses import DiffusionLossConfig
    from sediff_jax.diffusion.schedule import make_schedule
    from sediff_jax.models.denoiser import LatentDenoiser
    from sediff_jax.models.vae_losses import VAELossConfig
    from sediff_jax.simulator.priors import load_prior
    from sediff_jax.training.loop import build_vae, denoiser_config, from_config, vae_config
    from sediff_jax.training.mesh import make_mesh, replicated_sharding, shard_batch
    from sediff_jax.training.state import OptimizerConfig, init_state, make_optimizer, split_params
    from sediff_jax.training.steps import (
        DIFFUSION_BATCH_KEYS, VAE_BATCH_KEYS, DiffusionStepConfig, make_diffusion_steps, make_vae_steps,
    )

    mesh = make_mesh()
    device = f"{jax.devices()[0].device_kind} x{mesh.devices.size}"
    prior = load_prior()
    waves = prior.wave_table(prior.class_names)
    rows = []
    for name in FLAGS.configs:
        config = importlib.import_module(f"experiments.configs.{name}").get_config()
        batch_size = FLAGS.batch or int(config.diffusion.training.batch_size)
        batch_size -= batch_size % mesh.devices.size
        host = _batch(config, batch_size, 384)
        rep = replicated_sharding(mesh)

        vae_graphdef, vae_params = split_params(build_vae(config, 0))
        tx = make_optimizer(OptimizerConfig(total_steps=1000))
        vae_step, _ = make_vae_steps(vae_graphdef, tx, from_config(VAELossConfig, config.vae.loss,
                                                                   fs=float(config.data.fs)), 0.99, mesh)
        runs, compile_s = {}, {}
        state = jax.device_put(jax.tree.map(jax.numpy.array, init_state(vae_params, tx, 0)), rep)
        vae_inputs = shard_batch({k: host[k] for k in VAE_BATCH_KEYS}, mesh)
        state, compile_s["VAE"] = _compile(vae_step, state, vae_inputs)
        runs["VAE"] = {"step": vae_step, "state": state, "inputs": vae_inputs}

        frozen = jax.device_put(vae_params, rep)
        graphdef, params = split_params(LatentDenoiser(denoiser_config(config, vae_config(config).latent_channels, 384),
                                                       rngs=nnx.Rngs(1)))
        base = from_config(DiffusionLossConfig, config.diffusion.loss, fs=float(config.data.fs))
        if FLAGS.interlead_crop is not None:
            base = dataclasses.replace(base, interlead_crop=FLAGS.interlead_crop)
        if FLAGS.sim_fraction is not None:
            base = dataclasses.replace(base, sim_fraction=FLAGS.sim_fraction)
        weights = {"euler_weight": base.euler_weight or 0.05, "interlead_weight": base.interlead_weight or 0.05,
                   "sim_weight": base.sim_weight or 0.05}
        off = {k: 0.0 for k in weights}
        variants = {"ddpm_only": off, "interlead": dict(off, interlead_weight=weights["interlead_weight"]),
                    "euler": dict(off, euler_weight=weights["euler_weight"]),
                    "sim": dict(off, sim_weight=weights["sim_weight"]), "full": weights,
                    "full_every_record": dict(weights, sim_fraction=1.0)}
        inputs = shard_batch({k: host[k] for k in DIFFUSION_BATCH_KEYS}, mesh)
        schedule = make_schedule(config.diffusion.schedule.kind, int(config.diffusion.schedule.num_steps))
        for variant in FLAGS.variants:
            loss_config = dataclasses.replace(base, **variants[variant])
            step, _ = make_diffusion_steps(graphdef, vae_graphdef, tx, schedule, loss_config,
                                           DiffusionStepConfig(latent_scale=1.0), waves, 0.999, mesh)
            step_with_vae = (lambda step: lambda s, b: step(s, frozen, b))(step)
            state = jax.device_put(jax.tree.map(jax.numpy.array, init_state(params, tx, 1)), rep)
            state, compile_s[variant] = _compile(step_with_vae, state, inputs)
            runs[variant] = {"step": step_with_vae, "state": state, "inputs": inputs}
        per_round = _interleaved(runs, FLAGS.rounds, FLAGS.steps)
        for variant, times in per_round.items():
            ratio = None
            if variant != "VAE" and "ddpm_only" in per_round:
                ratio = statistics.median(t / r for t, r in zip(times, per_round["ddpm_only"]))
            label = "VAE" if variant == "VAE" else f"diffusion: {variant}"
            rows.append((name, label, batch_size, compile_s[variant], statistics.median(times), ratio))

    print(f"\nTrain step, {device}, {platform.processor() or platform.machine()}, jax {jax.__version__}; "
          f"{FLAGS.rounds} rounds x {FLAGS.steps} steps, variants taking turns; medians\n")
    print("| config | step | batch | compile s | ms/step | samples/s | x DDPM step |")
    print("|---|---|---|---|---|---|---|")
    for name, what, b, compile_s, step_s, ratio in rows:
        print(f"| {name} | {what} | {b} | {compile_s:.1f} | {step_s * 1e3:.0f} | {b / step_s:.0f} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} |")


if __name__ == "__main__":
    app.run(main)
