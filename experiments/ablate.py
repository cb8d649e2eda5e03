r"""SE-Diff's ablation: train the diffusion stage once per variant on one shared VAE, evaluate each on a real
split with the paired protocol, and print the paper-style table with the paper's numbers beside ours.

    python -m experiments.build_experience --dataset=ptbxl --source_dir=../shared/data/ptb-xl --fs=100 \
        --out_dir=runs/exp_ptbxl100
    python -m experiments.ablate --config=ptbxl100 --workdir=runs/ablate_ptbxl100 \
        --experience_dir=runs/exp_ptbxl100 --num_steps=1000 --num_samples=66

Variants (experiments/configs/common.py): full, no_simulator (L_Euler and L_sim off), no_interlead, no_experience,
paper (without the rhythm scaffold), the finer no_euler, no_sim_solve, ddpm_only, and the recipe variants min_snr,
v_prediction, oversample_rare and repa (--repa_teacher: its teacher encoder), wide, deep and amplitudes (needs
--experience_dir with amplitudes). Layout under --workdir:
prepared/ (the dataset), vae/ (stage 1, trained first unless --vae_checkpoint), <variant>/ (stage 2), text_cache/
(the text and experience encodings every variant shares, unless --text_cache_dir), ablation/ (per variant
metrics.json, report.md and generated.npz; table.md, ablation.json). The table has each variant's metrics and,
record by record, its differences from `full` with paired standard errors (the same records and sampling seeds for
every variant, so the records' own spread cancels). Every stage resumes: running the command again after a kill
continues training, and with everything trained it only re-evaluates (e.g. with a new --encoder). SIGTERM while
training saves a checkpoint and exits (status 0) without evaluating that variant or starting the next.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path

from absl import app, flags

from experiments import cli
from sediff_jax.io import jsonio

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "ptbxl100", "Config name in experiments/configs.")
flags.DEFINE_list("variants", ["full", "no_simulator", "no_interlead", "no_experience"], "Variants to compare.")
flags.DEFINE_string("workdir", None, "Root of the runs (see the layout above).", required=True)
flags.DEFINE_string("vae_checkpoint", None, "A trained VAE stage directory to share (default: train <workdir>/vae).")
flags.DEFINE_string("prepared_dir", None, "Prepared dataset root (default: <workdir>/prepared).")
flags.DEFINE_string("experience_dir", None, "experiments/build_experience.py output, used by every variant but "
                    "no_experience (required when no_experience is compared).")
flags.DEFINE_string("text_cache_dir", None, "Text and experience encodings shared by every variant (default: "
                    "<workdir>/text_cache; a training workdir over the same data, e.g. runs/full, reuses its own).")
flags.DEFINE_integer("num_steps", None, "Diffusion steps per variant (default: the config's).")
flags.DEFINE_integer("vae_steps", None, "VAE steps (default: the config's).")
flags.DEFINE_string("repa_teacher", None, "The repa variant's teacher, an ECG-CLIP safetensors (default: the "
                    "shipped evaluation encoder; train another with train_clip --seed=1 for a fair comparison).")
flags.DEFINE_bool("train", True, "Train (or resume) before evaluating; --notrain evaluates what exists.")
flags.DEFINE_string("split", "test", "Split to evaluate on.")
flags.DEFINE_integer("num_samples", 66, "Records of --split (one generated ECG each).")
flags.DEFINE_integer("steps", 50, "DDIM steps.")
flags.DEFINE_float("guidance_scale", 2.0, "Classifier-free guidance scale.")
flags.DEFINE_float("eta", 1.0, "DDIM noise.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("encoder", "shipped", "ECG-text CLIP checkpoint for FID/CLIP ('shipped', a path, or '' for "
                    "none).")
flags.DEFINE_string("out", None, "Output directory (default: <workdir>/ablation).")
cli.check_config_names("config")
cli.check_int("num_steps", 1)
cli.check_int("vae_steps", 1)
cli.check_int("num_samples", 1)
cli.check_sampling_flags()

LABELS = {"full": "SE-Diff (full)", "no_simulator": "w/o simulator", "no_interlead": "w/o inter-lead",
          "no_experience": "w/o experience", "no_euler": "w/o L_Euler", "no_sim_solve": "w/o L_sim",
          "ddpm_only": "L_DDPM only", "scaffold": "with rhythm scaffold", "paper": "w/o rhythm scaffold (paper)",
          "min_snr": "min-SNR-5 weighting", "v_prediction": "v-prediction",
          "oversample_rare": "rare findings oversampled", "repa": "REPA (weight 0.5)",
          "wide": "wider denoiser (96/192/192)", "deep": "deeper denoiser (4 levels)",
          "amplitudes": "told lead amplitudes", "ectopic": "scaffold marks premature beats"}
PAPER_HR_ERROR_BPM = {"full": 8.43, "no_simulator": 14.28, "no_interlead": 19.21, "no_experience": 15.06}


def variant_config(variant: str):
    module = importlib.import_module(f"experiments.configs.{FLAGS.config}")
    config = module.get_config(variant)
    root = os.path.abspath(FLAGS.workdir)
    config.data.prepared_dir = os.path.abspath(FLAGS.prepared_dir) if FLAGS.prepared_dir else os.path.join(root, "prepared")
    config.diffusion.vae_checkpoint = os.path.abspath(FLAGS.vae_checkpoint or os.path.join(root, "vae"))
    if variant != "no_experience" and FLAGS.experience_dir:
        config.experience.dir = os.path.abspath(FLAGS.experience_dir)
    config.text.cache_dir = os.path.abspath(FLAGS.text_cache_dir or os.path.join(root, "text_cache"))
    if FLAGS.repa_teacher and config.diffusion.loss.repa_weight > 0:
        config.diffusion.repa_teacher = os.path.abspath(FLAGS.repa_teacher)
    if FLAGS.num_steps:
        config.diffusion.training.num_steps = FLAGS.num_steps
    if FLAGS.vae_steps:
        config.vae.training.num_steps = FLAGS.vae_steps
    return config


def train_or_stop(config, workdir: str, what: str) -> bool:
    """Train (or resume) `config.stage` under `workdir`. False when a stop request (SIGTERM) ended training early:
    the checkpoint is saved, and the ablation must stop too rather than evaluate a half-trained `what`."""
    from sediff_jax.training.loop import train

    stopped = [r for r in train(config, workdir) if r.stopped_early]
    if stopped:
        print(f"{what}: stopped at step {stopped[-1].step} on request; run the same command again to resume",
              flush=True)
    return not stopped


def _mean_sem(stat: dict | None, digits: int) -> str:
    if not stat:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat.get('sem', float('nan')):.{digits}f}"


def table(results: dict[str, dict]) -> str:
    """The paper-style table: one row per variant of `results` ({variant: `score` output}); mean ± standard
    error over the records where a metric has one."""
    lines = ["| variant | HR error (bpm), median / mean ± s.e. | HR error, XQRS (bpm) | paper HR error (bpm) | "
             "MAE (mV) | NRMSE | QT error (ms) | Einthoven residual (mV) | rFID | recall | rCLIP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, r in results.items():
        p, d = r["paired"], r["distribution"]
        paper = PAPER_HR_ERROR_BPM.get(variant)
        lines.append(
            f"| {LABELS.get(variant, variant)} | {p['hr_error_bpm']['median']:.2f} / {_mean_sem(p['hr_error_bpm'], 2)} "
            f"| {_mean_sem(p.get('hr_error_xqrs_bpm'), 2)} | {'' if paper is None else f'{paper:.2f}'} | "
            f"{_mean_sem(p['mae_mv'], 4)} | {p['nrmse']['mean']:.4f} | {p['intervals']['qt_ms']['mean']:.1f} | "
            f"{_mean_sem(p.get('limb_residual_mv'), 4)} | "
            + (f"{d['rfid']:.4f} | {d['recall']:.3f} | {d['rclip']:.4f} |" if d.get("computed") else
               "n/a | n/a | n/a |"))
    return "\n".join(lines)


DIFFERENCES = (("mae_mv", "MAE (mV)", 4), ("hr_error_bpm", "HR error (bpm)", 2),
               ("hr_error_xqrs_bpm", "HR error, XQRS (bpm)", 2), ("limb_residual_mv", "Einthoven residual (mV)", 4))


def differences_table(differences: dict[str, dict], baseline: str) -> str:
    """Each variant minus `baseline`, record by record (`paired_differences`): mean ± paired standard error."""
    lines = [f"| variant - {LABELS.get(baseline, baseline)} | " + " | ".join(name for _, name, _ in DIFFERENCES) + " |",
             "|---|" + "---:|" * len(DIFFERENCES)]
    for variant, d in differences.items():
        lines.append(f"| {LABELS.get(variant, variant)} | " + " | ".join(
            f"{d[key]['mean']:+.{digits}f} ± {d[key]['sem']:.{digits}f}" if key in d else "n/a"
            for key, _, digits in DIFFERENCES) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    from sediff_jax.io.outputs import check_workdir, claim_workdir, output_dir

    check_workdir(FLAGS.workdir, "--workdir", tool="ablate")  # checked before any work
    out_dir = output_dir(FLAGS.out or os.path.join(FLAGS.workdir, "ablation"), flag="--out", tool="ablate",
                         overwrite=True)  # (a rerun re-evaluates: it replaces its own earlier outputs there)
    unknown = [v for v in FLAGS.variants if v not in LABELS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; expected some of {', '.join(LABELS)}")
    if "amplitudes" in FLAGS.variants and not FLAGS.experience_dir:
        raise app.UsageError("--variants=amplitudes reads each record's lead amplitudes from the experience corpus; "
                             "pass --experience_dir")
    if "no_experience" in FLAGS.variants and not FLAGS.experience_dir:
        raise app.UsageError("--variants has no_experience, so --experience_dir is needed (build it with "
                             "experiments/build_experience.py); without it every variant trains without experience")
    if FLAGS.experience_dir and not (Path(FLAGS.experience_dir) / "experience.jsonl").is_file():
        raise app.UsageError(f"--experience_dir={FLAGS.experience_dir}: no experience.jsonl there")
    from sediff_jax.training.config import resolve

    for variant in FLAGS.variants:  # every variant's settings checked before the workdir is claimed
        resolve(variant_config(variant))
    claim_workdir(FLAGS.workdir, "--workdir", tool="ablate")

    from sediff_jax.data.prepare import dataset_entries
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation.clip import load_clip
    from sediff_jax.evaluation.paired import paired_differences, real_pairs
    from sediff_jax.evaluation.runner import generate_paired, markdown_report, score, write_generated
    from sediff_jax.generation import load_model
    from sediff_jax.io.atomic import atomic_path
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.training.sources import canonical_config

    out = out_dir.path
    first = variant_config(FLAGS.variants[0])
    try:
        encoder = None if not FLAGS.encoder else load_clip(None if FLAGS.encoder == "shipped" else FLAGS.encoder)
    except CheckpointError as e:
        raise app.UsageError(f"--encoder: {e}") from None
    if FLAGS.train and not FLAGS.vae_checkpoint:
        vae_config = variant_config(FLAGS.variants[0])
        vae_config.stage = "vae"
        if not train_or_stop(vae_config, os.path.abspath(FLAGS.workdir), "vae"):
            return 0
    canonical = canonical_config(first)
    entries = dataset_entries(first.data.dataset, first.data.source_dir, canonical.fs)
    pairs_for = {}  # the split canonicalised at each model's rate and length

    def real_pairs_for(model):
        key = (model.fs, model.spec.duration_s)
        if key not in pairs_for:
            pairs_for[key] = real_pairs(entries, dataclasses.replace(canonical, fs=key[0], duration_s=key[1]),
                                        FLAGS.split, FLAGS.num_samples)
        return pairs_for[key]

    sampler = SamplerConfig(kind="ddim", num_steps=FLAGS.steps, guidance_scale=FLAGS.guidance_scale, eta=FLAGS.eta)
    results, per_record = {}, {}
    for variant in FLAGS.variants:
        config = variant_config(variant)
        config.stage = "diffusion"
        workdir = os.path.join(os.path.abspath(FLAGS.workdir), variant)
        if FLAGS.train and not train_or_stop(config, workdir, variant):
            return 0
        model = load_model(workdir)
        pairs = real_pairs_for(model)
        generated, seconds = generate_paired(model, pairs, sampler, FLAGS.seed, "auto")
        results[variant], per_record[variant] = score(generated, pairs, encoder)
        record = {"variant": variant, "workdir": workdir, "model_id": model.id, "records": pairs.record_ids,
                  "sampler": {"steps": FLAGS.steps, "guidance_scale": FLAGS.guidance_scale, "eta": FLAGS.eta},
                  "seed": FLAGS.seed, "generation_seconds": round(seconds, 2), **results[variant]}
        with out_dir.writing(*(f"{variant}/{name}" for name in ("generated.npz", "metrics.json", "report.md"))):
            write_generated(out / variant / "generated.npz", generated, model.fs, pairs)
            jsonio.write_json(out / variant / "metrics.json", record)
            with atomic_path(out / variant / "report.md") as tmp:
                tmp.write_text(markdown_report(f"{LABELS[variant]} ({model.id})", f"{len(pairs.record_ids)} records "
                                               f"of {FLAGS.split}", results[variant]))
        print(f"{variant}: HR error {results[variant]['paired']['hr_error_bpm']['mean']:.2f} bpm (mean)", flush=True)
    text = (f"Ablation: {FLAGS.config}, {first.data.dataset} {FLAGS.split} ({FLAGS.num_samples} records, one ECG "
            f"each, DDIM-{FLAGS.steps} eta {FLAGS.eta:g}, guidance {FLAGS.guidance_scale:g}, seed {FLAGS.seed}); "
            f"experience {'on' if FLAGS.experience_dir else 'off'} except in no_experience; paper: MIMIC-IV-ECG."
            f"\n\n{table(results)}\n")
    baseline = "full" if "full" in per_record else FLAGS.variants[0]
    differences = {variant: paired_differences(rows, per_record[baseline], [key for key, _, _ in DIFFERENCES])
                   for variant, rows in per_record.items() if variant != baseline}
    if differences:
        text += (f"\nRecord by record against {LABELS[baseline]} (the same {FLAGS.num_samples} records and seeds; "
                 f"mean difference ± its paired standard error; negative is better):\n\n"
                 f"{differences_table(differences, baseline)}\n")
    with out_dir.writing("table.md", "ablation.json"):
        with atomic_path(out / "table.md") as tmp:
            tmp.write_text(text)
        jsonio.write_json(out / "ablation.json",
                          {"config": FLAGS.config, **cli.provenance(), "results": results,
                           "differences": {"baseline": baseline, "variants": differences}})
    print(text)
    return 0


if __name__ == "__main__":
    cli.run(main)
