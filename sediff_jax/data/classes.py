"""Diagnostic classes of a record: SE-Diff's 20-class list from report text, and PTB-XL's statements.

SE-Diff conditions its simulator losses on a diagnostic class (sinus rhythm, bradycardia, ..., infarct). Its
release maps MIMIC-IV-ECG machine reports to classes with an unpublished table; here the mapping is a set of
keyword rules on the English report text (`RecordEntry.text`), so it applies to MIMIC, PTB-XL (whose text we
build from SCP statements in English) and generated prompts alike. A record may have several classes.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

# SE-Diff's class list, in order; names are stable identifiers (used as prior keys: 'sediff/<name>').
SEDIFF_CLASSES: tuple[str, ...] = (
    "sinus_rhythm", "bradycardia", "tachycardia", "atrial_fibrillation", "atrial_flutter",
    "supraventricular_tachycardia", "ventricular_tachycardia", "premature_atrial_contraction",
    "premature_ventricular_contraction", "left_bundle_branch_block", "right_bundle_branch_block",
    "left_ventricular_hypertrophy", "right_ventricular_hypertrophy", "wolff_parkinson_white", "prolonged_qt",
    "st_elevation", "st_depression", "t_inversion", "ischemia", "infarct",
)

_RULES: dict[str, str] = {
    "sinus_rhythm": r"\bsinus (rhythm|bradycardia|tachycardia|arrhythmia)\b",
    "bradycardia": r"bradycardi",
    "tachycardia": r"(?<!ventricular )(?<!supraventricular )(?<!junctional )(?<!atrial )tachycardi",
    "atrial_fibrillation": r"atrial fibrillation|\bafib\b",
    "atrial_flutter": r"atrial flutter|\bflutter\b",
    "supraventricular_tachycardia": r"supraventricular tachycardi|\bsvt\b|junctional tachycardi|atrial tachycardi|\bpsvt\b",
    "ventricular_tachycardia": r"(?<!supra)ventricular tachycardi|\bv-?tach\b",
    "premature_atrial_contraction": r"(premature|ectopic) atrial|atrial (premature|extrasystole|ectopic)|"
                                    r"supraventricular (premature|extrasystole)|\bpacs?\b",
    "premature_ventricular_contraction": r"(premature|ectopic) ventricular|ventricular (premature|extrasystole|"
                                         r"ectopic|bigeminy|trigeminy)|\bpvcs?\b",
    "left_bundle_branch_block": r"left bundle branch block|\blbbb\b",
    "right_bundle_branch_block": r"right bundle branch block|\brbbb\b",
    "left_ventricular_hypertrophy": r"left ventricular hypertrophy|\blvh\b",
    "right_ventricular_hypertrophy": r"right ventricular hypertrophy|\brvh\b",
    "wolff_parkinson_white": r"wolff|parkinson-white|pre-?excitation|\bwpw\b",
    "prolonged_qt": r"(prolonged|long) qt|qt(c)? (interval )?prolong",
    "st_elevation": r"st[- ](segment )?elevation|\bstemi\b",
    "st_depression": r"st[- ](segment )?depression",
    "t_inversion": r"t[- ]waves? inver|inverted t[- ]wave|negative t[- ]wave",
    "ischemia": r"isch(a)?emi",
    "infarct": r"infarct",
}
_COMPILED = {name: re.compile(pattern) for name, pattern in _RULES.items()}
assert tuple(_RULES) == SEDIFF_CLASSES


def sediff_classes(text: str) -> tuple[str, ...]:
    """SE-Diff classes named by an English report, in `SEDIFF_CLASSES` order (possibly none)."""
    lowered = " ".join(text.lower().split())
    return tuple(name for name in SEDIFF_CLASSES if _COMPILED[name].search(lowered))


def record_classes(entry) -> tuple[str, ...]:
    """Every class label of a `RecordEntry`, namespaced: 'sediff/<class>', 'superclass/<NORM|MI|...>' and
    'statement/<SCP code>' (PTB-XL), so one prior file can hold all three vocabularies."""
    labels = [f"sediff/{c}" for c in sediff_classes(entry.text)]
    labels += [f"superclass/{c}" for c in entry.superclasses]
    if entry.superclasses or entry.record_id.startswith("ptbxl/"):
        labels += [f"statement/{c}" for c in entry.codes]
    return tuple(dict.fromkeys(labels))


def capped_by_class(labels: Sequence[Sequence[str]], max_per_class: int, seed: int = 0,
                    ignore_prefixes: tuple[str, ...] = ("statement/",)) -> np.ndarray:
    """Indices (sorted) of a subset of records with at most ~`max_per_class` records per class label.

    Records are visited in a seeded random order and one is kept while any of its labels (those not starting
    with `ignore_prefixes`; a record without any counts as class 'none') has fewer than `max_per_class` kept
    records. Rare classes keep every record; a common class can exceed the cap only through records kept for a
    rarer class they also carry. labels: per record, e.g. `record_classes(entry)`."""
    if max_per_class < 1:
        raise ValueError(f"max_per_class={max_per_class} must be >= 1")
    counts: dict[str, int] = {}
    kept = []
    for i in np.random.default_rng(seed).permutation(len(labels)):
        names = [x for x in labels[i] if not x.startswith(ignore_prefixes)] or ["none"]
        if any(counts.get(name, 0) < max_per_class for name in names):
            kept.append(int(i))
            for name in names:
                counts[name] = counts.get(name, 0) + 1
    return np.sort(np.asarray(kept, np.int64))
