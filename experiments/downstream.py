r"""Downstream value of generated ECGs: train a 1-D ResNet on real, real + synthetic, or synthetic PTB-XL
records and test it on the real test fold (diagnostic superclasses NORM, MI, STTC, CD, HYP).

    python -m experiments.downstream --out=eval/downstream_ptbxl100

One synthetic ECG is generated from each training record's conditions (report, age, sex, heart rate) with
--checkpoint (default: the shipped model) and carries that record's labels. Protocols: TRTR (real), TRTR+S
(real plus the synthetic ECGs of records with any class but NORM: minority augmentation), TSTR (synthetic only).
Thresholds are tuned on the real validation fold; macro F1 and macro AUROC on the real test fold, mean and std
over --seeds. Writes --out/downstream.json and --out/report.md (atomically); --out/synthetic.npz keeps the
generated ECGs, and a rerun with the same checkpoint and sampler reuses them. --protocols=TRTR generates nothing:
the real-data classifier alone. The variety options of the other generating CLIs (--guidance_interval,
--group_guidance, --cads_noise, --exact_limb_leads) apply to the synthetic ECGs too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

from experiments import cli
from sediff_jax.io import jsonio

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Exported model or training workdir (default: the shipped checkpoint).")
flags.DEFINE_string("source_dir", None, "PTB-XL root (default: $SEDIFF_DATA_DIR/ptb-xl).")
flags.DEFINE_list("protocols", ["TRTR", "TRTR+S", "TSTR"], "Protocols to run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Classifier seeds.")
flags.DEFINE_integer("num_steps", 500, "Classifier training steps.")
flags.DEFINE_integer("batch_size", 32, "Classifier batch size.")
flags.DEFINE_integer("steps", 50, "DDIM steps for the synthetic ECGs.")
flags.DEFINE_float("guidance_scale", 2.0, "Classifier-free guidance scale.")
flags.DEFINE_float("eta", 1.0, "DDIM noise.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("train_records", None, "Use a seeded random subset of this many training records in every "
                     "protocol (real, real + synthetic and synthetic alike): a matched comparison where generating a "
                     "synthetic ECG for every training record costs too much (all of PTB-XL: 17,416 records).")
flags.DEFINE_string("out", None, "Output directory.", required=True)
cli.check_positive_ints("seeds", 0)
cli.check_int("num_steps", 1)
cli.check_int("train_records", 1)
cli.check_int("batch_size", 1)
cli.check_sampling_flags()
cli.define_variety_flags()

# Sampler options at these values leave a cached synthetic set's stamp as it was before the options existed (every
# earlier cache was generated with the model's own lead amplitudes).
STAMP_BASE = {"lead_amplitudes": "model", "amplitude_strength": 1.0}


def main(argv):
    del argv
    from sediff_jax.io.outputs import output_dir

    # checked before any work; a rerun reuses its synthetic.npz and replaces its own results, nothing else
    out_dir = output_dir(FLAGS.out, tool="downstream", overwrite=True, flag="--out")
    import numpy as np

    from experiments.configs.common import dataset_dir
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import dataset_entries
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation.downstream import SETTINGS, SUPERCLASSES, downstream_experiment, multi_hot
    from sediff_jax.evaluation.networks import NetworkTrainConfig
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.evaluation.runner import NonFiniteECG, generate_paired
    from sediff_jax.generation import SHIPPED_CHECKPOINT
    from sediff_jax.generation.amplitudes import amplitude_source, model_draws_amplitudes
    from sediff_jax.io import atomic_path, write_npz
    from sediff_jax.checkpoints import CheckpointError

    unknown = [p for p in FLAGS.protocols if p not in SETTINGS]
    if unknown:
        raise app.UsageError(f"--protocols: unknown {unknown}; expected some of {', '.join(SETTINGS)}")
    seeds = [int(s) for s in FLAGS.seeds]
    try:
        variety = cli.variety_options()
        sampler = SamplerConfig(kind="ddim", num_steps=FLAGS.steps, guidance_scale=FLAGS.guidance_scale,
                                eta=FLAGS.eta, **variety)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    try:
        model = cli.load_model(FLAGS.checkpoint or str(SHIPPED_CHECKPOINT))
    except CheckpointError as e:
        print(f"error: --checkpoint: {e}", file=sys.stderr)
        return 2
    source = FLAGS.source_dir or dataset_dir("ptbxl")
    canonical = CanonicalConfig(fs=model.fs, duration_s=model.spec.duration_s)
    try:
        entries = dataset_entries("ptbxl", source, canonical.fs)
        parts = {split: real_pairs(entries, canonical, split) for split in ("train", "validation", "test")}
    except (LayoutError, ValueError, OSError) as e:
        print(f"error: --source_dir={source}: {e}", file=sys.stderr)
        return 2
    out = Path(FLAGS.out)
    if FLAGS.train_records and FLAGS.train_records < len(parts["train"].record_ids):
        chosen = np.sort(np.random.default_rng(FLAGS.seed).choice(len(parts["train"].record_ids),
                                                                  FLAGS.train_records, replace=False))
        parts["train"] = parts["train"].take(chosen)
    train = parts["train"]
    # the sampler's id, with the lead amplitudes as they will be drawn ('auto' resolved; the strength matters only
    # when retrieving); options at the values every earlier cache was made with add nothing, so those stay valid
    source = amplitude_source(variety["lead_amplitudes"], "auto", model_draws_amplitudes(model))
    effective = {**variety, "lead_amplitudes": source,
                 **({"amplitude_strength": 1.0} if source == "model" else {})}
    changed = {k: v for k, v in effective.items() if v != STAMP_BASE.get(k, getattr(SamplerConfig(), k))}
    stamp = f"{model.id}/ddim{FLAGS.steps}/g{FLAGS.guidance_scale:g}/eta{FLAGS.eta:g}/seed{FLAGS.seed}" + "".join(
        f"/{k}={v}" for k, v in sorted(changed.items()))
    cached = out / "synthetic.npz"
    needs_synthetic = FLAGS.protocols != ["TRTR"]  # TRTR alone trains on real records only: nothing to generate
    synthetic = None
    if needs_synthetic and cached.is_file():
        with np.load(cached) as f:
            if str(f["stamp"]) == stamp and list(f["record_ids"]) == train.record_ids:
                synthetic = f["ecg"]
    start = time.perf_counter()
    if needs_synthetic and synthetic is None:
        print(f"generating {len(train.record_ids)} synthetic ECGs from the training records' conditions", flush=True)
        try:
            synthetic, _ = generate_paired(model, train, sampler, FLAGS.seed)
        except NonFiniteECG as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        with out_dir.writing(cached.name):
            write_npz(cached, synthetic, model.fs, record_ids=np.array(train.record_ids), stamp=np.array(stamp))
    generation_s = time.perf_counter() - start
    labels = {split: multi_hot(pairs.superclasses) for split, pairs in parts.items()}
    keep = {split: pairs.labelled for split, pairs in parts.items()}  # PTB-XL's relabelled records left out
    dropped = sum(int((~k).sum()) for k in keep.values())
    if dropped:
        print(f"left out {dropped} records whose labels changed between PTB-XL versions", flush=True)
    config = NetworkTrainConfig(batch_size=FLAGS.batch_size, num_steps=FLAGS.num_steps)

    def log(setting, seed, scores):
        print(f"{setting} seed {seed}: macro F1 {scores['macro_f1']:.3f}, macro AUROC {scores['macro_auroc']:.3f}",
              flush=True)

    results = downstream_experiment((train.ecg[keep["train"]], labels["train"][keep["train"]]),
                                    (parts["validation"].ecg[keep["validation"]],
                                     labels["validation"][keep["validation"]]),
                                    (parts["test"].ecg[keep["test"]], labels["test"][keep["test"]]),
                                    (synthetic[keep["train"]], labels["train"][keep["train"]])
                                    if needs_synthetic else None, model.fs,
                                    FLAGS.protocols, seeds, config, log=log)
    lines = ["| protocol | training records | macro F1 | macro AUROC |", "|---|---:|---:|---:|"]
    for setting, r in results.items():
        lines.append(f"| {setting} | {r['train_records']} | {r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f} | "
                     f"{r['macro_auroc']:.3f} ± {r['macro_auroc_std']:.3f} |")
    positives = results[FLAGS.protocols[0]]["runs"][0]["positives"]
    report = (f"# Downstream classification: {model.id}\n\nPTB-XL superclasses ({', '.join(SUPERCLASSES)}); "
              f"{len(train.record_ids)} real training records, {len(parts['validation'].record_ids)} validation "
              f"(thresholds), {len(parts['test'].record_ids)} test (positives {positives}); mean ± std over seeds "
              f"{seeds}, {FLAGS.num_steps} steps each.\n\n" + "\n".join(lines) + "\n")
    with out_dir.writing("downstream.json", "report.md"):
        jsonio.write_json(out / "downstream.json", {
            "checkpoint": {"path": str(model.source), "id": model.id}, "sampler": stamp,
            "generation_seconds": round(generation_s, 1), "results": results, **cli.provenance()})
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    cli.run(main)
