"""Patient profiles for experience retrieval: code sets per view, demographics, measured ECG features.

A profile describes one ECG record and its clinical context. Its views are named code sets: for MIMIC-IV the
paper's three (diagnosis, medication, procedure) of the hospital stay the ECG belongs to; for PTB-XL and LUDB
the statement groups (diagnostic, form, rhythm). Features are interval measurements (`FEATURE_NAMES`): from the
signal (`sediff_jax.signal.delineation`) or from the dataset's machine measurements. Lead amplitudes (optional,
NaN where unmeasured) are each lead's robust peak-to-peak amplitude (`signal.lead_amplitudes`) at a stated sampling
rate: generation can draw a retrieved patient's amplitudes (`generation.amplitudes`).

`ProfileCorpus` holds many profiles column-wise (NumPy arrays, codes as CSR per view) so 800k profiles fit in a
few hundred MB and load in seconds; `Profile` is the one-record view of it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from sediff_jax.data.sources import SEX_CODES, SPLITS
from sediff_jax.leads import NUM_LEADS
from sediff_jax.io.atomic import atomic_path
from sediff_jax.errors import SediffError

FORMAT = "sediff_jax.experience.profiles"
FORMAT_VERSION = 2  # 2 added lead amplitudes; version-1 files read with none measured
FEATURE_NAMES = ("hr_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "qrs_axis_deg")
STATEMENT_VIEWS = ("diagnostic", "form", "rhythm")  # PTB-XL and LUDB
HOSPITAL_VIEWS = ("diagnosis", "medication", "procedure")  # MIMIC-IV (the paper's tri-view profile)
_SEX_NAMES = {code: name for name, code in SEX_CODES.items()}


class ProfileError(SediffError, ValueError):
    """A profile corpus file is missing, truncated or not a corpus (the message names the file)."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """One record's profile. codes: view -> sorted distinct codes. features: FEATURE_NAMES -> float (NaN if
    unmeasured). age: years or NaN; sex: 'male', 'female' or 'unknown'."""

    record_id: str
    patient_id: str = ""
    split: str = "train"
    age: float = math.nan
    sex: str = "unknown"
    codes: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    features: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CodeSets:
    """Distinct codes of n profiles in one view, CSR: row i holds vocab[indices[indptr[i]:indptr[i + 1]]],
    sorted by vocabulary index."""

    indptr: np.ndarray  # (n + 1,) int64
    indices: np.ndarray  # (nnz,) int32
    vocab: tuple[str, ...]

    def row(self, i: int) -> tuple[str, ...]:
        return tuple(self.vocab[j] for j in self.indices[self.indptr[i]:self.indptr[i + 1]])

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr).astype(np.int32)

    @classmethod
    def from_rows(cls, rows: Sequence[Iterable[str]]) -> "CodeSets":
        vocab = sorted({c for row in rows for c in row})
        index = {c: i for i, c in enumerate(vocab)}
        ids = [sorted({index[c] for c in row}) for row in rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        indptr[1:] = np.cumsum([len(r) for r in ids])
        indices = np.fromiter((j for r in ids for j in r), np.int32, count=int(indptr[-1]))
        return cls(indptr, indices, tuple(vocab))

    def take(self, rows: np.ndarray) -> "CodeSets":
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        indptr = np.zeros(len(rows) + 1, np.int64)
        indptr[1:] = np.cumsum(stops - starts)
        indices = (np.concatenate([self.indices[a:b] for a, b in zip(starts, stops)]) if len(rows)
                   else np.zeros(0, np.int32))
        return CodeSets(indptr, indices.astype(np.int32), self.vocab)


@dataclasses.dataclass
class ProfileCorpus:
    """n profiles, column-wise. record_ids, patient_ids, splits: (n,) str.  age: (n,) float32 years (NaN
    unknown).  sex: (n,) int8 (SEX_CODES).  features: (n, len(FEATURE_NAMES)) float32.  codes: view ->
    CodeSets.  descriptions: code -> English text for the codes that have one (the distiller writes these).
    source: what it was built from (dataset and path).  amplitudes: (n, 12) float32 mV, each lead's robust
    peak-to-peak amplitude in `LEAD_NAMES` order, NaN rows unmeasured (None: none measured).  amplitude_fs: the
    sampling rate (Hz) they were measured at (NaN: none)."""

    record_ids: np.ndarray
    patient_ids: np.ndarray
    splits: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    features: np.ndarray
    codes: dict[str, CodeSets]
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)
    source: str = ""
    amplitudes: np.ndarray | None = None
    amplitude_fs: float = math.nan

    def __post_init__(self):
        n = len(self.record_ids)
        if self.amplitudes is None:
            self.amplitudes = np.full((n, NUM_LEADS), np.nan, np.float32)
        self.amplitudes = np.asarray(self.amplitudes, np.float32)
        if self.amplitudes.shape != (n, NUM_LEADS):
            raise ValueError(f"amplitudes must be ({n}, {NUM_LEADS}), got {self.amplitudes.shape}")
        measured = self.amplitudes[np.isfinite(self.amplitudes)]
        if np.any(measured <= 0) or np.any(np.isinf(self.amplitudes)):
            raise ValueError("lead amplitudes must be > 0 mV (NaN: unmeasured)")
        if len(measured) and not self.amplitude_fs > 0:
            raise ValueError(f"amplitudes are measured but amplitude_fs={self.amplitude_fs} (Hz) is not > 0")
        for name in ("patient_ids", "splits", "age", "sex"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, record_ids {n}")
        if self.features.shape != (n, len(FEATURE_NAMES)):
            raise ValueError(f"features must be ({n}, {len(FEATURE_NAMES)}), got {self.features.shape}")
        for view, sets in self.codes.items():
            if len(sets.indptr) != n + 1:
                raise ValueError(f"view {view!r} has {len(sets.indptr) - 1} rows, record_ids {n}")
        unknown = sorted(set(np.unique(self.splits).tolist()) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; expected {SPLITS}")

    def __len__(self) -> int:
        return len(self.record_ids)

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.codes)

    def describe(self, code: str) -> str:
        return self.descriptions.get(code, code)

    def profile(self, i: int) -> Profile:
        return Profile(
            record_id=str(self.record_ids[i]), patient_id=str(self.patient_ids[i]), split=str(self.splits[i]),
            age=float(self.age[i]), sex=_SEX_NAMES[int(self.sex[i])],
            codes={v: s.row(i) for v, s in self.codes.items()},
            features=dict(zip(FEATURE_NAMES, map(float, self.features[i]))))

    def take(self, rows: np.ndarray) -> "ProfileCorpus":
        rows = np.asarray(rows, np.int64)
        return ProfileCorpus(self.record_ids[rows], self.patient_ids[rows], self.splits[rows], self.age[rows],
                             self.sex[rows], self.features[rows], {v: s.take(rows) for v, s in self.codes.items()},
                             self.descriptions, self.source, self.amplitudes[rows], self.amplitude_fs)

    @property
    def has_amplitudes(self) -> bool:
        """Whether any record's lead amplitudes were measured."""
        return bool(np.isfinite(self.amplitudes).all(axis=1).any())

    def has_amplitudes_at(self, fs: float) -> bool:
        """Whether lead amplitudes were measured, at `fs` Hz (what a model generating at `fs` can draw)."""
        return self.has_amplitudes and self.amplitude_fs == float(fs)

    def with_amplitudes(self, amplitudes: Mapping[str, np.ndarray], fs: float) -> "ProfileCorpus":
        """This corpus with lead amplitudes: record_id -> (12,) mV measured at `fs` Hz (records not in the
        mapping stay NaN; ids not in the corpus are an error)."""
        rows = self.row_of()
        unknown = [r for r in amplitudes if r not in rows]
        if unknown:
            raise ValueError(f"amplitudes for {len(unknown)} record(s) not in the corpus, e.g. {unknown[0]!r}")
        table = np.full((len(self), NUM_LEADS), np.nan, np.float32)
        for record_id, values in amplitudes.items():
            table[rows[record_id]] = np.asarray(values, np.float32)
        return dataclasses.replace(self, amplitudes=table, amplitude_fs=float(fs))

    def amplitudes_of(self, record_ids: Sequence[str], rows: Mapping[str, int] | None = None) -> np.ndarray:
        """(n, 12) float32 mV: each record's lead amplitudes, NaN for a record not in the corpus or not measured.
        rows: `row_of()`, when the caller keeps it (it is rebuilt otherwise)."""
        rows = self.row_of() if rows is None else rows
        found = np.array([rows.get(str(r), -1) for r in record_ids], np.int64)
        out = np.full((len(found), NUM_LEADS), np.nan, np.float32)
        out[found >= 0] = self.amplitudes[found[found >= 0]]
        return out

    def row_of(self) -> dict[str, int]:
        """record_id -> row."""
        return {r: i for i, r in enumerate(self.record_ids.tolist())}

    @classmethod
    def from_profiles(cls, profiles: Sequence[Profile], views: Sequence[str],
                      descriptions: Mapping[str, str] | None = None, source: str = "") -> "ProfileCorpus":
        """A corpus of `profiles` in record_id order (duplicate record ids are an error)."""
        profiles = sorted(profiles, key=lambda p: p.record_id)
        ids = [p.record_id for p in profiles]
        if len(set(ids)) != len(ids):
            dup = next(r for r, s in zip(ids[1:], ids[:-1]) if r == s)
            raise ValueError(f"duplicate record id {dup!r} in the profiles")
        for p in profiles:
            extra = set(p.codes) - set(views)
            if extra:
                raise ValueError(f"{p.record_id}: view(s) {sorted(extra)} not in {list(views)}")
            if p.sex not in SEX_CODES:
                raise ValueError(f"{p.record_id}: sex {p.sex!r}; expected one of {list(SEX_CODES)}")
        return cls(
            record_ids=np.array(ids, dtype=str), patient_ids=np.array([p.patient_id for p in profiles], dtype=str),
            splits=np.array([p.split for p in profiles], dtype=str),
            age=np.array([p.age for p in profiles], np.float32),
            sex=np.array([SEX_CODES[p.sex] for p in profiles], np.int8),
            features=np.array([[p.features.get(f, math.nan) for f in FEATURE_NAMES] for p in profiles],
                              np.float32).reshape(len(profiles), len(FEATURE_NAMES)),
            codes={v: CodeSets.from_rows([p.codes.get(v, ()) for p in profiles]) for v in views},
            descriptions=dict(descriptions or {}), source=source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the corpus as one NPZ (no pickles), atomically."""
        arrays = {
            "format": np.array(FORMAT), "format_version": np.int32(FORMAT_VERSION), "source": np.array(self.source),
            "record_ids": self.record_ids, "patient_ids": self.patient_ids, "splits": self.splits,
            "age": self.age, "sex": self.sex, "features": self.features, "feature_names": np.array(FEATURE_NAMES),
            "views": np.array(self.views, dtype=str),
            # float16 keeps 0.1 % of an amplitude (11 bits) in half the space
            "amplitudes": self.amplitudes.astype(np.float16), "amplitude_fs": np.float64(self.amplitude_fs),
            "description_codes": np.array(list(self.descriptions), dtype=str),
            "description_texts": np.array(list(self.descriptions.values()), dtype=str),
        }
        for view, sets in self.codes.items():
            arrays[f"{view}.indptr"], arrays[f"{view}.indices"] = sets.indptr, sets.indices
            arrays[f"{view}.vocab"] = np.array(sets.vocab, dtype=str)
        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)  # the fixed-width str arrays are mostly padding
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProfileCorpus":
        """Read a corpus written by `save`; ProfileError names the file and what is wrong."""
        path = Path(path)
        if not path.exists():
            raise ProfileError(f"{path}: profile corpus not found (build one with experiments/build_experience.py)")
        try:
            with np.load(path, allow_pickle=False) as f:
                if "format" not in f or str(f["format"]) != FORMAT:
                    raise ProfileError(f"{path}: not a profile corpus (no '{FORMAT}' format marker)")
                if int(f["format_version"]) > FORMAT_VERSION:
                    raise ProfileError(f"{path}: corpus format version {int(f['format_version'])} is newer than "
                                       f"this sediff_jax reads ({FORMAT_VERSION})")
                if tuple(f["feature_names"].tolist()) != FEATURE_NAMES:
                    raise ProfileError(f"{path}: features {f['feature_names'].tolist()}, expected {FEATURE_NAMES}")
                codes = {str(v): CodeSets(f[f"{v}.indptr"], f[f"{v}.indices"], tuple(f[f"{v}.vocab"].tolist()))
                         for v in f["views"].tolist()}
                descriptions = dict(zip(f["description_codes"].tolist(), f["description_texts"].tolist()))
                amplitudes = f["amplitudes"].astype(np.float32) if "amplitudes" in f else None
                amplitude_fs = float(f["amplitude_fs"]) if "amplitude_fs" in f else math.nan
                return cls(f["record_ids"], f["patient_ids"], f["splits"], f["age"], f["sex"], f["features"],
                           codes, descriptions, str(f["source"]), amplitudes, amplitude_fs)
        except ProfileError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ProfileError(f"{path}: unreadable profile corpus ({type(e).__name__}: {e})") from None


def corpus_summary(corpus: ProfileCorpus) -> dict:
    """Counts for manifests and logs: profiles per split, patients, codes and vocabulary per view."""
    return {
        "profiles": len(corpus),
        "splits": {s: int(np.sum(corpus.splits == s)) for s in SPLITS},
        "patients": int(len(np.unique(corpus.patient_ids))),
        "views": {v: {"vocabulary": len(s.vocab), "mean_codes": float(np.mean(s.sizes())) if len(corpus) else 0.0,
                      "empty": int(np.sum(s.sizes() == 0))} for v, s in corpus.codes.items()},
        "features_measured": {f: int(np.sum(np.isfinite(corpus.features[:, k])))
                              for k, f in enumerate(FEATURE_NAMES)},
        "amplitudes_measured": int(np.isfinite(corpus.amplitudes).all(axis=1).sum()),
        **({"amplitude_fs": corpus.amplitude_fs} if corpus.has_amplitudes else {}),
        "source": corpus.source,
    }

