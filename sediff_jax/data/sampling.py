"""Which training records an epoch draws, and how often: rare-finding oversampling.

A PTB-XL epoch holds 59 atrial-flutter records among 17,416, so a generator sees flutter waves once every ~300
steps of batch 32 and learns the common ECG first. `rare_code_weights` gives each record an expected number of
draws per epoch from its rarest diagnostic code: (reference_count / count of that code) ** power, clipped to
[1, max_weight]. Records whose every code is at least `reference_count` strong keep weight 1; `only` restricts
the oversampling to a few named codes (e.g. STE_ and AMI). `systematic_draw`
turns the weights into one epoch's index list of a fixed length (systematic resampling: each record is drawn
floor or ceil of its weight's share, never more), so an epoch has the same number of batches every time and a
loader can resume by (epoch, batch).
"""

from __future__ import annotations

import collections
import hashlib
from typing import Collection, Iterable, Sequence

import numpy as np

UNIFORM = "uniform"


def parse_codes(text: str | bytes) -> tuple[str, ...]:
    """'NORM; SR' (the prepared datasets' `codes` field, joined by `data.builder`) -> ('NORM', 'SR'); '' -> ()."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return tuple(code for code in (part.strip() for part in str(text).split(";")) if code)


def code_counts(codes: Iterable[Sequence[str]]) -> collections.Counter:
    """code -> records that carry it."""
    return collections.Counter(code for record in codes for code in set(record))


def rare_code_weights(codes: Sequence[Sequence[str]], *, power: float, reference_count: int = 500,
                      max_weight: float = 4.0, only: Collection[str] = ()) -> np.ndarray:
    """(n,) float64 expected draws per epoch of each record, from the counts of its codes in `codes` itself.

    codes: each record's codes (`parse_codes`).  power: 0 gives every record weight 1 (uniform sampling); 0.5
    draws a code 4x rarer than `reference_count` twice as often.  A record with no codes keeps weight 1.
    only: when given, just these codes are oversampled (a record's weight comes from the rarest of them that it
    carries; records with none keep weight 1); a code that no record carries is a ValueError naming it."""
    if power < 0 or not np.isfinite(power):
        raise ValueError(f"oversampling power {power} must be finite and >= 0")
    if reference_count < 1:
        raise ValueError(f"oversampling reference_count {reference_count} must be >= 1")
    if max_weight < 1:
        raise ValueError(f"oversampling max_weight {max_weight} must be >= 1")
    counts = code_counts(codes)
    only = frozenset(only)
    if missing := sorted(only - set(counts)):
        raise ValueError(f"oversampling codes {', '.join(missing)}: no training record carries them (known codes "
                         f"include {', '.join(sorted(counts)[:12])})")
    rarest = np.array([min((counts[c] for c in record if not only or c in only), default=reference_count)
                       for record in codes], np.float64)
    return np.clip((reference_count / np.maximum(rarest, 1.0)) ** power, 1.0, max_weight)


def check_weights(weights: np.ndarray, num_examples: int) -> np.ndarray:
    """`weights` as a (num_examples,) float64 array, or ValueError naming what is wrong."""
    weights = np.asarray(weights, np.float64)
    if weights.shape != (num_examples,):
        raise ValueError(f"sampling weights of shape {weights.shape} for {num_examples} examples")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("sampling weights must be finite and >= 0")
    if weights.sum() < 1:
        raise ValueError(f"sampling weights sum to {weights.sum():.3g}: an epoch would draw no example")
    return weights


def epoch_length(weights: np.ndarray) -> int:
    """Examples one weighted epoch draws: floor of the weights' sum."""
    return int(np.floor(np.sum(weights)))


def systematic_draw(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(epoch_length(weights),) int64 indices, sorted: record i appears floor or ceil of w_i * M / sum(w) times
    (systematic resampling with one uniform offset from `rng`)."""
    cumulative = np.cumsum(weights)
    length = epoch_length(weights)
    step = cumulative[-1] / length
    points = rng.uniform(0.0, step) + step * np.arange(length)
    return np.minimum(np.searchsorted(cumulative, points, side="right"), len(weights) - 1).astype(np.int64)


def weights_id(weights: np.ndarray | None) -> str:
    """A short id of a sampling (UNIFORM for none): what a saved loader position records, so that a run resumed
    with other weights fails instead of drawing another epoch than it saved."""
    if weights is None:
        return UNIFORM
    return hashlib.sha256(np.asarray(weights, np.float64).tobytes()).hexdigest()[:12]


def source_codes(source) -> list[tuple[str, ...]]:
    """Every record's codes of a random-access split (`codes` field): a latent cache's from memory
    (`LatentSource.codes`), another source's by reading its examples in chunks."""
    if hasattr(source, "codes"):
        return [parse_codes(text) for text in source.codes]
    out = []
    for start in range(0, len(source), 256):
        for example in source.__getitems__(list(range(start, min(start + 256, len(source))))):
            if "codes" not in example:
                raise ValueError("rare-code oversampling needs a `codes` field, which this dataset's examples lack")
            out.append(parse_codes(example["codes"]))
    return out
