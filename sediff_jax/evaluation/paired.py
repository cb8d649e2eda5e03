"""SE-Diff's paired protocol: generate one ECG from each real record's conditions (report, age, sex, heart
rate) and compare it with that record: signal fidelity, heart rate, intervals, limb-lead consistency.

`real_pairs` reads and canonicalises a dataset split; `paired_metrics` scores generated ECGs against it;
`markdown_table` renders the summary. Distribution metrics (FID, CLIP) need an ECG encoder and live in
`sediff_jax.evaluation.distribution`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from sediff_jax.data.builder import load_and_canonicalize
from sediff_jax.evaluation.physiology import interval_errors, summarize
from sediff_jax.evaluation.rhythm import detectors, rhythm_table
from sediff_jax.evaluation.signal import limb_lead_residual_mv, paired_mae_mv, paired_nrmse
from sediff_jax.generation import PromptError, make_prompt
from sediff_jax.generation.rhythm import RhythmError, rhythm_from_peaks
from sediff_jax.signal.measurement import measure_batch

INTERVALS = ("pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "qtc_fridericia_ms", "qrs_axis_deg")


@dataclasses.dataclass(frozen=True)
class RealPairs:
    """record_ids: (n,).  ecg: (n, time, 12) float32 mV.  fs: Hz.  prompts: the conditions of each record
    (`sediff_jax.generation.Prompt`).  skipped: record id -> why it could not be used.  superclasses: each
    record's diagnostic superclasses (PTB-XL), else empty tuples.  codes: each record's statement codes."""

    record_ids: list[str]
    ecg: np.ndarray
    fs: float
    prompts: list
    skipped: dict[str, str]
    superclasses: list[tuple[str, ...]] = dataclasses.field(default_factory=list)
    labels_changed: list[bool] = dataclasses.field(default_factory=list)
    r_peaks: list[np.ndarray] = dataclasses.field(default_factory=list)  # samples at fs, per record
    codes: list[tuple[str, ...]] = dataclasses.field(default_factory=list)

    @property
    def labelled(self) -> np.ndarray:
        """(n,) bool: the records whose labels a label-based evaluation may use (not `labels_changed`)."""
        return ~np.array(self.labels_changed or [False] * len(self.record_ids), bool)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def requested_hr_bpm(self) -> np.ndarray:
        """(n,) float64 heart rate each record's prompt asks for, bpm; NaN where it gives none."""
        return np.array([np.nan if p.hr is None else p.hr for p in self.prompts], np.float64)

    def take(self, indices) -> "RealPairs":
        """The records at `indices` (in that order), with everything that belongs to them."""
        idx = [int(i) for i in indices]

        def pick(values: list) -> list:
            return [values[i] for i in idx] if values else values

        return dataclasses.replace(self, record_ids=pick(self.record_ids), ecg=self.ecg[idx],
                                   prompts=pick(self.prompts), superclasses=pick(self.superclasses),
                                   labels_changed=pick(self.labels_changed), r_peaks=pick(self.r_peaks),
                                   codes=pick(self.codes))

    def rhythms(self, duration_s: float) -> list:
        """Each record's own beat timing as a `generation.RhythmPlan` (None where it has fewer than 2 usable
        beats or RR intervals out of range: the generator then plans one from the prompt)."""
        plans = []
        for record_id, peaks in zip(self.record_ids, self.r_peaks):
            try:
                plans.append(rhythm_from_peaks(peaks, self.fs, duration_s, f"record:{record_id}", record_id))
            except RhythmError:
                plans.append(None)
        return plans


