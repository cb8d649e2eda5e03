"""Weighted-Jaccard top-k retrieval over a profile corpus (SE-Diff's experience neighbours).

    similarity(q, x) = sum_v lambda_v * |Q_v & X_v| / |Q_v | X_v|     (a view where both sets are empty adds 0)
                       * (1 + w_age * exp(-|age_q - age_x| / s_age) + w_sex * [sex_q == sex_x])

The patient factor (`age_weight`, `age_scale_years`, `sex_weight`; 0 by default, so an index built before it
ranks as it did) re-ranks profiles that share codes with the query: a 70-year-old man's LBBB prompt prefers men of
about 70 among equally similar profiles, and a profile that shares no code still scores 0. An unknown age or sex
(either side) adds nothing.

The index keeps, per view, an inverted list (code -> corpus rows, ascending) and each row's set size. A query
touches only the rows that share a code with it: the intersection counts are one `np.bincount` over the
concatenated posting lists, so a query costs O(corpus + total posting length), with no sort of the corpus.

Leak-proof by construction: the index holds only the profiles of `RetrievalConfig.corpus_splits` (default: the
training split), and a query never returns a record of its own patient. Ties are broken by corpus order
(ascending record id), so results are deterministic. With `distinct_patients`, the k neighbours are k
different patients (MIMIC-IV has many ECGs per stay; without this the top-k is one patient's ECGs).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from sediff_jax.data.sources import SEX_CODES
from sediff_jax.experience.profiles import Profile, ProfileCorpus


# The RetrievalConfig fields of the patient factor (a model's experience spec records them; absent: 0).
PATIENT_FACTOR_KEYS = ("age_weight", "age_scale_years", "sex_weight")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """weights: view -> lambda (views absent from the corpus are an error; views not listed weigh 0).
    k: neighbours per query.  corpus_splits: the splits the index may hold.  distinct_patients: one record
    per patient among the neighbours.  min_similarity: neighbours must score above this (0: share a code).
    age_weight, age_scale_years, sex_weight: the patient factor of the module docstring (0: codes alone)."""

    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    k: int = 5
    corpus_splits: tuple[str, ...] = ("train",)
    distinct_patients: bool = True
    min_similarity: float = 0.0
    age_weight: float = 0.0
    age_scale_years: float = 10.0
    sex_weight: float = 0.0

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        bad = {v: w for v, w in self.weights.items() if not (w >= 0)}
        if bad:
            raise ValueError(f"view weights must be >= 0, got {bad}")
        if not (self.age_weight >= 0 and self.sex_weight >= 0 and self.age_scale_years > 0):
            raise ValueError(f"age_weight and sex_weight must be >= 0 and age_scale_years > 0, got "
                             f"{self.age_weight}, {self.sex_weight}, {self.age_scale_years}")


def default_weights(views: Sequence[str]) -> dict[str, float]:
    """Equal lambdas summing to 1."""
    return {v: 1.0 / len(views) for v in views}


@dataclasses.dataclass(frozen=True)
class Neighbours:
    """rows: (m,) int64 corpus rows, best first (m <= k).  scores: (m,) float64 similarities."""

    rows: np.ndarray
    scores: np.ndarray


class ExperienceIndex:
    """Inverted index of a corpus for weighted-Jaccard top-k queries."""

    def __init__(self, corpus: ProfileCorpus, config: RetrievalConfig = RetrievalConfig()):
        weights = dict(config.weights) or default_weights(corpus.views)
        unknown = sorted(set(weights) - set(corpus.views))
        if unknown:
            raise ValueError(f"weights for view(s) {unknown} the corpus does not have (it has {list(corpus.views)})")
        keep = np.isin(corpus.splits, np.array(config.corpus_splits, dtype=str))
        self.corpus = corpus.take(np.flatnonzero(keep)) if not keep.all() else corpus
        self.config = dataclasses.replace(config, weights=weights)
        n = len(self.corpus)
        self._views = []
        for view, weight in weights.items():
            if weight == 0:
                continue
            sets = self.corpus.codes[view]
            order = np.argsort(sets.indices, kind="stable")  # rows ascending within each code
            rows = np.repeat(np.arange(n, dtype=np.intp), np.diff(sets.indptr))[order]
            postings_ptr = np.zeros(len(sets.vocab) + 1, np.int64)
            postings_ptr[1:] = np.cumsum(np.bincount(sets.indices, minlength=len(sets.vocab)))
            vocab = {c: i for i, c in enumerate(sets.vocab)}
            self._views.append((view, float(weight), vocab, postings_ptr, rows, sets.sizes()))
        patients, self._patient_of_row = np.unique(self.corpus.patient_ids, return_inverse=True)
        self._patient_code = {p: i for i, p in enumerate(patients.tolist())}
        self._row_of: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.corpus)

    def similarities(self, codes: Mapping[str, Sequence[str]]) -> np.ndarray:
        """(len(corpus),) float64 weighted Jaccard of the query `codes` (view -> codes) with every profile."""
        n = len(self.corpus)
        score = np.zeros(n, np.float64)
        for view, weight, vocab, ptr, rows, sizes in self._views:
            query = set(codes.get(view, ()))
            ids = [vocab[c] for c in query if c in vocab]
            if not ids:
                continue
            hits = np.concatenate([rows[ptr[i]:ptr[i + 1]] for i in ids])
            inter = np.bincount(hits, minlength=n).astype(np.float64)
            # rows without a shared code add weight * 0 / (|Q| + |X|) = 0, so the whole corpus can be updated
            score += weight * inter / (len(query) + sizes - inter)
        return score

    def patient_factor(self, age: float | None = None, sex: int | None = None) -> np.ndarray | float:
        """(len(corpus),) factor >= 1 each profile's code similarity is multiplied by, for a query patient of
        `age` (years; None or NaN: unknown) and `sex` (SEX_CODES: 0 male, 1 female; None or -1: unknown); 1.0
        when the config gives age and sex no weight or the patient is unknown."""
        config, factor = self.config, 1.0
        if config.age_weight and age is not None and np.isfinite(age):
            near = np.exp(-np.abs(self.corpus.age.astype(np.float64) - float(age)) / config.age_scale_years)
            factor = factor + config.age_weight * np.nan_to_num(near, nan=0.0)
        if config.sex_weight and sex is not None and sex >= 0:
            factor = factor + config.sex_weight * (self.corpus.sex == sex)
        return factor

    def query(self, codes: Mapping[str, Sequence[str]], patient_id: str | None = None,
              exclude_record: str | None = None, k: int | None = None, age: float | None = None,
              sex: int | None = None) -> Neighbours:
        """The k most similar profiles (fewer if fewer score above `min_similarity`), never of `patient_id`.
        age (years), sex (SEX_CODES): the query patient, for the patient factor (None: unknown).

        Ordered by similarity, then corpus order; with `distinct_patients` only each patient's best record."""
        k = self.config.k if k is None else k
        score = self.similarities(codes) * self.patient_factor(age, sex)
        if patient_id is not None and patient_id in self._patient_code:
            score[self._patient_of_row == self._patient_code[patient_id]] = -np.inf
        if exclude_record is not None:
            if self._row_of is None:
                self._row_of = self.corpus.row_of()
            if exclude_record in self._row_of:
                score[self._row_of[exclude_record]] = -np.inf
        floor = np.nextafter(self.config.min_similarity, np.inf)  # neighbours score at least this
        want = k * 8 if self.config.distinct_patients else k
        while True:
            if want < len(score):
                part = np.argpartition(-score, want - 1)[:want]
                lowest = score[part].min()
                exhausted = lowest < floor
                # everything tied with the cut-off score stays in, so corpus order decides ties
                chosen = np.flatnonzero(score >= max(lowest, floor))
            else:
                chosen, exhausted = np.flatnonzero(score >= floor), True
            chosen = chosen[np.lexsort((chosen, -score[chosen]))]
            if self.config.distinct_patients:
                _, first = np.unique(self._patient_of_row[chosen], return_index=True)
                picked = chosen[np.sort(first)]
            else:
                picked = chosen
            if len(picked) >= k or exhausted:
                picked = picked[:k]
                return Neighbours(picked.astype(np.int64), score[picked])
            want *= 4

    def query_profile(self, profile: Profile, k: int | None = None) -> Neighbours:
        """Neighbours of a profile: its own patient's records (and the profile itself) are excluded."""
        return self.query(profile.codes, patient_id=profile.patient_id or None,
                          exclude_record=profile.record_id or None, k=k, age=profile.age,
                          sex=SEX_CODES.get(profile.sex, -1))
