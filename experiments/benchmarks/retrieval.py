r"""Experience retrieval at scale: index build time and per-query latency (median, p99) on synthetic corpora.

    python -m experiments.benchmarks.retrieval [--sizes=10000,100000,800000] [--queries=200]

Corpora imitate MIMIC-IV stays: three views (diagnosis ~14 codes from 20k, medication ~25 from 4k, procedure ~3
from 10k), codes drawn with a heavy-headed power law (the commonest diagnosis is in about a third of stays), ~3
ECGs per patient. Queries are profiles of the corpus itself (their own patient excluded), k = 5 distinct
patients. The reference is the textbook vectorised form: per view a SciPy CSR matrix-vector product gives every
profile's intersection with the query, then the same top-k. Target: p99 < 50 ms per query at 800k profiles.
"""

from __future__ import annotations

import platform
import time

import numpy as np
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["10000", "100000", "800000"], "Corpus sizes (profiles).")
flags.DEFINE_integer("queries", 200, "Queries per corpus.")
flags.DEFINE_integer("reference_queries", 50, "Queries timed for the SciPy reference (it is slower).")
flags.DEFINE_integer("seed", 0, "Corpus and query seed.")

cli.check_positive_ints("sizes")

VIEWS = {"diagnosis": (20_000, 14.0), "medication": (4_000, 25.0), "procedure": (10_000, 3.0)}
WEIGHTS = {"diagnosis": 0.5, "medication": 0.3, "procedure": 0.2}


cli.check_int("queries", 1)
cli.check_int("reference_queries", 1)
cli.check_int("seed", 0, cli.MAX_SEED)

def synthetic_codes(n: int, vocab: int, mean: float, rng: np.random.Generator):
    """CSR (indptr, indices) of n rows of distinct codes, sizes ~ Poisson(mean), codes ~ (rank + 5)^-1.1."""
    from sediff_jax.experience import CodeSets

    p = (np.arange(vocab) + 5.0) ** -1.1
    sizes = rng.poisson(mean, n)
    rows = np.repeat(np.arange(n, dtype=np.int64), sizes)
    codes = rng.choice(vocab, size=rows.size, p=p / p.sum())
    keys = np.unique(rows * vocab + codes)  # distinct codes per row, sorted
    rows, codes = keys // vocab, (keys % vocab).astype(np.int32)
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum(np.bincount(rows, minlength=n))
    return CodeSets(indptr, codes, tuple(f"c{j}" for j in range(vocab)))


def synthetic_corpus(n: int, seed: int):
    from sediff_jax.experience import FEATURE_NAMES, ProfileCorpus

    rng = np.random.default_rng(seed)
    codes = {v: synthetic_codes(n, vocab, mean, rng) for v, (vocab, mean) in VIEWS.items()}
    ids = np.char.add("r", np.arange(n).astype(str))
    patients = np.char.add("p", (np.arange(n) // 3).astype(str))
    return ProfileCorpus(ids, patients, np.full(n, "train"), rng.uniform(20, 90, n).astype(np.float32),
                         rng.integers(0, 2, n).astype(np.int8), np.full((n, len(FEATURE_NAMES)), np.nan, np.float32),
                         codes)


def scipy_reference(corpus, k: int):
    """A top-k query function built on per-view CSR matrix-vector products (the reference)."""
    import scipy.sparse as sp

    mats = {v: sp.csr_matrix((np.ones(len(s.indices), np.float32), s.indices, s.indptr),
                             shape=(len(corpus), len(s.vocab))) for v, s in corpus.codes.items()}
    sizes = {v: s.sizes() for v, s in corpus.codes.items()}
    vocab = {v: {c: i for i, c in enumerate(s.vocab)} for v, s in corpus.codes.items()}
    patient = corpus.patient_ids

    def query(codes, patient_id):
        score = np.zeros(len(corpus))
        for v, w in WEIGHTS.items():
            q = set(codes.get(v, ()))
            if not q:
                continue
            vec = np.zeros(len(vocab[v]), np.float32)
            vec[[vocab[v][c] for c in q if c in vocab[v]]] = 1
            inter = (mats[v] @ vec).astype(np.float64)  # counts are exact in float32; the score is float64
            score += w * inter / (len(q) + sizes[v] - inter)
        score[patient == patient_id] = -np.inf
        top = np.argpartition(-score, k * 8)[: k * 8]
        return top[np.lexsort((top, -score[top]))], score

    return query


def main(argv):
    del argv
    from sediff_jax.experience import ExperienceIndex, RetrievalConfig

    print(f"\nExperience retrieval, {platform.machine()} CPU, {FLAGS.queries} queries per corpus, k = 5 distinct "
          "patients, 3 views (MIMIC-like)\n")
    print("| profiles | codes | index build s | query median ms | query p99 ms | SciPy CSR reference median ms | "
          "speed-up | same top-5 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for size in map(int, FLAGS.sizes):
        corpus = synthetic_corpus(size, FLAGS.seed)
        start = time.perf_counter()
        index = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS, k=5))
        build_s = time.perf_counter() - start
        rng = np.random.default_rng(FLAGS.seed + 1)
        queries = [corpus.profile(int(i)) for i in rng.choice(size, FLAGS.queries, replace=False)]
        times, results = [], []
        for q in queries:
            start = time.perf_counter()
            results.append(index.query(q.codes, patient_id=q.patient_id))
            times.append(time.perf_counter() - start)
        reference = scipy_reference(corpus, 5)
        ref_times, agree = [], 0
        for q, ours in zip(queries[: FLAGS.reference_queries], results):
            start = time.perf_counter()
            _, score = reference(q.codes, q.patient_id)
            ref_times.append(time.perf_counter() - start)
            # untimed: the whole corpus in (score, row) order, so ties at the reference's cut-off cannot differ;
            # then the best record per patient, first five patients
            seen, top = set(), []
            for r in np.lexsort((np.arange(size), -score))[:500]:
                if corpus.patient_ids[r] not in seen:
                    seen.add(corpus.patient_ids[r])
                    top.append(int(r))
            agree += top[:5] == ours.rows.tolist()
        codes = sum(len(s.indices) for s in corpus.codes.values())
        median, p99 = 1e3 * np.median(times), 1e3 * np.percentile(times, 99)
        ref_median = 1e3 * np.median(ref_times)
        print(f"| {size:,} | {codes:,} | {build_s:.2f} | {median:.2f} | {p99:.2f} | {ref_median:.2f} | "
              f"{ref_median / median:.1f}x | {agree}/{len(ref_times)} |", flush=True)


if __name__ == "__main__":
    cli.run(main)