def real_pairs(entries: Sequence, canonical, split: str, limit: int | None = None) -> RealPairs:
    """The records of `split` (in dataset order, the first `limit`), canonicalised, with their prompts.

    entries: `RecordEntry`s (`sediff_jax.data.prepare.read_entries`).  canonical: `CanonicalConfig`."""

    chosen = [e for e in entries if e.split == split]
    if not chosen:
        raise ValueError(f"no records in split {split!r} (splits present: {sorted({e.split for e in entries})})")
    ids, ecgs, prompts, skipped, superclasses, changed, peaks, codes = [], [], [], {}, [], [], [], []
    for entry in chosen:
        if limit is not None and len(ids) >= limit:
            break
        _, record = load_and_canonicalize(entry, canonical)
        if isinstance(record, Exception):
            skipped[entry.record_id] = str(record)
            continue
        try:
            prompt = make_prompt(entry.text, age=None if math.isnan(entry.age) else entry.age,
                                 sex=entry.sex if entry.sex in ("male", "female") else None,
                                 hr=record.hr_bpm if math.isfinite(record.hr_bpm) else None,
                                 where=f"{entry.record_id}: ")
        except PromptError as e:
            skipped[entry.record_id] = str(e)
            continue
        ids.append(entry.record_id)
        superclasses.append(tuple(entry.superclasses))
        codes.append(tuple(entry.codes))
        changed.append(bool(entry.labels_changed))
        peaks.append(np.asarray(record.r_peaks, np.int64))
        ecgs.append(record.ecg)
        prompts.append(prompt)
    if not ids:
        raise ValueError(f"none of the {len(chosen)} records of split {split!r} could be used: "
                         f"{next(iter(skipped.values()), '')}")
    return RealPairs(ids, np.stack(ecgs).astype(np.float32), float(canonical.fs), prompts, skipped, superclasses,
                     changed, peaks, codes)


def paired_per_record(generated: np.ndarray, real: np.ndarray, fs: float,
                      requested_hr: Sequence[float | None], real_peaks: Sequence[np.ndarray] | None = None
                      ) -> dict[str, Any]:
    """The paired metrics of each row, before they are summarised (`paired_metrics`), e.g. to compare two models
    record by record (`paired_differences`). Each ECG is measured once (`signal.measure`): our R peaks of a
    generated ECG give its heart rate and place its median beat; a real record's are `real_peaks` where given
    (`RealPairs.peaks`), else detected.

    generated, real: (n, time, 12) mV, row i generated from record i's conditions.  requested_hr: bpm per row.
    Returns (n,) float64 arrays "hr_bpm" (measured), "mae_mv", "nrmse", "hr_error_bpm", "hr_error_rel",
    "hr_error_<detector>_bpm" (XQRS; neurokit2 when installed: `evaluation.rhythm`), "rr_cv_xqrs",
    "limb_residual_mv" (generated), "limb_residual_real_mv" (NaN where unmeasurable), and "intervals_generated",
    "intervals_real": per row the `Delineation.intervals()` dict, empty where delineation failed, and
    "r_peaks_generated": per row our R peaks of the generated ECG (samples)."""
    requested = np.array([np.nan if h is None else h for h in requested_hr], np.float64)
    ours, theirs = measure_batch(generated, fs), measure_batch(real, fs, real_peaks)
    measured = np.array([m.hr_bpm for m in ours], np.float64)
    hr_error = np.abs(measured - requested)
    independent = rhythm_table(generated, fs, [name for name in detectors()])
    return {
        "hr_bpm": measured,
        "mae_mv": np.asarray(paired_mae_mv(generated, real), np.float64),
        "nrmse": np.asarray(paired_nrmse(generated, real), np.float64),
        "hr_error_bpm": hr_error,
        "hr_error_rel": hr_error / requested,
        **{f"hr_error_{name}_bpm": np.abs(independent[f"{name}_hr_bpm"] - requested) for name in detectors()},
        "rr_cv_xqrs": independent["xqrs_rr_cv"],
        "limb_residual_mv": np.asarray(limb_lead_residual_mv(generated), np.float64),
        "limb_residual_real_mv": np.asarray(limb_lead_residual_mv(real), np.float64),
        "intervals_generated": [m.intervals for m in ours],
        "intervals_real": [m.intervals for m in theirs],
        "r_peaks_generated": [m.r_peaks for m in ours],
    }


