"""Host-side conditioning of a loader batch for stage 2: text tokens, experience tokens, prior class index.

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


class ConditionBuilder:
    """Adds text_tokens (b, Lt, d) float32, text_mask (b, Lt) bool, experience_tokens (b, Le, d),
    experience_mask, class_index (b,) int32 to a loader batch (host NumPy).

    Experience (issue: retrieval) is not wired yet: every record gets one masked-out experience token, which is
    exactly the "w/o experience" condition.
    """

    def __init__(self, text_cache: TextCache, class_names: Sequence[str], experience_length: int = 1):
        self.text_cache = text_cache
        self.class_names = tuple(class_names)
        self.dim = text_cache.encoder.dim
        self.experience_length = experience_length

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        encoding = self.text_cache.lookup(texts)
        b = len(texts)
        out = dict(batch)
        out["text_tokens"], out["text_mask"] = encoding.tokens, encoding.mask
        out["experience_tokens"] = np.zeros((b, self.experience_length, self.dim), np.float32)
        out["experience_mask"] = np.zeros((b, self.experience_length), bool)
        out["class_index"] = prior_class_index(texts, self.class_names)
        return out
