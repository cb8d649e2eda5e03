"""Host-side conditioning of a loader batch for stage 2: text tokens, experience tokens, prior class index and, for
an amplitude-conditioned denoiser, each record's lead amplitudes.

Text goes through a `TextCache` (each distinct report encoded once per run, persisted in the workdir). The
simulator terms need each record's class prior: the record's SE-Diff classes (from its English text, by
`sediff_jax.data.classes.sediff_classes`) are looked up in the prior, the most specific one present wins
(the last in SE-Diff's order, which lists rhythms before morphology), and records with none use the prior's
'all' class.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sediff_jax.data.classes import sediff_classes
from sediff_jax.text import TextCache

FALLBACK_CLASS = "all"


def prior_class_index(texts: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """(len(texts),) int32 index into `class_names` (a prior's, e.g. 'sediff/bradycardia', 'all')."""
    index = {name: i for i, name in enumerate(class_names)}
    if FALLBACK_CLASS not in index:
        raise ValueError(f"the prior has no {FALLBACK_CLASS!r} class (has {list(class_names)[:5]}...)")
    out = np.full(len(texts), index[FALLBACK_CLASS], np.int32)
    for k, text in enumerate(texts):
        for name in reversed(sediff_classes(text)):
            if f"sediff/{name}" in index:
                out[k] = index[f"sediff/{name}"]
                break
    return out


def experience_condition(reports: Sequence[str], cache: TextCache | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Experience tokens (b, Le, d) float32 and mask (b, Le) bool for `reports`; an empty report (no
    neighbours) and `cache=None` (experience off) give an all-masked segment, the "w/o experience" condition.
    Le is the cache's encoder length (1 when off)."""
    b = len(reports)
    if cache is None:
        return np.zeros((b, 1, dim), np.float32), np.zeros((b, 1), bool)
    length = cache.encoder.max_length
    tokens, mask = np.zeros((b, length, dim), np.float32), np.zeros((b, length), bool)
    rows = [i for i, r in enumerate(reports) if r.strip()]
    if rows:
        encoding = cache.lookup([reports[i] for i in rows])
        tokens[rows], mask[rows] = encoding.tokens, encoding.mask
    return tokens, mask


class ConditionBuilder:
    """Adds text_tokens (b, Lt, d) float32, text_mask (b, Lt) bool, experience_tokens (b, Le, d),
    experience_mask, class_index (b,) int32 to a loader batch (host NumPy), and with `amplitudes` (a
    `ProfileCorpus` with lead amplitudes) amplitudes (b, 12) float32 mV, each record's own by record_id (NaN for
    a record the corpus lacks).

    Experience: each record's report from `experience` (an `ExperienceTable`, by record_id), encoded through
    `experience_cache`; without them every record gets one masked-out experience token (the "w/o experience"
    ablation).
    """

    def __init__(self, text_cache: TextCache, class_names: Sequence[str], experience=None,
                 experience_cache: TextCache | None = None, amplitudes=None):
        if (experience is None) != (experience_cache is None):
            raise ValueError("experience and experience_cache go together")
        self.amplitudes = amplitudes
        self._amplitude_rows = None if amplitudes is None else amplitudes.row_of()
        self.text_cache = text_cache
        self.class_names = tuple(class_names)
        self.dim = text_cache.encoder.dim
        self.experience, self.experience_cache = experience, experience_cache

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        encoding = self.text_cache.lookup(texts)
        b = len(texts)
        out = dict(batch)
        out["text_tokens"], out["text_mask"] = encoding.tokens, encoding.mask
        reports = ([self.experience.report(str(r)) for r in batch["record_id"]] if self.experience is not None
                   else [""] * b)
        out["experience_tokens"], out["experience_mask"] = experience_condition(
            reports, self.experience_cache, self.dim)
        out["class_index"] = prior_class_index(texts, self.class_names)
        if self.amplitudes is not None:
            out["amplitudes"] = self.amplitudes.amplitudes_of(batch["record_id"], self._amplitude_rows)
        return out
