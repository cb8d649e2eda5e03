r"""Train the ECG-text CLIP model of the evaluation (FID / precision-recall features, CLIP score) on real records.

    python -m experiments.train_clip --dataset=ptbxl --fs=100 --out=checkpoints/ecg_clip_ptbxl100.safetensors

Trains on --train_split (PTB-XL folds 1-8) with the project's text encoder, then reports on --val_split and
--test_split how well the space pairs ECGs with their reports: mean cosine of matched vs shuffled pairs and
ECG -> text top-1/top-5 among the split's distinct reports. Writes --out (one safetensors file: weights and
config, atomically) and <out>.json (the report).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import flags

from experiments import cli
from sediff_jax.io import jsonio

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "ptbxl", ["ptbxl", "ludb", "mimic"], "Dataset layout.")
flags.DEFINE_string("source_dir", None, "Dataset root (default: $SEDIFF_DATA_DIR/ptb-xl or /ludb).")
flags.DEFINE_float("fs", 100.0, "Sampling rate of the ECGs the encoder takes (the SE-Diff model's), Hz.")
flags.DEFINE_float("duration_s", 10.0, "Record length, s.")
flags.DEFINE_float("highpass_hz", None, "Baseline filter (as in the SE-Diff model's training data).")
flags.DEFINE_string("train_split", "train", "Split to train on.")
flags.DEFINE_list("report_splits", ["validation", "test"], "Splits to report retrieval scores on.")
flags.DEFINE_string("text_encoder", "minilm", "Text encoder (the SE-Diff model's).")
flags.DEFINE_integer("num_steps", 1500, "Optimiser steps.")
flags.DEFINE_integer("batch_size", 64, "Records per step.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("out", None, "Output .safetensors path.", required=True)
cli.check_float("fs", 50, 10000)
cli.check_float("duration_s", 0, 3600, low_open=True)
cli.check_float("highpass_hz", 0, 40, low_open=True)
cli.check_int("num_steps", 1)
cli.check_int("batch_size", 1)
cli.check_float("learning_rate", 0, 1, low_open=True)
cli.check_int("seed", 0, cli.MAX_SEED)


def main(argv):
    del argv
    from sediff_jax.io.outputs import usable_path

    if FLAGS.out is not None:
        usable_path(FLAGS.out, "--out")  # checked before any work
    from experiments.configs.common import dataset_dir
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import dataset_entries
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.evaluation.clip import retrieval_scores, train_clip
    from sediff_jax.evaluation.networks import NetworkTrainConfig
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.text import make_text_encoder

    source = FLAGS.source_dir or dataset_dir(FLAGS.dataset)
    canonical = CanonicalConfig(fs=FLAGS.fs, duration_s=FLAGS.duration_s, highpass_hz=FLAGS.highpass_hz)
    try:
        entries = dataset_entries(FLAGS.dataset, source, canonical.fs)
        train = real_pairs(entries, canonical, FLAGS.train_split)
        reports = {split: real_pairs(entries, canonical, split) for split in FLAGS.report_splits}
    except (LayoutError, ValueError, OSError) as e:
        print(f"error: --dataset={FLAGS.dataset} --source_dir={source}: {e}", file=sys.stderr)
        return 2
    config = NetworkTrainConfig(batch_size=min(FLAGS.batch_size, len(train.record_ids)), num_steps=FLAGS.num_steps,
                                learning_rate=FLAGS.learning_rate, seed=FLAGS.seed)
    print(f"training on {len(train.record_ids)} records of {FLAGS.train_split} ({len(set(train.texts))} distinct "
          f"reports), {config.num_steps} steps of {config.batch_size}", flush=True)
    start = time.perf_counter()
    encoder = train_clip(train.ecg, train.texts, canonical.fs, make_text_encoder(FLAGS.text_encoder),
                         train_config=config,
                         log=lambda step, m: print(f"step {step}: loss {m['loss']:.4f}, top-1 {m['top1']:.3f}, "
                                                   f"scale {m['scale']:.1f}", flush=True),
                         dataset=FLAGS.dataset, train_split=FLAGS.train_split, highpass_hz=FLAGS.highpass_hz)
    seconds = time.perf_counter() - start
    scores = {split: retrieval_scores(encoder, pairs.ecg, pairs.texts) for split, pairs in reports.items()}
    out = Path(FLAGS.out)
    encoder.save(out)
    jsonio.write_json(out.with_suffix(".json"), {"id": encoder.id, "config": encoder.config,
                                                 "train_seconds": round(seconds, 1), "retrieval": scores,
                                                 **cli.provenance()})
    for split, s in scores.items():
        print(f"{split}: matched cos {s['matched_cos']:.3f} vs shuffled {s['shuffled_cos']:.3f}; ECG->text top-1 "
              f"{s['top1']:.3f}, top-5 {s['top5']:.3f} among {s['distinct_texts']} reports")
    print(f"wrote {out} ({encoder.id}) and {out.with_suffix('.json')} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    cli.run(main)
