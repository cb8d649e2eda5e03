r"""Condition recognition (TRTS) and per-class variety of generated ECGs against a real-data classifier.

    python -m experiments.evaluate --source_dir=$SEDIFF_DATA_DIR/ptb-xl-full --num_samples=2198 --save_generated \
        --out=eval/test
    python -m experiments.recognize --source_dir=$SEDIFF_DATA_DIR/ptb-xl-full \
        --classifier=eval/recognition_classifier.safetensors --generated=shipped=eval/test/generated.npz \
        --out=eval/recognition

A 1-D ResNet is trained on the real PTB-XL training folds for the five superclasses and ten specific statements
(AF, AFLT, CLBBB, CRBBB, LAFB, 1AVB, LVH, IMI, AMI/STE, PVC), with F1 thresholds from the validation fold, and
saved to --classifier (an existing file there is loaded instead). It scores the real test records (TRTR) and each
--generated set (ECGs generated from those records' conditions, truth = the records' labels: TRTS). With the
ECG-text CLIP encoder it also reports k-NN precision/recall class by class, beside real records of
--reference_split scored the same way. Writes --out/recognition.json and --out/report.md.
"""

from __future__ import annotations

import math

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("source_dir", None, "PTB-XL root (default: $SEDIFF_DATA_DIR/ptb-xl).")
flags.DEFINE_string("classifier", None, "The real-data classifier (.safetensors): loaded if it exists, else "
                    "trained on the training split and written there.", required=True)
flags.DEFINE_list("generated", [], "NAME=PATH,...: files of generated ECGs (evaluate --save_generated, "
                  "sweep_sampling --save_generated) made from test-split records' conditions.")
flags.DEFINE_string("split", "test", "The split the ECGs were generated from (PTB-XL: fold 10 is 'test').")
flags.DEFINE_string("reference_split", "validation", "Real records scored per class as if generated (the ideal "
                    "generator's per-class recall); '' for none.")
flags.DEFINE_string("encoder", "shipped", "ECG-text CLIP checkpoint for per-class precision/recall ('shipped', a "
                    "path, or '' for none).")
flags.DEFINE_integer("num_steps", 4000, "Classifier training steps (when --classifier does not exist).")
flags.DEFINE_integer("batch_size", 64, "Classifier batch size.")
flags.DEFINE_integer("train_records", None, "Train on a seeded random subset of this many training records.")
flags.DEFINE_integer("seed", 0, "Classifier seed.")
flags.DEFINE_string("out", None, "Output directory (recognition.json, report.md).", required=True)
flags.DEFINE_bool("overwrite", False, "Replace this tool's earlier outputs in --out.")
cli.check_int("num_steps", 1)
cli.check_int("batch_size", 1)
cli.check_int("train_records", 1)
cli.check_int("seed", 0, cli.MAX_SEED)



def parse_generated(values: list[str]) -> dict[str, str]:
    """NAME=PATH items -> {name: path} (UsageError naming a malformed or repeated one)."""
    out = {}
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise cli.UsageError(f"--generated: {item!r} is not NAME=PATH")
        if name in out:
            raise cli.UsageError(f"--generated: {name!r} given twice")
        out[name.strip()] = path.strip()
    return out


