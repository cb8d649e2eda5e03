r"""Simulator fitting against cardiologists: LUDB wave peaks and median-beat correlation, with speed.

    python -m experiments.benchmarks.fitting [--data_dir=../shared/data] [--batch=64] [--reference]

Every LUDB record is fitted (the default `FitConfig`: beat mode; --mode=strip fits whole strips), in batches
of --batch. For each record and lead, the fitted wave peak times (`FitResult.lead_wave_times_ms`: P and T at the wave's largest deflection,
R at the QRS maximum) are compared with the cardiologists' peak marks on that lead (median over the record's
beats, relative to the same detected R peaks). Reported separately for sinus-rhythm records (the targets:
median |error| <= 20 ms P, 8 ms R, 30 ms T; median per-lead Pearson correlation of fitted vs real median beat
>= 0.95) and for the others (atrial fibrillation, flutter, paced; no target). With --reference, neurokit2's
wavelet delineation (`ecg_delineate`, method 'dwt') on the same leads and beats is scored the same way, as a
reference for the timings. Speed: seconds per record for a batch after compilation, and the compile time.
Prints Markdown tables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from absl import flags

from experiments import cli
from experiments.benchmarks.timing import compile_and_time

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", os.environ.get("SEDIFF_DATA_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "data")),
                    "Folder with ludb/ (default: $SEDIFF_DATA_DIR or ../shared/data).")
flags.DEFINE_integer("batch", 64, "Records per compiled fitting batch.")
flags.DEFINE_integer("max_records", None, "Fit only the first N LUDB records.")
flags.DEFINE_enum("mode", "beat", ["beat", "strip"], "Fit the median beat (the targets) or the whole strip.")
flags.DEFINE_integer("max_iterations", None, "Adam steps per fit (default: FitConfig's).")
flags.DEFINE_boolean("reference", False, "Also score neurokit2's DWT delineation (slow: ~1 s per lead).")

WAVES = ("P", "R", "T")
TARGET_MS = {"P": 20.0, "R": 8.0, "T": 30.0}
TARGET_CORRELATION = 0.95


cli.check_int("batch", 1)
cli.check_int("max_records", 1)
cli.check_int("max_iterations", 1)

def is_sinus(entry) -> bool:
    rhythm = entry.codes[0].lower() if entry.codes else ""
    paced = any("ventricular pacing" in c.lower() or "biventricular" in c.lower() for c in entry.codes)
    return ("sinus" in rhythm) and not paced


def delineate_times_ms(ecg, r_peaks, fs: float):
    """neurokit2 DWT delineation, per lead, in the convention of `ludb.annotated_peak_times_ms`."""
    import neurokit2 as nk
    import numpy as np

    from sediff_jax.data.ludb import median_offset_from_r_ms

    r_peaks = np.asarray(r_peaks)
    out = {w: np.full(ecg.shape[1], np.nan) for w in WAVES}
    for k in range(ecg.shape[1]):
        try:
            _, waves = nk.ecg_delineate(ecg[:, k], r_peaks, sampling_rate=int(fs), method="dwt")
        except Exception:  # noqa: BLE001 (delineation fails on some leads; counted as missing)
            continue
        # neurokit2's DWT gives P and T peaks; the R peak is the given one, refined to the lead's QRS maximum.
        qrs_max = [p - 15 + int(np.argmax(ecg[max(p - 15, 0) : p + 16, k])) for p in r_peaks]
        for wave, peaks in (("P", waves.get("ECG_P_Peaks", [])), ("R", qrs_max), ("T", waves.get("ECG_T_Peaks", []))):
            peaks = np.asarray([p for p in peaks if p == p], np.float64)  # neurokit2 marks missing waves NaN
            out[wave][k] = median_offset_from_r_ms(peaks, r_peaks, fs)
    return out


def main(argv):
    del argv
    import jax
    import numpy as np

    from sediff_jax.data.canonical import CanonicalConfig, canonicalize
    from sediff_jax.data.ludb import annotated_peak_times_ms, read_ludb
    from sediff_jax.data.wfdb_reader import read_record
    from sediff_jax.simulator.fitting import FitConfig, fit_ecgs

    source = os.path.join(FLAGS.data_dir, "ludb")
    if not os.path.isdir(source):
        raise cli.UsageError(f"{source} not found; pass --data_dir")
    entries = read_ludb(source)[: FLAGS.max_records]
    records = [canonicalize(read_record(e.path), CanonicalConfig(fs=500.0)) for e in entries]
    config = FitConfig(batch_size=FLAGS.batch, mode=FLAGS.mode,
                       **({"max_iterations": FLAGS.max_iterations} if FLAGS.max_iterations else {}))

    first = slice(0, min(FLAGS.batch, len(records)))
    ecgs, peaks = [r.ecg for r in records], [r.r_peaks for r in records]
    timing = compile_and_time(lambda: fit_ecgs(ecgs, config, peaks),
                              first=lambda: [r.params for r in fit_ecgs(ecgs[first], config, peaks[first])])
    results, first_call, total = timing.result, timing.first_s, timing.seconds
    num_batches = -(-len(records) // FLAGS.batch)
    per_record = total / (num_batches * FLAGS.batch)  # padded batches cost as much as full ones
    compile_s = first_call - total / num_batches

    groups = {"sinus rhythm": [], "non-sinus or paced": []}
    reference_s = 0.0
    for entry, record, result in zip(entries, records, results):
        truth = annotated_peak_times_ms(entry.path, record.r_peaks, record.fs)
        fitted = {w: result.lead_wave_times_ms[:, "PQRST".index(w)] for w in WAVES}
        row = {"truth": truth, "fitted": fitted, "corr": result.lead_correlation, "converged": result.converged}
        if FLAGS.reference:
            start = time.perf_counter()
            row["reference"] = delineate_times_ms(record.ecg, record.r_peaks, record.fs)
            reference_s += time.perf_counter() - start
        groups["sinus rhythm" if is_sinus(entry) else "non-sinus or paced"].append(row)

    def median_error(rows, key, wave):
        err = np.concatenate([np.abs(r[key][wave] - r["truth"][wave]) for r in rows])
        err = err[np.isfinite(err)]
        return (float(np.median(err)) if err.size else float("nan")), int(err.size)

    what = "correlation of fitted vs real median beat" if config.mode == "beat" else "correlation over the strip"
    print(f"\nLUDB fitting benchmark: {len(records)} records, {config.mode} mode ({what}), solver {config.solver}, "
          f"{config.max_iterations} Adam steps max; jax {jax.__version__}, {jax.devices()[0].platform}\n")
    header = "| records | n | P err ms (n) | R err ms (n) | T err ms (n) | median lead corr | converged |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        if not rows:
            continue
        cells = []
        for wave in WAVES:
            err, n = median_error(rows, "fitted", wave)
            cells.append(f"{err:.1f} ({n})" if n else "- (0)")
        corr = float(np.median(np.concatenate([r["corr"] for r in rows])))
        conv = np.mean([r["converged"] for r in rows])
        print(f"| {name} (fit) | {len(rows)} | " + " | ".join(cells) + f" | {corr:.3f} | {conv:.0%} |")
        if FLAGS.reference:
            cells = []
            for wave in WAVES:
                err, n = median_error(rows, "reference", wave)
                cells.append(f"{err:.1f} ({n})" if n else "- (0)")
            print(f"| {name} (neurokit2 dwt) | {len(rows)} | " + " | ".join(cells) + " | - | - |")
    sinus = groups["sinus rhythm"]
    if sinus:
        verdict = [f"{w} {median_error(sinus, 'fitted', w)[0]:.1f} <= {TARGET_MS[w]:g} ms: "
                   f"{'pass' if median_error(sinus, 'fitted', w)[0] <= TARGET_MS[w] else 'FAIL'}" for w in WAVES]
        corr = float(np.median(np.concatenate([r["corr"] for r in sinus])))
        verdict.append(f"corr {corr:.3f} >= {TARGET_CORRELATION}: {'pass' if corr >= TARGET_CORRELATION else 'FAIL'}")
        print("\nsinus targets: " + "; ".join(verdict))
    print(f"\n| speed | value |\n|---|---|\n| s per record (batch {FLAGS.batch}, after compile) | {per_record:.2f} |"
          f"\n| compile, s | {compile_s:.1f} |\n| records fitted | {len(records)} in {total:.1f} s |")
    if FLAGS.reference:
        nk_per_record = reference_s / len(records)
        print(f"| neurokit2 dwt delineation, s per record (12 leads, one core) | {nk_per_record:.2f} |"
              f"\n| fit / neurokit2 time | {per_record / nk_per_record:.2f}x |")


if __name__ == "__main__":
    cli.run(main)
