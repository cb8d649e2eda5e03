r"""Evaluate a model on a real dataset split with SE-Diff's paired protocol.

    python -m experiments.evaluate --dataset=ptbxl --split=test --num_samples=66 --out=eval/ptbxl100_test
    python -m experiments.evaluate --checkpoint=runs/ptbxl100 --dataset=ludb --source_dir=../shared/data/ludb ...

For each of the first --num_samples records of --split, one ECG is generated from the record's conditions (report,
age, sex, measured heart rate) and compared with the record: MAE and NRMSE, heart-rate error (from the generated
ECG's R peaks, against the record's rate), interval errors (PR, QRS, QT, QTc, axis; median-beat delineation of
both), and the Einthoven/Goldberger residual. Writes --out/metrics.json and --out/report.md (atomically;
--save_generated adds the generated ECGs as --out/generated.npz). With the ECG-text CLIP model (--encoder; default
the shipped one, trained on PTB-XL folds 1-8 at 100 Hz by experiments/train_clip.py) it adds FID, rFID, k-NN
precision/recall, CLIP score and rCLIP on its features; an encoder for another rate or length is reported as not
applicable. --reference_split scores other real records as if generated (the ideal generator), --vae_reference the
paired records after the model's VAE (the best a denoiser on this VAE can do).
"""

from __future__ import annotations

import sys

from absl import flags

from experiments import cli
from sediff_jax.io import jsonio

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Exported model directory or training workdir (default: the shipped "
                    "checkpoint).")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a training workdir: best on validation or "
                  "the last.")
flags.DEFINE_enum("dataset", "ptbxl", ["ptbxl", "ludb", "mimic"], "Dataset layout.")
flags.DEFINE_string("source_dir", None, "Dataset root (default: $SEDIFF_DATA_DIR/ptb-xl or /ludb).")
flags.DEFINE_string("split", "test", "Split to evaluate (PTB-XL: fold 10 is 'test').")
flags.DEFINE_integer("num_samples", 64, "Records (one generated ECG each).")
flags.DEFINE_string("reference_split", None, "Also score as many real records of this split (e.g. validation) "
                    "as if generated: the FID / rFID / precision-recall an ideal generator gets.")
flags.DEFINE_bool("vae_reference", False, "Also score the paired records passed through the model's VAE (encode, "
                  "decode) as if generated: the FID / recall / MAE a perfect denoiser on this VAE would get.")
flags.DEFINE_enum("sampler", "ddim", ["ddim", "ddpm"], "Sampler.")
flags.DEFINE_integer("steps", 50, "Reverse steps.")
flags.DEFINE_float("guidance_scale", 2.0, "Classifier-free guidance scale.")
flags.DEFINE_float("eta", 1.0, "DDIM noise in [0, 1] (as experiments/sample.py).")
flags.DEFINE_enum("experience", "auto", ["auto", "off"], "Retrieved clinical experience (auto: when the model "
                  "was trained with it).")
flags.DEFINE_enum("rhythm", "plan", ["plan", "record"], "Beat timing of each generated ECG: planned from its prompt "
                  "(plan, conditions as in the paper) or the paired record's own R peaks (record; models with the "
                  "rhythm scaffold only): then the paired metrics compare beats that fall together.")
flags.DEFINE_enum("amplitudes", "sampler", ["sampler", "record"], "Lead amplitudes of each generated ECG: as "
                  "the sampler says (--lead_amplitudes) or 'record': each paired record's own (as a prompt naming it "
                  "in amplitudes_from; with --rhythm=record, the generator is fitted to the record's beats and "
                  "voltages, and MAE says how far its waveforms are).")
