r"""Sampling settings side by side on the same records and seeds: guidance scale, guidance interval, CADS and
per-group guidance, each scored with the paired protocol (k-NN precision/recall, FID and rCLIP in the shipped
ECG-text CLIP space; heart-rate error; MAE) plus the spread of the generated ECGs' VAE latents against the real
records'. The model and the records load once.

    python -m experiments.sweep_sampling --source_dir=data/ptb-xl-full --num_samples=500 --out=runs/sweep

Writes --out/sweep.json and --out/sweep.md (and --out/<variant>.npz with --save_generated), entered in the folder's
record of outputs.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from experiments import cli
from sediff_jax.io import jsonio

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Exported model directory or training workdir (default: the shipped model).")
flags.DEFINE_string("source_dir", None, "PTB-XL root (default: $SEDIFF_DATA_DIR/ptb-xl).")
flags.DEFINE_string("split", "test", "Split to evaluate (PTB-XL: fold 10 is 'test').")
flags.DEFINE_integer("num_samples", 500, "Records (one generated ECG each, the same for every variant).")
flags.DEFINE_list("variants", None, "Variants to run (default: all of VARIANTS).")
flags.DEFINE_integer("steps", 50, "DDIM steps.")
flags.DEFINE_float("eta", 1.0, "DDIM noise.")
flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every variant).")
flags.DEFINE_integer("max_batch", 64, "ECGs sampled together (memory).")
flags.DEFINE_string("out", None, "Output directory (new, or holding only this tool's earlier outputs with "
                    "--overwrite).", required=True)
flags.DEFINE_bool("overwrite", False, "Replace this tool's earlier outputs in --out.")
flags.DEFINE_bool("save_generated", False, "Also write each variant's ECGs as --out/<variant>.npz.")
cli.check_int("num_samples", 2)
cli.check_int("steps", 1)
cli.check_float("eta", 0, 1)
cli.check_int("seed", 0, cli.MAX_SEED)
cli.check_int("max_batch", 1)

# name -> SamplerConfig settings (beyond DDIM, --steps, --eta); the rest at SamplerConfig's defaults. g2 is the CLIs'
# default today: since lead amplitudes became retrievable (strength 0.75), every row but g2_model_amplitudes draws
# them where the model's corpus has them; the rows in docs/variety.md before that used the model's own.
VARIANTS = {
    "g1": {"guidance_scale": 1.0},
    "g1.5": {"guidance_scale": 1.5},
    "g2": {"guidance_scale": 2.0},
    "g3": {"guidance_scale": 3.0},
    "g2_interval": {"guidance_scale": 2.0, "guidance_interval": (0.3, 5.0)},
    "g2.5_interval": {"guidance_scale": 2.5, "guidance_interval": (0.3, 5.0)},
    "g3_interval": {"guidance_scale": 3.0, "guidance_interval": (0.3, 5.0)},
    "g2_cads": {"guidance_scale": 2.0, "cads_noise": 0.25},
    "g3_cads": {"guidance_scale": 3.0, "cads_noise": 0.25},
    "groups_t3_e1_m1": {"group_scales": (3.0, 1.0, 1.0)},
    "groups_t2.5_e1_m1": {"group_scales": (2.5, 1.0, 1.0)},
    "groups_t4_e1_m1": {"group_scales": (4.0, 1.0, 1.0)},
    "g2_model_amplitudes": {"guidance_scale": 2.0, "lead_amplitudes": "model"},
    # (strength 0 changes nothing after decoding: for a model told the amplitudes, the condition alone)
    "g2_amplitudes_0": {"guidance_scale": 2.0, "lead_amplitudes": "retrieved", "amplitude_strength": 0.0},
    "g2_amplitudes_0.25": {"guidance_scale": 2.0, "lead_amplitudes": "retrieved", "amplitude_strength": 0.25},
    "g2_amplitudes_0.5": {"guidance_scale": 2.0, "lead_amplitudes": "retrieved", "amplitude_strength": 0.5},
    "g2_amplitudes_1": {"guidance_scale": 2.0, "lead_amplitudes": "retrieved", "amplitude_strength": 1.0},
}


def latent_spread(model, ecg, batch_size: int = 64):
    """Per-channel mean and std of the VAE's mean latents (scaled as the denoiser sees them) of `ecg`."""
    import jax
    import numpy as np

    from sediff_jax.evaluation.networks import batched_apply

    vae = model.vae()
    z = batched_apply(jax.jit(lambda x: vae.encode(x)[0] * model.latent_scale), ecg, batch_size)
    flat = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    return flat.mean(axis=0), flat.std(axis=0)


