"""Weighted-Jaccard retrieval against a brute-force reference on random profiles; leakage exclusion."""

import math

import numpy as np
import pytest

from sediff_jax.experience import ExperienceIndex, Profile, ProfileCorpus, RetrievalConfig

VIEWS = ("diagnosis", "medication", "procedure")
WEIGHTS = {"diagnosis": 0.5, "medication": 0.3, "procedure": 0.2}


def random_profiles(n: int, seed: int, vocab: int = 12, patients: int | None = None) -> list[Profile]:
    """Small vocabularies so that many profiles share codes and many scores tie exactly."""
    rng = np.random.default_rng(seed)
    patients = patients or n
    out = []
    for i in range(n):
        codes = {v: tuple(f"{v[0]}{c}" for c in rng.choice(vocab, rng.integers(0, 5), replace=False)) for v in VIEWS}
        out.append(Profile(record_id=f"r{i:04d}", patient_id=f"p{rng.integers(patients)}",
                           split=str(rng.choice(["train", "validation", "test"], p=[0.7, 0.15, 0.15])),
                           age=float(rng.integers(20, 90)), sex=str(rng.choice(["male", "female"])), codes=codes))
    return out


def brute_force(profiles, query: dict, weights, k, patient=None, distinct=True, exclude=None):
    """Reference: Python sets, every profile scored, sorted by (-score, record id)."""
    scored = []
    for p in profiles:
        if p.patient_id == patient or p.record_id == exclude:
            continue
        s = 0.0
        for view, w in weights.items():
            q, x = set(query.get(view, ())), set(p.codes.get(view, ()))
            if q and (q | x):
                s += w * len(q & x) / len(q | x)
        if s > 0:
            scored.append((-s, p.record_id, p))
    scored.sort(key=lambda t: (t[0], t[1]))
    out, seen = [], set()
    for s, rid, p in scored:
        if distinct and p.patient_id in seen:
            continue
        seen.add(p.patient_id)
        out.append((rid, -s))
    return out[:k]


@pytest.mark.parametrize("distinct", [True, False])
def test_top_k_matches_brute_force_including_ties(distinct):
    profiles = random_profiles(400, seed=1, patients=150)
    train = [p for p in profiles if p.split == "train"]
    corpus = ProfileCorpus.from_profiles(profiles, VIEWS)
    index = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS, k=7, distinct_patients=distinct))
    assert len(index) == len(train)
    ties = 0
    for q in random_profiles(60, seed=2, patients=150):
        got = index.query_profile(q)
        want = brute_force(train, q.codes, WEIGHTS, 7, q.patient_id, distinct, q.record_id)
        assert [str(index.corpus.record_ids[r]) for r in got.rows] == [r for r, _ in want]
        np.testing.assert_array_equal(got.scores, [s for _, s in want])  # same float ops, bit-equal
        ties += len(want) - len(set(s for _, s in want))
    assert ties > 20  # the check above really exercised tie-breaking


def test_similarities_are_weighted_jaccard_for_every_profile():
    profiles = random_profiles(200, seed=3)
    corpus = ProfileCorpus.from_profiles(profiles, VIEWS)
    index = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS, corpus_splits=("train", "validation", "test")))
    query = {"diagnosis": ("d1", "d2", "zz-unknown"), "medication": ("m3",), "procedure": ()}
    s = index.similarities(query)
    for row, p in enumerate(sorted(profiles, key=lambda p: p.record_id)):
        want = sum(w * len(set(query[v]) & set(p.codes[v])) / len(set(query[v]) | set(p.codes[v]))
                   for v, w in WEIGHTS.items() if query[v])
        assert s[row] == pytest.approx(want, abs=1e-12)


def test_no_leak_of_own_patient_or_evaluation_records():
    profiles = random_profiles(300, seed=4, patients=60)
    corpus = ProfileCorpus.from_profiles(profiles, VIEWS)
    index = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS, k=10))
    assert set(index.corpus.splits.tolist()) == {"train"}
    for p in profiles:
        got = index.query_profile(p)
        assert p.patient_id not in index.corpus.patient_ids[got.rows].tolist()
        assert set(index.corpus.splits[got.rows].tolist()) <= {"train"}
        assert len(set(index.corpus.patient_ids[got.rows].tolist())) == len(got.rows)
    # A query identical to a training profile finds it (score 1) unless it names that profile's patient.
    p = next(p for p in profiles if p.split == "train" and any(p.codes.values()))
    assert index.query(p.codes).scores[0] == pytest.approx(sum(w for v, w in WEIGHTS.items() if p.codes[v]))
    assert p.record_id not in index.corpus.record_ids[index.query(p.codes, patient_id=p.patient_id).rows]


