r"""Fit every training record of a dataset and write the per-class simulator prior.

    python -m experiments.build_simulator_prior --dataset=ptbxl --source_dir=$SEDIFF_DATA_DIR/ptb-xl \
        --out=sediff_jax/simulator/priors/ptbxl500_train_v1.json --fits_out=fits.npz

Records come from the dataset's training split (PTB-XL strat_fold 1-8; MIMIC-IV-ECG's hashed patient split) at
--fs, canonicalised like prepared datasets (records that cannot be read are listed and skipped). Each record is
fitted in beat mode (`sediff_jax.simulator.fitting`), its classes come from `sediff_jax.data.classes`
(SE-Diff's 20 classes from the English report, plus PTB-XL superclasses and statements), and the prior keeps
every class with at least --min_count fits whose median lead correlation is at least --min_correlation.
--fits_out saves the per-record fits; --from_fits rebuilds a prior from such a file without fitting again.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time

from absl import app, flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "ptbxl", ["ptbxl", "mimic"], "Dataset layout of --source_dir.")
flags.DEFINE_string("source_dir", None, "Dataset root (default: $SEDIFF_DATA_DIR/ptb-xl for ptbxl).")
flags.DEFINE_string("mimic_patients_csv", None, "MIMIC-IV patients.csv (ages), optional.")
flags.DEFINE_string("split", "train", "Split whose records are fitted.")
flags.DEFINE_float("fs", 500.0, "Fitting rate, Hz (PTB-XL: 100 or 500, the native files are used).")
flags.DEFINE_string("out", None, "Prior JSON to write.", required=True)
flags.DEFINE_string("fits_out", None, "Also write the per-record fits (NPZ).")
flags.DEFINE_string("from_fits", None, "Build from a --fits_out file instead of fitting.")
flags.DEFINE_integer("min_count", 3, "Smallest number of usable fits for a class to be kept.")
flags.DEFINE_float("min_correlation", 0.8, "Fits with a lower median lead correlation are not averaged.")
flags.DEFINE_integer("max_records", None, "Fit only the first N records of the split.")
flags.DEFINE_integer("max_per_class", None, "Fit at most ~N records per SE-Diff class / PTB-XL superclass (a seeded "
                     "sample that keeps every record of rarer classes; data.classes.capped_by_class).")
flags.DEFINE_integer("seed", 0, "Seed of the --max_per_class sample.")
flags.DEFINE_integer("batch_size", 64, "Records per compiled fitting batch.")
flags.DEFINE_integer("max_iterations", None, "Adam steps per fit (default: FitConfig's).")

flags.register_validator("min_count", lambda v: v >= 1, message="--min_count must be >= 1")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1")
cli.check_float("fs", 50, 10000)
cli.check_float("min_correlation", -1, 1)
cli.check_int("max_records", 1)
cli.check_int("max_per_class", 1)
cli.check_int("max_iterations", 1)


def read_split_entries(dataset: str, source_dir: str, fs: float, split: str, patients_csv: str | None):
    if dataset == "ptbxl":
        from sediff_jax.data.ptbxl import read_ptbxl

        entries = read_ptbxl(source_dir, 100 if fs <= 100 else 500)
    else:
        from sediff_jax.data.mimic import read_mimic

        entries = read_mimic(source_dir, patients_csv)
    return [e for e in entries if e.split == split]


def main(argv):
    del argv
    from sediff_jax.io.outputs import usable_path

    if FLAGS.out is not None:
        usable_path(FLAGS.out, "--out")  # checked before any work
    from sediff_jax.data.builder import load_and_canonicalize
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.classes import capped_by_class, record_classes
    from sediff_jax.data.wfdb_reader import RecordError
    from sediff_jax.simulator.fitting import FitConfig, FitError, fit_ecgs, prepare_fit
    from sediff_jax.simulator.priors import PriorError, RecordFit, build_prior, load_fits, save_fits, save_prior

    started = time.perf_counter()
    config = FitConfig(fs=FLAGS.fs, batch_size=FLAGS.batch_size,
                       **({"max_iterations": FLAGS.max_iterations} if FLAGS.max_iterations else {}))
    if FLAGS.from_fits:
        try:
            record_ids, labels, fits, source = load_fits(FLAGS.from_fits)
        except PriorError as e:
            raise app.UsageError(f"--from_fits={FLAGS.from_fits}: {e}") from None
        source["rebuilt_from_fits"] = FLAGS.from_fits
    else:
        source_dir = FLAGS.source_dir
        if source_dir is None:
            if FLAGS.dataset != "ptbxl":
                raise app.UsageError("--source_dir is required for --dataset=mimic")
            source_dir = os.path.join(os.environ.get("SEDIFF_DATA_DIR", "../shared/data"), "ptb-xl")
        if not os.path.isdir(source_dir):
            raise app.UsageError(f"--source_dir={source_dir} is not a folder")
        entries = read_split_entries(FLAGS.dataset, source_dir, FLAGS.fs, FLAGS.split, FLAGS.mimic_patients_csv)
        records_in_split = len(entries)
        if FLAGS.max_per_class:
            chosen = capped_by_class([record_classes(e) for e in entries], FLAGS.max_per_class, FLAGS.seed)
            entries = [entries[i] for i in chosen]
            print(f"{len(entries)} of {records_in_split} records: at most ~{FLAGS.max_per_class} per class", flush=True)
        entries = entries[: FLAGS.max_records]
        if not entries:
            raise app.UsageError(f"no records in split {FLAGS.split!r} of {source_dir}")
        canonical = CanonicalConfig(fs=FLAGS.fs)
        kept, skipped = [], []
        for entry in entries:
            _, record = load_and_canonicalize(entry, canonical)
            if isinstance(record, RecordError):
                skipped.append(f"{entry.record_id}: {record}")
                continue
            try:
                prepare_fit(record.ecg, config, record.r_peaks, name=entry.record_id)
            except FitError as e:
                skipped.append(str(e))
                continue
            kept.append((entry, record))
        print(f"fitting {len(kept)} of {len(entries)} {FLAGS.split} records ({len(skipped)} skipped)...", flush=True)
        results = fit_ecgs([r.ecg for _, r in kept], config, [r.r_peaks for _, r in kept],
                           names=[e.record_id for e, _ in kept],
                           progress=lambda n: print(f"  {n}/{len(kept)} fitted "
                                                    f"({time.perf_counter() - started:.0f} s)", flush=True))
        record_ids = [e.record_id for e, _ in kept]
        labels = [record_classes(e) for e, _ in kept]
        fits = [RecordFit.from_result(r) for r in results]
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
        source = {"dataset": FLAGS.dataset, "source_dir": source_dir, "split": FLAGS.split,
                  "records_in_split": records_in_split, "records_chosen": len(entries),
                  "max_per_class": FLAGS.max_per_class, "records_skipped": len(skipped),
                  "fit_config": dataclasses.asdict(config), "fit_seconds": round(time.perf_counter() - started, 1)}
        if FLAGS.fits_out:
            save_fits(FLAGS.fits_out, record_ids, labels, fits, source)
            print(f"per-record fits -> {FLAGS.fits_out}")

    provenance = {
        **source,
        "records_fitted": len(fits),
        "min_count": FLAGS.min_count,
        "min_correlation": FLAGS.min_correlation,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **cli.provenance(),
    }
    prior = build_prior(fits, labels, provenance, FLAGS.min_count, FLAGS.min_correlation)
    save_prior(prior, FLAGS.out)
    everyone = prior["all"]
    print(f"{len(prior.classes)} classes from {len(fits)} fits -> {FLAGS.out} (median lead r of all fits: "
          f"{everyone.quality['median_correlation']['p50']:.3f}; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    cli.run(main)