def markdown(rows: list[dict], summary: str) -> str:
    lines = [summary, "", "| variant | settings | precision | recall | FID | rCLIP | HR error (bpm) | MAE (mV) | "
             "latent std / real | s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d, p = r["distribution"], r["paired"]
        lines.append(f"| {r['variant']} | {r['settings']} | {d.get('precision', float('nan')):.3f} | "
                     f"{d.get('recall', float('nan')):.3f} | {d.get('fid', float('nan')):.3f} | "
                     f"{d.get('rclip', float('nan')):.3f} | {p['hr_error_bpm']['mean']:.2f} | "
                     f"{p['mae_mv']['mean']:.4f} | {r['latent_std_ratio']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import numpy as np

    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.data.prepare import dataset_entries
    from experiments.configs.common import dataset_dir
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation.clip import load_clip
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.evaluation.runner import generate_paired, score, write_generated
    from sediff_jax.generation import SHIPPED_CHECKPOINT
    from sediff_jax.io.atomic import atomic_path
    from sediff_jax.io.outputs import output_dir

    names = FLAGS.variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise cli.UsageError(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    out = output_dir(FLAGS.out, overwrite=FLAGS.overwrite, flag="--out", tool="sweep_sampling")
    try:
        model = cli.load_model(FLAGS.checkpoint or str(SHIPPED_CHECKPOINT))
    except CheckpointError as e:
        raise cli.UsageError(f"--checkpoint: {e}") from None
    from sediff_jax.data.canonical import CanonicalConfig

    source = FLAGS.source_dir or dataset_dir("ptbxl")
    canonical = CanonicalConfig(fs=model.fs, duration_s=model.spec.duration_s)
    try:
        entries = dataset_entries("ptbxl", source, canonical.fs)
        pairs = real_pairs(entries, canonical, FLAGS.split, FLAGS.num_samples)
    except (LayoutError, ValueError, OSError) as e:
        raise cli.UsageError(f"--source_dir={source} --split={FLAGS.split}: {e}") from None
    encoder = load_clip(None)
    real_mean, real_std = latent_spread(model, pairs.ecg, FLAGS.max_batch)
    rows = []
    out.mkdir()
    out.clear()
    summary = (f"{model.id} on the first {len(pairs.record_ids)} records of {FLAGS.split} ({source}); DDIM-{FLAGS.steps}, "
               f"eta {FLAGS.eta:g}, seed {FLAGS.seed}, planned rhythm, experience auto; the same records and noise for "
               f"every variant. Real latent std per channel: {np.round(real_std, 3).tolist()}, mean "
               f"{np.round(real_mean, 3).tolist()}.")
    for name in names:
        sampler = SamplerConfig(kind="ddim", num_steps=FLAGS.steps, eta=FLAGS.eta, **VARIANTS[name])
        print(f"{name}: {VARIANTS[name]}", flush=True)
        generated, seconds = generate_paired(model, pairs, sampler, FLAGS.seed, "auto", FLAGS.max_batch)
        scores, _ = score(generated, pairs, encoder)
        gen_mean, gen_std = latent_spread(model, generated, FLAGS.max_batch)
        rows.append({"variant": name, "settings": ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items()),
                     "sampler": dataclasses.asdict(sampler), "seconds": round(seconds, 1),
                     "latent_mean": gen_mean.tolist(), "latent_std": gen_std.tolist(),
                     "latent_std_ratio": float(np.mean(gen_std / real_std)), **scores})
        if FLAGS.save_generated:
            with out.writing(f"{name}.npz"):
                write_generated(out.path / f"{name}.npz", generated, model.fs, pairs)
        with out.writing("sweep.json", "sweep.md"):  # rewritten after each variant: a kill keeps the rows so far
            jsonio.write_json(out.path / "sweep.json", {
                "checkpoint": model.id, "records": pairs.record_ids, "summary": summary, "rows": rows,
                "real_latent_mean": real_mean.tolist(), "real_latent_std": real_std.tolist(),
                **cli.provenance()})
            with atomic_path(out.path / "sweep.md") as tmp:
                tmp.write_text(markdown(rows, summary))
        print(markdown(rows[-1:], "").strip().splitlines()[-1], flush=True)
    print(markdown(rows, summary))
    return 0


if __name__ == "__main__":
    cli.run(main)