def test_queries_with_no_shared_code_get_no_neighbours_and_bad_config_is_refused():
    corpus = ProfileCorpus.from_profiles(random_profiles(50, seed=5), VIEWS)
    index = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS))
    empty = index.query({"diagnosis": ("nothing-like-this",)})
    assert empty.rows.size == 0 and empty.scores.size == 0
    with pytest.raises(ValueError, match="labs"):
        ExperienceIndex(corpus, RetrievalConfig(weights={"labs": 1.0}))
    with pytest.raises(ValueError, match="k must be"):
        RetrievalConfig(k=0)
    assert math.isclose(sum(ExperienceIndex(corpus).config.weights.values()), 1.0)


def test_patient_factor_matches_its_formula_and_keeps_code_free_profiles_out():
    """similarity x (1 + w_age exp(-|age diff| / scale) + w_sex [same sex]) against a brute-force reference; a
    profile sharing no code stays out; weight 0 (the default) ranks exactly as the codes alone."""
    profiles = random_profiles(400, seed=5, patients=400)
    train = [p for p in profiles if p.split == "train"]
    corpus = ProfileCorpus.from_profiles(profiles, VIEWS)
    plain = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS, k=7))
    config = RetrievalConfig(weights=WEIGHTS, k=7, age_weight=0.3, age_scale_years=8.0, sex_weight=0.2)
    patient = ExperienceIndex(corpus, config)
    for q in random_profiles(40, seed=6, patients=400):
        codes_only = {rid: s for rid, s in brute_force(train, q.codes, WEIGHTS, len(train), distinct=False)}
        want = sorted(((-(s * (1 + 0.3 * math.exp(-abs(p.age - q.age) / 8.0) + 0.2 * (p.sex == q.sex))), p.record_id)
                       for p in train if (s := codes_only.get(p.record_id, 0.0)) > 0 and p.patient_id != q.patient_id
                       and p.record_id != q.record_id))[:7]
        got = patient.query_profile(q)
        assert [str(patient.corpus.record_ids[r]) for r in got.rows] == [rid for _, rid in want]
        np.testing.assert_allclose(got.scores, [-s for s, _ in want], rtol=1e-12)
        base = plain.query_profile(q)
        np.testing.assert_array_equal(base.rows, ExperienceIndex(corpus, RetrievalConfig(
            weights=WEIGHTS, k=7, age_weight=0.3, sex_weight=0.2)).query(
                q.codes, q.patient_id, q.record_id).rows)  # unknown age and sex: the codes alone
    nothing = patient.query({"diagnosis": ("zzz",)}, age=50.0, sex=0)
    assert len(nothing.rows) == 0
    with pytest.raises(ValueError, match="age_scale_years > 0"):
        RetrievalConfig(age_scale_years=0.0)


def test_a_man_of_seventy_retrieves_men_of_about_seventy_among_equal_codes():
    codes = {"diagnosis": ("CLBBB",), "medication": (), "procedure": ()}
    people = [("female", 30), ("female", 71), ("male", 25), ("male", 69), ("male", 72), ("female", 68), ("male", 45)]
    profiles = [Profile(record_id=f"r{i}", patient_id=f"p{i}", age=float(a), sex=s, codes=codes)
                for i, (s, a) in enumerate(people)]
    corpus = ProfileCorpus.from_profiles(profiles, VIEWS)
    index = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS, k=2, age_weight=0.1, sex_weight=0.1))
    found = index.query(codes, age=70.0, sex=0)
    assert sorted(corpus.record_ids[found.rows].tolist()) == ["r3", "r4"]
    plain = ExperienceIndex(corpus, RetrievalConfig(weights=WEIGHTS, k=2)).query(codes, age=70.0, sex=0)
    assert corpus.record_ids[plain.rows].tolist() == ["r0", "r1"]  # codes alone: corpus order
