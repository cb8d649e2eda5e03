r"""Prepare a dataset for training: WFDB records (or the simulator) -> canonical 12-lead array_record dataset.

    python -m experiments.prepare_data --dataset=ptbxl --source_dir=data/ptb-xl --out_dir=prepared --fs=100
    python -m experiments.prepare_data --dataset=ptbxl --download --source_dir=data/ptb-xl --out_dir=prepared
    python -m experiments.prepare_data --dataset=synthetic --num_synthetic=2000 --out_dir=prepared

writes <out_dir>/<dataset>/<fs>hz_<duration>s/1.0.0/ and prints what was read, written and skipped (by reason).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

from experiments import cli
from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.data.prepare import DATASETS, PrepareConfig, prepare
from sediff_jax.data.sources import LayoutError
from sediff_jax.data.wfdb_reader import RecordError

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "synthetic", list(DATASETS), "Which dataset to prepare.")
flags.DEFINE_string("source_dir", None, "The dataset's root folder (PhysioNet layout). Not used for synthetic.")
flags.DEFINE_string("out_dir", None, "Where prepared datasets are written.", required=True)
flags.DEFINE_float("fs", 500.0, "Output sampling rate, Hz.")
flags.DEFINE_float("duration", 10.0, "Output length, s (longer records are cropped, shorter ones skipped).")
flags.DEFINE_float("highpass_hz", None, "Optional baseline-wander high-pass cut-off, Hz.")
flags.DEFINE_bool("strict", False, "Stop at the first bad record instead of skipping it.")
flags.DEFINE_bool("overwrite", False, "Rebuild a prepared dataset that already exists.")
flags.DEFINE_integer("num_workers", max(1, (os.cpu_count() or 1) - 1),
                     "Processes reading records (1: in this process; the main process serialises examples).")
flags.DEFINE_integer("num_synthetic", 1000, "Records of the synthetic dataset (80/10/10 split).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic dataset.")
flags.DEFINE_string("mimic_patients_csv", None, "MIMIC-IV hosp/patients.csv, for age and sex of MIMIC-IV-ECG.")
flags.DEFINE_bool("download", False, "Fetch PTB-XL from PhysioNet into --source_dir first (resumes, verifies).")
flags.DEFINE_string("base_url", None, "Download URL (default: PhysioNet's PTB-XL 1.0.3).")
flags.DEFINE_integer("download_workers", 8, "Parallel downloads.")

cli.check_float("fs", 50, 10000)
cli.check_float("duration", 0, 3600, low_open=True)
cli.check_float("highpass_hz", 0, 40, low_open=True)
cli.check_int("num_synthetic", 3)
cli.check_int("num_workers", 1, 256)
cli.check_int("download_workers", 1, 64)
cli.check_int("seed", 0, cli.MAX_SEED)


def main(argv):
    del argv
    import tensorflow_datasets as tfds

    from sediff_jax.data.download import ChecksumError, DownloadError
    from sediff_jax.io.outputs import working_folder

    tfds.disable_progress_bar()
    working_folder(FLAGS.out_dir, "--out_dir")  # (it holds prepared datasets side by side; one is replaced only
    # with --overwrite)
    if FLAGS.dataset != "synthetic" and not FLAGS.source_dir:
        raise app.UsageError(f"--source_dir is required for --dataset={FLAGS.dataset}")
    if FLAGS.download:
        if FLAGS.dataset != "ptbxl":
            raise app.UsageError("--download fetches PTB-XL only (MIMIC-IV-ECG needs PhysioNet credentials)")
        from sediff_jax.data import download

        fs = (100,) if FLAGS.fs <= 100 else (500,)
        try:
            report = download.download_physionet(
                FLAGS.source_dir, FLAGS.base_url or download.PTBXL_URL, include=download.ptbxl_files(fs),
                num_workers=FLAGS.download_workers, log=logging.info)
        except (DownloadError, ChecksumError, OSError) as e:
            print(f"error: download: {e}", file=sys.stderr)
            return 1
        print(f"download: {report.listed} files listed, {report.downloaded} downloaded, {report.resumed} resumed, "
              f"{report.already_present} already present ({report.bytes_fetched / 1e6:.1f} MB)")
    config = PrepareConfig(
        dataset=FLAGS.dataset,
        out_dir=FLAGS.out_dir,
        source_dir=FLAGS.source_dir or "",
        canonical=CanonicalConfig(fs=FLAGS.fs, duration_s=FLAGS.duration, highpass_hz=FLAGS.highpass_hz),
        strict=FLAGS.strict,
        overwrite=FLAGS.overwrite,
        num_workers=FLAGS.num_workers,
        num_synthetic=FLAGS.num_synthetic,
        seed=FLAGS.seed,
        mimic_patients_csv=FLAGS.mimic_patients_csv,
    )
    start = time.perf_counter()
    try:
        report = prepare(config)
    except (RecordError, LayoutError, FileExistsError, ValueError) as e:
        cli.fail(str(e))
    elapsed = time.perf_counter() - start
    print(report.summary())
    for record_id, reason, message in report.skipped_records[:20]:
        print(f"  skipped {record_id} ({reason}): {message}")
    if len(report.skipped_records) > 20:
        print(f"  ... and {len(report.skipped_records) - 20} more (see {report.path}/prepare_report.json)")
    print(f"wrote {report.path} in {elapsed:.1f} s ({report.read / max(elapsed, 1e-9):.0f} records/s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
