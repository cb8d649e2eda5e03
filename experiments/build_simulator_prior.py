r"""Fit every training record of a dataset and write the per-class simulator prior.

    python -m experiments.build_simulator_prior --dataset=ptbxl --source_dir=../shared/data/ptb-xl \
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
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def read_split_entries(dataset: str, source_dir: str, fs: float, split: str, patients_csv: str | None):
    if dataset == "ptbxl":
        from sediff_jax.data.ptbxl import read_ptbxl

        entries = read_ptbxl(source_dir, 100 if fs <= 100 else 500)
    else:
        from sediff_jax.data.mimic import read_mimic

        entries = read_mimic(source_dir, patients_csv)
    return [e for e in entries if e.split == split]


def save_fits(path: str, record_ids, labels, fits, provenance: dict) -> None:
    from sediff_jax.io import atomic_path
    from sediff_jax.simulator.priors import FIELDS

    arrays = {f: np.stack([fit.values[f] for fit in fits]) for f in FIELDS}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f, record_id=np.array(record_ids), labels=np.array(["|".join(x) for x in labels]),
                median_correlation=np.array([x.median_correlation for x in fits], np.float32),
                loss=np.array([x.loss for x in fits], np.float32),
                converged=np.array([x.converged for x in fits]), provenance=np.array(json.dumps(provenance)),
                **arrays,
            )


def load_fits(path: str):
    from sediff_jax.simulator.priors import FIELDS, RecordFit

    try:
        data = np.load(path)
        labels = [tuple(x for x in s.split("|") if x) for s in data["labels"].tolist()]
        fits = [
            RecordFit({f: data[f][k] for f in FIELDS}, float(data["median_correlation"][k]), float(data["loss"][k]),
                      bool(data["converged"][k]))
            for k in range(len(labels))
        ]
        provenance = json.loads(str(data["provenance"]))
    except (OSError, KeyError, ValueError) as e:
        raise app.UsageError(f"--from_fits={path}: not a fits file from --fits_out ({e})") from None
    return data["record_id"].tolist(), labels, fits, provenance


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
    from sediff_jax.simulator.priors import RecordFit, build_prior, save_prior

    started = time.perf_counter()
    config = FitConfig(fs=FLAGS.fs, batch_size=FLAGS.batch_size,
                       **({"max_iterations": FLAGS.max_iterations} if FLAGS.max_iterations else {}))
    if FLAGS.from_fits:
        record_ids, labels, fits, source = load_fits(FLAGS.from_fits)
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
        "git_commit": _git_commit(),
        "command": cli.provenance()["command"],
    }
    prior = build_prior(fits, labels, provenance, FLAGS.min_count, FLAGS.min_correlation)
    save_prior(prior, FLAGS.out)
    everyone = prior["all"]
    print(f"{len(prior.classes)} classes from {len(fits)} fits -> {FLAGS.out} (median lead r of all fits: "
          f"{everyone.quality['median_correlation']['p50']:.3f}; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    cli.run(main)
