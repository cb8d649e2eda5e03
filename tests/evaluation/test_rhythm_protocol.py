"""The rhythm protocol (`evaluation.rhythm_protocol`, run by `experiments/evaluate_rhythm.py`) end to end at tiny
size: a scaffold model and a model without one on real PTB-XL records, every part measured and reported."""

import json
import subprocess
import sys

import numpy as np

from sediff_jax.evaluation.rhythm_protocol import RR_LISTS_MS, explicit_rhythms, sinus_af_prompts


def test_explicit_rhythms_cut_rr_lists_to_the_ecg_and_use_the_records_stored_peaks():
    class Pairs:  # the two RealPairs methods the protocol uses
        record_ids = ["a", "b"]

        def take(self, indices):
            assert list(indices) == [0]
            return self

        def rhythms(self, duration_s):
            return [None]

    plans, kinds = explicit_rhythms(Pairs(), 10.0, 1)
    assert len(plans) == len(RR_LISTS_MS) and set(kinds) == {"rr_ms"}
    assert [len(p.rr_ms) for p in plans] == [len(rr) for rr in RR_LISTS_MS]  # all fit 10 s
    short, _ = explicit_rhythms(Pairs(), 2.56, 1)
    assert all(1 <= len(p.rr_ms) < len(rr) for p, rr in zip(short, RR_LISTS_MS))
    assert all(max(p.r_peaks_s) < 2.56 for p in short)
    prompts, groups = sinus_af_prompts(2)
    assert len(prompts) == 32 and (groups == "sinus").sum() == 16


def test_evaluate_rhythm_cli_scores_both_models_on_real_records(repo_root, data_dir, tmp_path):
    from sediff_jax.generation import export_model
    from tests.generation.small_model import small_model

    scaffold = export_model(small_model(rhythm=True), tmp_path / "scaffold")
    plain = export_model(small_model(), tmp_path / "plain")
    out = tmp_path / "rhythm"
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate_rhythm",
                             f"--checkpoints=scaffold={scaffold},plain={plain}", f"--source_dir={data_dir / 'ptb-xl'}",
                             "--num_records=4", "--samples_per_prompt=1", "--num_rhythm_from=2", "--steps=2",
                             f"--out={out}"], cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "rhythm.json").read_text())
    scaffolded, unscaffolded = report["models"]["scaffold"], report["models"]["plain"]
    assert scaffolded["scaffold"] and not unscaffolded["scaffold"] and "explicit" not in unscaffolded
    assert scaffolded["paired"]["xqrs"]["n"] + scaffolded["paired"]["ours"]["n"] >= 1
    assert set(scaffolded["explicit"]) == {f"{k}/{m}/{d}" for k in ("rr_ms", "rhythm_from")
                                           for m in ("normal", "lbbb") for d in ("xqrs", "ours")}
    assert np.isfinite(report["real"]["sinus"]["median"])
    assert "| scaffold (scaffold) |" in (out / "rhythm.md").read_text()
