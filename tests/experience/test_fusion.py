"""Experience reaches the denoiser as its own token segment: built per record for training, masked when off."""

import numpy as np
import pytest

from sediff_jax.experience import ExperienceIndex
from sediff_jax.experience.distill import OfflineDistiller
from sediff_jax.experience.reports import ExperienceTable, PromptExperience, build_reports, codes_from_text
from sediff_jax.text import HashingEncoder, TextCache
from sediff_jax.conditioning import ConditionBuilder
from tests.experience.test_distill import DESCRIPTIONS, corpus_of_neighbours


def test_condition_builder_encodes_each_records_report(tmp_path):
    table = ExperienceTable([{"record_id": "a", "report": "Experience from 2 similar patients."},
                             {"record_id": "b", "report": ""}])
    path = table.save(tmp_path / "experience.jsonl")
    table = ExperienceTable.load(path)
    text_cache = TextCache(HashingEncoder(dim=16, max_length=8))
    experience_cache = TextCache(HashingEncoder(dim=16, max_length=12))
    batch = {"record_id": np.array(["a", "b", "c"]), "text": np.array(["Sinus rhythm.", "x.", "y."])}
    out = ConditionBuilder(text_cache, ["all"], table, experience_cache)(batch)
    assert out["experience_tokens"].shape == (3, 12, 16)
    expected = experience_cache.lookup(["Experience from 2 similar patients."])
    np.testing.assert_array_equal(out["experience_tokens"][0], expected.tokens[0])
    assert out["experience_mask"][0].any() and not out["experience_mask"][1:].any()  # '' and unknown: masked
    assert not out["experience_tokens"][1:].any()
    off = ConditionBuilder(text_cache, ["all"])(batch)
    assert off["experience_tokens"].shape == (3, 1, 16) and not off["experience_mask"].any()
    with pytest.raises(ValueError, match="go together"):
        ConditionBuilder(text_cache, ["all"], table)


def test_reports_for_every_record_draw_on_training_patients_only():
    corpus = corpus_of_neighbours(n=12)
    splits = np.array(["train"] * 8 + ["test"] * 4)
    corpus.splits = splits
    index = ExperienceIndex(corpus)
    entries = build_reports(corpus, index, OfflineDistiller())
    assert [e["record_id"] for e in entries] == corpus.record_ids.tolist()
    train_ids = set(corpus.record_ids[:8].tolist())
    for e in entries:
        assert set(e["neighbours"]) <= train_ids and e["record_id"] not in e["neighbours"]


def test_prompts_become_queries_through_code_descriptions():
    corpus = corpus_of_neighbours(n=10)
    codes = codes_from_text("Sinus rhythm. Left ventricular hypertrophy, probable IMI.", corpus)
    assert codes == {"diagnostic": ("IMI", "LVH"), "form": (), "rhythm": ("SR",)}
    assert codes_from_text("Atrial fibrillation.", corpus)["rhythm"] == ("AFIB",)
    assert not any(codes_from_text("nothing clinical here", corpus).values())
    experience = PromptExperience(ExperienceIndex(corpus), OfflineDistiller())
    report, neighbours = experience.report("Sinus rhythm. Left ventricular hypertrophy.")
    assert report.startswith("Experience from") and neighbours
    assert experience.report("nothing clinical here") == ("", [])
    assert set(DESCRIPTIONS) >= set(sum(codes.values(), ()))