def _fmt(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def report(classes, positives: dict, trtr: dict, trts: dict, variety: dict, summary: str) -> str:
    names = list(trts)
    lines = [f"# Condition recognition\n\n{summary}\n", "AUROC of the real-data classifier, per class "
             "(TRTR: on the real records; TRTS: on the ECGs generated from their conditions):\n",
             "| class | positives | TRTR | " + " | ".join(f"TRTS {n}" for n in names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    rows = [("macro", "", trtr["macro_auroc"], [trts[n]["macro_auroc"] for n in names])]
    rows += [(c, positives[c], trtr["auroc"][c], [trts[n]["auroc"][c] for n in names]) for c in classes]
    for name, count, real, generated in rows:
        lines.append(f"| {name} | {count} | {_fmt(real)} | " + " | ".join(_fmt(g) for g in generated) + " |")
    lines.append(f"\nMacro F1 (validation thresholds): TRTR {_fmt(trtr['macro_f1'])}; " + ", ".join(
        f"TRTS {n} {_fmt(trts[n]['macro_f1'])}" for n in names) + ".")
    if variety:
        sets = list(variety)
        lines += ["", "k-NN precision / recall (k = 3) within each class, ECG-text CLIP features (real records with "
                  "the label against the other set's rows with it):", "",
                  "| class | records | " + " | ".join(sets) + " |", "|---|---:|" + "---:|" * len(sets)]
        for c in classes:
            cells = [f"{_fmt(variety[s][c]['precision'])} / {_fmt(variety[s][c]['recall'])}" for s in sets]
            lines.append(f"| {c} | {variety[sets[0]][c]['records']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from pathlib import Path

    import numpy as np

    from experiments.configs.common import dataset_dir
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import dataset_entries
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.evaluation.clip import load_clip
    from sediff_jax.evaluation.networks import NetworkTrainConfig
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.evaluation.recognition import (RECOGNITION_CLASSES, load_recognition_classifier,
                                                   per_class_precision_recall, recognition_labels,
                                                   train_recognition_classifier)
    from sediff_jax.evaluation.runner import read_generated
    from sediff_jax.io.outputs import output_dir, output_files

    out = output_dir(FLAGS.out, overwrite=FLAGS.overwrite, flag="--out", tool="recognize")
    sets = {name: read_generated(path) for name, path in parse_generated(FLAGS.generated).items()}
    shapes = {(fs, ecg.shape[1]) for ecg, fs, _, _ in sets.values()}
    if len(shapes) > 1:
        raise cli.UsageError(f"--generated: the files differ in sampling rate or length {sorted(shapes)}")
    ids = {tuple(r) for _, _, r, _ in sets.values()}
    if len(ids) > 1:
        raise cli.UsageError("--generated: the files were generated from different records; give sets made from "
                             "the same records (same --num_samples and split)")
    classifier_path = Path(FLAGS.classifier).expanduser()
    classifier = None
    if classifier_path.exists():
        try:
            classifier = load_recognition_classifier(classifier_path)
        except CheckpointError as e:
            raise cli.UsageError(f"--classifier: {e}") from None
        fs, num_samples = classifier.fs, classifier.num_samples
        if shapes and shapes != {(fs, num_samples)}:
            raise cli.UsageError(f"--classifier={classifier_path} takes {num_samples} samples at {fs:g} Hz; the "
                                 f"generated ECGs are {sorted(shapes)}")
    else:
        classifier_folder = output_files([classifier_path], tool="recognize", flag="--classifier")
        fs, num_samples = next(iter(shapes)) if shapes else (100.0, 1000)
    try:
        encoder = None if not FLAGS.encoder else load_clip(None if FLAGS.encoder == "shipped" else FLAGS.encoder)
    except CheckpointError as e:
        raise cli.UsageError(f"--encoder: {e}") from None
    source = FLAGS.source_dir or dataset_dir("ptbxl")
    canonical = CanonicalConfig(fs=fs, duration_s=num_samples / fs)

    def labelled(split: str, limit: int | None = None):
        pairs = real_pairs(entries, canonical, split, limit)
        pairs = pairs.take(np.flatnonzero(pairs.labelled))  # PTB-XL's relabelled records left out
        return pairs, recognition_labels(pairs.superclasses, pairs.codes)

    try:
        entries = dataset_entries("ptbxl", source, canonical.fs)
        if classifier is None:
            print("loading the training and validation records", flush=True)
            train, train_labels = labelled("train")
            if FLAGS.train_records and FLAGS.train_records < len(train.record_ids):
                chosen = np.sort(np.random.default_rng(FLAGS.seed).choice(len(train.record_ids),
                                                                          FLAGS.train_records, replace=False))
                train, train_labels = train.take(chosen), train_labels[chosen]
            validation, validation_labels = labelled("validation")
            print(f"training the recognition classifier on {len(train.record_ids)} records "
                  f"({FLAGS.num_steps} steps of {FLAGS.batch_size})", flush=True)
            config = NetworkTrainConfig(batch_size=min(FLAGS.batch_size, len(train.record_ids)),
                                        num_steps=FLAGS.num_steps, seed=FLAGS.seed)
            classifier = train_recognition_classifier((train.ecg, train_labels), (validation.ecg, validation_labels),
                                                      fs, config, source_dir=source)
            with classifier_folder.writing(classifier_path.name):
                classifier.save(classifier_path)
            print(f"wrote {classifier_path}", flush=True)
        test, test_labels = labelled(FLAGS.split)
        reference = labelled(FLAGS.reference_split) if FLAGS.reference_split and encoder is not None else None
    except (LayoutError, ValueError, OSError) as e:
        raise cli.UsageError(f"--source_dir={source}: {e}") from None
    if list(classifier.classes) != list(RECOGNITION_CLASSES):
        raise cli.UsageError(f"--classifier={classifier_path}: classes {classifier.classes}, expected "
                             f"{RECOGNITION_CLASSES}")
    if sets:
        row = {r: i for i, r in enumerate(test.record_ids)}
        record_ids = list(next(iter(ids)))
        kept = [i for i, r in enumerate(record_ids) if r in row]  # (relabelled records are not in `test`)
        in_split = {e.record_id for e in entries if e.split == FLAGS.split}
        unknown = [r for r in record_ids if r not in in_split]
        if unknown:
            raise cli.UsageError(f"--generated: record {unknown[0]} is not in split {FLAGS.split!r}")
        test_rows = np.array([row[record_ids[i]] for i in kept])
        test, test_labels = test.take(test_rows), test_labels[test_rows]
        sets = {n: ecg[kept] for n, (ecg, _, _, _) in sets.items()}
    trtr = classifier.scores(test.ecg, test_labels)
    trts = {name: classifier.scores(ecg, test_labels) for name, ecg in sets.items()}
    variety = {}
    if encoder is not None and (sets or reference):
        real_features = encoder.ecg_features(test.ecg)
        if reference is not None:
            variety[f"real {FLAGS.reference_split}"] = per_class_precision_recall(
                real_features, test_labels, encoder.ecg_features(reference[0].ecg), reference[1],
                RECOGNITION_CLASSES)
        for name, ecg in sets.items():
            variety[name] = per_class_precision_recall(real_features, test_labels, encoder.ecg_features(ecg),
                                                       test_labels, RECOGNITION_CLASSES)
    positives = dict(zip(RECOGNITION_CLASSES, test_labels.sum(0).astype(int).tolist()))
    summary = (f"{len(test.record_ids)} {FLAGS.split} records with unchanged labels; classifier {classifier.id} "
               f"({classifier.config.get('train_records')} training records, "
               f"{classifier.config.get('training', {}).get('num_steps')} steps), thresholds from the validation "
               "split.")
    text = report(RECOGNITION_CLASSES, positives, trtr, trts, variety, summary)
    result = {"classifier": {"path": str(classifier_path), "id": classifier.id,
                             "train_records": classifier.config.get("train_records")},
              "split": FLAGS.split, "records": len(test.record_ids), "positives": positives, "trtr": trtr,
              "trts": trts, "generated": {n: p for n, p in parse_generated(FLAGS.generated).items()},
              "per_class_precision_recall": variety,
              **cli.provenance()}
    cli.publish(out, {"recognition.json": result}, {"report.md": text})
    print(text)
    return 0


if __name__ == "__main__":
    cli.run(main)
