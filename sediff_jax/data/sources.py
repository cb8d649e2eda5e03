"""What every dataset layout reader returns: one `RecordEntry` per record, plus shared helpers.

A reader (`ptbxl.read_ptbxl`, `mimic.read_mimic`, `ludb.read_ludb`) parses a dataset's metadata files into
entries; the waveforms are read later, one record at a time, by `wfdb_reader.read_record`.
"""

from __future__ import annotations

import csv
import gzip
import dataclasses
import hashlib
import math
import os
from typing import Iterable, Iterator, Sequence

from sediff_jax.errors import SediffError

DATASETS = ("ptbxl", "mimic", "ludb", "synthetic")  # the layouts `data.prepare` reads
SPLITS = ("train", "validation", "test")
SEX_CODES = {"male": 0, "female": 1, "unknown": -1}
# Ages above this are reported as this (HIPAA-style top coding: PTB-XL writes 300, LUDB '>89').
MAX_REPORTED_AGE = 90.0
# Machine measurements carried by MIMIC-IV-ECG (NaN where a dataset has none): ms and degrees.
MEASUREMENT_NAMES = (
    "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis", "qrs_axis", "t_axis",
)


class LayoutError(SediffError, ValueError):
    """A dataset's metadata files do not match the published layout (missing file, column or value)."""


@dataclasses.dataclass(frozen=True)
class RecordEntry:
    """One record of a dataset, before its waveform is read.

    record_id: unique within the dataset (e.g. 'ptbxl/00001').  patient_id: for patient-disjoint splits and
    retrieval.  path: WFDB record path without extension.  fs: the sampling rate the layout promises, Hz.
    split: one of SPLITS.  age: years, NaN if unknown.  sex: 'male', 'female' or 'unknown'.
    text: English report.  original_text: the report as the dataset gives it (PTB-XL: often German).
    codes: statement codes.  superclasses: diagnostic superclasses (PTB-XL), else empty.
    measurements: dict of MEASUREMENT_NAMES -> float (ms / degrees) where the dataset has them.
    labels_changed: the dataset's own errata say its labels changed between versions (PTB-XL v1.0.1 -> v1.0.3:
    `labels_changed_in_v1.0.3.txt`); label-based evaluations leave it out.
    """

    record_id: str
    patient_id: str
    path: str
    fs: float
    split: str
    age: float = math.nan
    sex: str = "unknown"
    text: str = ""
    original_text: str = ""
    codes: tuple[str, ...] = ()
    superclasses: tuple[str, ...] = ()
    measurements: dict = dataclasses.field(default_factory=dict)
    labels_changed: bool = False


def iter_csv(path: str | os.PathLike, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """Rows of a CSV file (plain or .gz) as dicts, streamed; a missing file or required column is a LayoutError
    naming both."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LayoutError(f"{path}: file not found")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise LayoutError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(columns)})")
        yield from reader


def read_csv(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file (plain or .gz) as dicts; a missing file or required column is a LayoutError naming
    both."""
    return list(iter_csv(path, required))


def hashed_split(key: str, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "sediff") -> str:
    """A split chosen by a stable hash of `key` (e.g. a patient id): same key, same split, on any machine."""
    if len(fractions) != len(SPLITS) or not math.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for split, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return split
    return SPLITS[-1]


def parse_age(value: str | float | None, where: str = "") -> float:
    """Age in years from a metadata field; NaN if empty; top-coded ages ('>89', 300) become MAX_REPORTED_AGE.

    Raises LayoutError for a negative or non-numeric age."""
    if value is None:
        return math.nan
    text = str(value).strip()
    if not text or text.lower() in {"nan", "na", "n/a", "unknown", "none"}:
        return math.nan
    if text.startswith(">"):
        return MAX_REPORTED_AGE
    try:
        age = float(text)
    except ValueError:
        raise LayoutError(f"{where}: age {text!r} is not a number") from None
    if math.isnan(age):
        return math.nan
    if age < 0:
        raise LayoutError(f"{where}: impossible age {age:g}")
    return min(age, MAX_REPORTED_AGE)


def parse_sex(value: str | float | None, where: str = "") -> str:
    """'male' / 'female' / 'unknown' from the codes datasets use (PTB-XL 0/1, 'M'/'F', words)."""
    text = "" if value is None else str(value).strip().lower()
    if text in {"0", "0.0", "m", "male"}:
        return "male"
    if text in {"1", "1.0", "f", "female"}:
        return "female"
    if text in {"", "nan", "unknown", "u", "none"}:
        return "unknown"
    raise LayoutError(f"{where}: unknown sex code {value!r}")


def sentences_to_text(sentences: Iterable[str]) -> str:
    """Join report fragments into one English paragraph: each capitalised and ending in a period."""
    out = []
    for s in sentences:
        s = " ".join(str(s).split()).strip().rstrip(".")
        if s:
            out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)