flags.DEFINE_float("highpass_hz", None, "Baseline filter of the real records (as in the model's training data).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("max_batch", 64, "ECGs sampled together (memory).")
flags.DEFINE_string("encoder", "shipped", "ECG-text CLIP checkpoint for FID/CLIP ('shipped', a path, or '' for "
                    "none).")
flags.DEFINE_string("out", None, "Output directory (metrics.json, report.md): new or empty, see --overwrite.",
                    required=True)
flags.DEFINE_bool("overwrite", False, "Replace this tool's earlier metrics.json and report.md in --out.")
flags.DEFINE_integer("loss_by_noise", 0, "Also report the denoising error on the paired records in this many bands "
                     "of noise level (the diagnosis of a model that lacks variety; 0: off).")
cli.check_int("loss_by_noise", 0, 100)
flags.DEFINE_bool("save_generated", False, "Also write --out/generated.npz: every generated ECG ((n, time, 12) "
                  "float32 mV) with its record id and prompt text, to look at or re-measure.")
cli.check_int("num_samples", 1)
cli.check_sampling_flags()
cli.define_variety_flags()
cli.check_float("highpass_hz", 0, 40, low_open=True)
cli.check_int("max_batch", 1)

OUTPUT_FILES = ("metrics.json", "report.md", "generated.npz")
flags.register_validator("num_samples", lambda v: v >= 1, message="--num_samples must be >= 1")


def main(argv):
    del argv
    from experiments.configs.common import dataset_dir
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import dataset_entries
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation.clip import load_clip
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.evaluation.runner import (NonFiniteECG, generate_paired, markdown_report, score,
                                             vae_reconstructions, write_generated)
    from sediff_jax.generation import SHIPPED_CHECKPOINT, AmplitudeError, PromptError
    from sediff_jax.generation.model import experience_profiles_path
    from sediff_jax.io.atomic import atomic_path
    from sediff_jax.io.outputs import output_dir
    from sediff_jax.checkpoints import CheckpointError

    out = output_dir(FLAGS.out, overwrite=FLAGS.overwrite, flag="--out", tool="evaluate")
    try:
        sampler = SamplerConfig(kind=FLAGS.sampler, num_steps=FLAGS.steps, guidance_scale=FLAGS.guidance_scale,
                                eta=FLAGS.eta, **cli.variety_options())
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    if FLAGS.amplitudes == "record" and FLAGS.lead_amplitudes == "model":
        raise cli.UsageError("--amplitudes=record gives each ECG its record's lead amplitudes, and "
                             "--lead_amplitudes=model keeps the model's own; use --lead_amplitudes=auto")
    checkpoint = FLAGS.checkpoint or str(SHIPPED_CHECKPOINT)
    source = FLAGS.source_dir or dataset_dir(FLAGS.dataset)
    try:
        model = cli.load_model(checkpoint, FLAGS.which)
    except CheckpointError as e:
        raise cli.UsageError(f"--checkpoint: {e}") from None
    if FLAGS.steps > model.schedule.num_steps:
        raise cli.UsageError(f"--steps={FLAGS.steps} must be within 1-{model.schedule.num_steps} (the model's "
                             "diffusion steps)")
    if FLAGS.experience == "auto":
        try:
            experience_profiles_path(model)
        except CheckpointError as e:
            raise cli.UsageError(f"--experience=auto: {e}") from None
    try:
        encoder = None if not FLAGS.encoder else load_clip(None if FLAGS.encoder == "shipped" else FLAGS.encoder)
    except CheckpointError as e:
        raise cli.UsageError(f"--encoder: {e}") from None
    canonical = CanonicalConfig(fs=model.fs, duration_s=model.spec.duration_s,
                                highpass_hz=FLAGS.highpass_hz)
    try:
        entries = dataset_entries(FLAGS.dataset, source, canonical.fs)
        pairs = real_pairs(entries, canonical, FLAGS.split, FLAGS.num_samples)
        reference = (real_pairs(entries, canonical, FLAGS.reference_split, len(pairs.record_ids))
                     if FLAGS.reference_split else None)
    except (LayoutError, ValueError, OSError) as e:
        raise cli.UsageError(f"--dataset={FLAGS.dataset} --source_dir={source} --split={FLAGS.split}: {e}") from None
    try:
        generated, seconds = generate_paired(model, pairs, sampler, FLAGS.seed, FLAGS.experience, FLAGS.max_batch,
                                             FLAGS.rhythm, FLAGS.amplitudes)
    except AmplitudeError as e:  # the record's amplitudes with --lead_amplitudes=model
        raise cli.UsageError(f"--amplitudes={FLAGS.amplitudes}: {e}") from None
    except PromptError as e:  # a given rhythm for a model without the scaffold
        raise cli.UsageError(f"--rhythm={FLAGS.rhythm}: {e}") from None
    except NonFiniteECG as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    reconstructed = vae_reconstructions(model, pairs.ecg, FLAGS.max_batch) if FLAGS.vae_reference else None
    scores, _ = score(generated, pairs, encoder, reference, reconstructed)
    if FLAGS.loss_by_noise:
        from sediff_jax.evaluation.denoising import loss_by_noise_level

        by_noise = loss_by_noise_level(model, pairs.ecg, pairs.prompts, pairs.rhythms(model.spec.duration_s),
                                       FLAGS.loss_by_noise, FLAGS.seed, FLAGS.max_batch, FLAGS.experience)
        scores["loss_by_noise"] = {k: v for k, v in by_noise.items() if k != "per_record"}
    result = {
        "checkpoint": {"path": str(model.source), "id": model.id},
        "dataset": FLAGS.dataset, "source_dir": source, "split": FLAGS.split, "records": pairs.record_ids,
        "skipped": pairs.skipped, "sampler": {"kind": sampler.kind, "steps": sampler.num_steps,
                                              "guidance_scale": sampler.guidance_scale, "eta": sampler.eta,
                                              "guidance_interval": sampler.guidance_interval,
                                              "group_scales": sampler.group_scales,
                                              "cads_noise": sampler.cads_noise, "cads_tau": sampler.cads_tau,
                                              "exact_limb_leads": sampler.exact_limb_leads},
        "experience": FLAGS.experience, "rhythm": FLAGS.rhythm, "amplitudes": FLAGS.amplitudes,
        "seed": FLAGS.seed,
        "generation_seconds": round(seconds, 2),
        **scores,
        **cli.provenance(),
    }
    out.mkdir()
    out.clear()
    folder, out = out, out.path
    own_amplitudes = "each record's own lead amplitudes, " if FLAGS.amplitudes == "record" else ""
    summary = (f"{len(pairs.record_ids)} records ({len(pairs.skipped)} skipped), one ECG each "
               f"({sampler.describe()}, experience {FLAGS.experience}, rhythm {FLAGS.rhythm}, "
               f"{own_amplitudes}seed {FLAGS.seed}); "
               "generated vs the record "
               f"whose conditions it was generated from. HR: {scores['paired']['unmeasurable_hr']} generated ECGs "
               "had too few beats to measure.")
    report = markdown_report(f"Evaluation: {model.id} on {FLAGS.dataset} {FLAGS.split}", summary, scores)
    if "loss_by_noise" in scores:
        report += ("\nDenoising error (epsilon MSE, conditional, the records' own beats) by noise level:\n\n"
                   "| t | sigma | MSE ± s.e. |\n|---|---|---:|\n" + "".join(
                       f"| {b['t'][0]}-{b['t'][1]} | {b['sigma'][0]:.3g}-{b['sigma'][1]:.3g} | "
                       f"{b['mse']:.4f} ± {b['sem']:.4f} |\n" for b in scores["loss_by_noise"]["bands"]))
    with folder.writing(*OUTPUT_FILES):
        if FLAGS.save_generated:
            write_generated(out / "generated.npz", generated, model.fs, pairs)
        jsonio.write_json(out / "metrics.json", result)
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(report)
    print(report)
    print(f"wrote {out}/metrics.json and report.md" + (" and generated.npz" if FLAGS.save_generated else ""))
    return 0


if __name__ == "__main__":
    cli.run(main)
