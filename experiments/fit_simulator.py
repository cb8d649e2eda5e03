r"""Fit the simulator to 12-lead WFDB records: parameters, fit quality, wave timings and an overlay plot.

    python -m experiments.fit_simulator --record=examples/records/sinus_arrhythmia_0 --out_dir=fits
    python -m experiments.fit_simulator --record=pn://ptb-xl/1.0.3/records500/00000/00001_hr --out_dir=fits
    python -m experiments.fit_simulator --records_file=records.txt --out_dir=fits --mode=strip

For each record `<name>` (the record's file name) it writes to --out_dir:
  <name>.json  fitted parameters with units, per-lead correlation and RMSE, P/Q/R/S/T peak times (ms from R),
               iterations and the converged flag;
  <name>.npz   `real` and `fitted` (time, 12) float32 mV at the record's rate, `fs`, `times_s`, `mask`;
  <name>.png   real vs fitted, 12 leads.
--records_file lists one record path per line (without extension, or a PhysioNet record
pn://<database>/<version>/<folder>/<record>; '#' starts a comment; relative paths are
relative to the file). With --records_file, records that cannot be fitted are reported with the reason and
skipped, and the exit status is then 1; a --record that cannot be fitted is an error (exit status 2). Every file
is written atomically, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("record", None, "WFDB record path without extension (e.g. data/00001_hr), or a PhysioNet record "
                    "pn://<database>/<version>/<folder>/<record> (downloaded once into ~/.cache/sediff_jax).")
flags.DEFINE_string("records_file", None, "Text file with one WFDB record path per line.")
flags.DEFINE_string("out_dir", None, "Where <name>.json/.npz/.png are written (a new or empty folder, see "
                    "--overwrite).", required=True)
flags.DEFINE_bool("overwrite", False, "Replace this tool's earlier outputs in --out_dir (the files its record "
                  "there, .sediff_outputs.json, lists, if unchanged); a folder holding any other file refuses.")
flags.DEFINE_enum("mode", "beat", ["beat", "strip"], "Fit the median beat or the whole strip.")
flags.DEFINE_float("duration", 10.0, "Seconds of each record used (from --offset); shorter records are used whole.")
flags.DEFINE_float("offset", 0.0, "Start of the used part of each record, s.")
flags.DEFINE_float("fit_fs", None, "Fitting rate, Hz (default: the record's rate, or 500 Hz outside 100-1000 Hz). "
                   "Outputs are always at the record's rate.")
flags.DEFINE_integer("max_iterations", None, "Adam steps at most (default: FitConfig's).")
flags.DEFINE_enum("solver", None, ["heun", "tsit5", "euler"], "ODE solver (default: FitConfig's).")
flags.DEFINE_integer("batch_size", 64, "Records fitted together in one compiled batch.")
flags.DEFINE_bool("png", True, "Write the overlay PNG.")

cli.check_float("duration", 0, 24 * 3600, low_open=True)
cli.check_float("offset", 0, 24 * 3600)
flags.register_validator("fit_fs", lambda v: v is None or 100 <= v <= 2000, message="--fit_fs must be in [100, 2000] Hz")
cli.check_int("max_iterations", 1)
cli.check_int("batch_size", 1)



def record_paths(record: str | None, records_file: str | None) -> list[str]:
    """The record paths the flags name; raises app.UsageError for a bad combination or an unreadable list."""
    if (record is None) == (records_file is None):
        raise app.UsageError("pass exactly one of --record and --records_file")
    if record is not None:
        return [record]
    try:
        lines = Path(records_file).read_text().splitlines()
    except OSError as e:
        raise app.UsageError(f"--records_file={records_file}: {e.strerror}") from None
    base = Path(records_file).resolve().parent
    paths = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            path = Path(line)
            paths.append(line if line.startswith("pn://") or path.is_absolute() else str(base / path))
    if not paths:
        raise app.UsageError(f"--records_file={records_file} lists no records")
    names = [Path(p).name for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise app.UsageError(f"--records_file={records_file}: several records are named {', '.join(duplicates)}; "
                             "their output files would collide")
    return paths


def fitting_groups(loaded: list, mode: str) -> dict[tuple[float, int], list]:
    """(path, CanonicalRecord, RawRecord) items grouped into compiled batches: by fitting rate, and for strip fits
    also by length (samples), so that every record is fitted over its own length; beat fits use length 0."""
    groups: dict[tuple[float, int], list] = {}
    for item in loaded:
        record = item[1]
        groups.setdefault((record.fs, record.ecg.shape[0] if mode == "strip" else 0), []).append(item)
    return groups


def default_fit_fs(fs: float) -> float:
    return fs if 100.0 <= fs <= 1000.0 else 500.0


def load_for_fitting(path: str, fit_fs: float | None, duration_s: float, offset_s: float, minimum_s: float):
    """Read and canonicalise one record: (CanonicalRecord at the fitting rate, RawRecord). Raises RecordError
    (reason too_short when less than `minimum_s` seconds are available)."""
    from sediff_jax.data.canonical import CanonicalConfig, canonicalize
    from sediff_jax.data.wfdb_reader import RecordError, read_record

    raw = read_record(path)
    available = raw.duration_s - offset_s
    if available < minimum_s:
        raise RecordError(f"{path}: {raw.duration_s:.2f} s long; fitting needs at least {minimum_s:g} s after "
                          f"--offset={offset_s:g} s", reason="too_short")
    duration = min(duration_s, np.floor(available * raw.fs) / raw.fs)
    config = CanonicalConfig(fs=fit_fs or default_fit_fs(raw.fs), duration_s=float(duration), offset_s=offset_s)
    return canonicalize(raw, config), raw


def main(argv):
    del argv
    from sediff_jax.data.wfdb_reader import RecordError
    from sediff_jax.io.outputs import output_dir
    from sediff_jax.simulator.fitting import FitConfig, FitError, fit_ecgs, prepare_fit
    from sediff_jax.simulator.fitting.outputs import fit_output_names, write_fit_outputs

    paths = record_paths(FLAGS.record, FLAGS.records_file)
    out = output_dir(FLAGS.out_dir, overwrite=FLAGS.overwrite, tool="fit_simulator")
    out_dir, cleared = out.path, False
    failures: list[str] = []
    loaded = []
    for path in paths:
        try:
            record, raw = load_for_fitting(path, FLAGS.fit_fs, FLAGS.duration, FLAGS.offset,
                                           minimum_s=sum(FitConfig().beat_window_s))
        except RecordError as e:
            if FLAGS.record is not None:  # the one record asked for: a user error (exit 2), nothing written
                raise cli.UsageError(f"--record={path}: cannot fit: {_reason_text(e)}") from None
            failures.append(f"{path}: cannot fit: {_reason_text(e)}")
            continue
        loaded.append((path, record, raw))
    groups = fitting_groups(loaded, FLAGS.mode)

    overrides = {k: v for k, v in (("max_iterations", FLAGS.max_iterations), ("solver", FLAGS.solver)) if v is not None}
    num_written = 0
    for (fs, length), items in groups.items():
        config = FitConfig(mode=FLAGS.mode, fs=fs, batch_size=min(FLAGS.batch_size, len(items)), **overrides)
        if FLAGS.mode == "strip":
            config = dataclasses.replace(config, strip_duration_s=float(min(FLAGS.duration, length / fs)))
        fittable = []
        for path, record, raw in items:
            try:
                prepare_fit(record.ecg, config, record.r_peaks, name=path)
                fittable.append((path, record, raw))
            except FitError as e:
                if FLAGS.record is not None:
                    raise cli.UsageError(f"--record: cannot fit: {e}") from None
                failures.append(f"cannot fit: {e}")
        if not fittable:
            continue
        start = time.perf_counter()
        print(f"fitting {len(fittable)} record(s) at {fs:g} Hz ({config.mode} mode, up to {config.max_iterations} "
              "iterations; the first batch compiles)...", flush=True)
        results = fit_ecgs([r.ecg for _, r, _ in fittable], config, [r.r_peaks for _, r, _ in fittable],
                           names=[p for p, _, _ in fittable],
                           progress=lambda n: print(f"  {n}/{len(fittable)} fitted", flush=True))
        elapsed = time.perf_counter() - start
        if not cleared:  # this tool's earlier outputs (--overwrite) go once the first new ones exist
            out.mkdir()
            out.clear()
            cleared = True
        for (path, _, raw), result in zip(fittable, results):
            name = Path(path).name
            with out.writing(*fit_output_names(name, FLAGS.png)):
                write_fit_outputs(out_dir, name, result, raw.fs, path, FLAGS.png)
            num_written += 1
            state = "converged" if result.converged else "stopped at the iteration cap (not converged)"
            print(f"{name}: median lead r = {np.median(result.lead_correlation):.3f}, HR "
                  f"{float(result.params.rhythm.hr_mean):.0f} bpm, {result.iterations} iterations ({state}) "
                  f"-> {out_dir / name}.json/.npz" + ("/.png" if FLAGS.png else ""))
        print(f"{len(fittable)} record(s) in {elapsed:.1f} s", flush=True)
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(paths)} record(s) could not be fitted; {num_written} written to {out_dir}",
              file=sys.stderr)
        sys.exit(1)


_REASONS = {
    "unknown_lead": "not a 12-lead ECG header",
    "units": "not an ECG header",
    "missing_lead": "not a 12-lead ECG (leads missing)",
    "duplicate_lead": "not a valid 12-lead ECG header",
    "flat_lead": "flat signal",
    "nan_lead": "signal missing (NaN)",
    "too_short": "too short",
    "no_r_peaks": "no detectable R peaks",
    "heart_rate": "implausible heart rate",
    "amplitude": "implausible amplitude (wrong gain or units?)",
    "bad_header": "unreadable header",
}


def _reason_text(error) -> str:
    reason = getattr(error, "reason", None)
    return f"{_REASONS[reason]}: {error}" if reason in _REASONS else str(error)


if __name__ == "__main__":
    cli.run(main)