def paired_metrics(generated: np.ndarray, real: np.ndarray, fs: float,
                   requested_hr: Sequence[float | None], per_record: dict[str, Any] | None = None,
                   real_peaks: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Summaries (median, mean, sem, n) of the paired metrics.

    generated, real: (n, time, 12) mV, row i generated from record i's conditions.  requested_hr: bpm per row.
    per_record: `paired_per_record` of the same arguments when already computed.  real_peaks: as there.
    Returns {"mae_mv", "nrmse", "hr_error_bpm", "hr_error_rel", "hr_error_<detector>_bpm", "rr_cv_xqrs",
    "limb_residual_mv", "limb_residual_real_mv", "intervals": {name: |generated - real| summary},
    "unmeasurable_hr": count, "undelineated": count}."""
    rows = per_record if per_record is not None else paired_per_record(generated, real, fs, requested_hr, real_peaks)
    gen_intervals, real_intervals = rows["intervals_generated"], rows["intervals_real"]
    summarised = [key for key in rows
                  if key not in ("hr_bpm", "r_peaks_generated") and not key.startswith("intervals_")]
    return {
        "n": int(len(generated)),
        **{key: summarize(rows[key]) for key in summarised},
        "unmeasurable_hr": int(np.sum(~np.isfinite(rows["hr_bpm"]))),
        "intervals": interval_errors(gen_intervals, real_intervals, INTERVALS),
        "undelineated": int(sum(not g for g in gen_intervals)),
    }


def paired_differences(variant: dict[str, Any], baseline: dict[str, Any],
                       keys: Sequence[str] = ("mae_mv", "hr_error_bpm", "hr_error_xqrs_bpm", "limb_residual_mv")
                       ) -> dict[str, dict[str, float]]:
    """Record by record, variant minus baseline (`paired_per_record` of two models on the same records): per key
    the `summarize` of the differences where both are finite. Its standard error is the paired one, far smaller
    than either model's own when the records' difficulty dominates the spread."""
    out = {}
    for key in keys:
        if key in variant and key in baseline:
            a, b = np.asarray(variant[key], np.float64), np.asarray(baseline[key], np.float64)
            if a.shape != b.shape:
                raise ValueError(f"{key}: {a.shape} and {b.shape} are not the same records")
            out[key] = summarize(a - b)
    return out


def markdown_table(metrics: dict[str, Any]) -> str:
    """The paired metrics as a Markdown table (metric | median | mean | n)."""
    rows = [("MAE (mV)", metrics["mae_mv"]), ("NRMSE", metrics["nrmse"]),
            ("HR error (bpm)", metrics["hr_error_bpm"]), ("HR error (relative)", metrics["hr_error_rel"])]
    rows += [(f"HR error, {name} (bpm)", metrics[f"hr_error_{name}_bpm"]) for name in ("xqrs", "neurokit2")
             if f"hr_error_{name}_bpm" in metrics]
    if "rr_cv_xqrs" in metrics:
        rows.append(("RR CV, generated (XQRS)", metrics["rr_cv_xqrs"]))
    rows += [(f"{label} error ({'deg' if name.endswith('deg') else 'ms'})", metrics["intervals"][name])
             for name, label in zip(INTERVALS, ("PR", "QRS", "QT", "QTc Bazett", "QTc Fridericia", "QRS axis"))]
    rows += [("limb-lead residual, generated (mV)", metrics["limb_residual_mv"]),
             ("limb-lead residual, real (mV)", metrics["limb_residual_real_mv"])]
    lines = ["| metric | median | mean | n |", "|---|---:|---:|---:|"]
    for label, s in rows:
        lines.append(f"| {label} | {s['median']:.4g} | {s['mean']:.4g} | {s['n']} |")
    return "\n".join(lines)
