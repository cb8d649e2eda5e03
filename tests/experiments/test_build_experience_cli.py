"""experiments/build_experience.py end to end on the real LUDB records, in a subprocess as a user runs it: a build
from the records, then a rebuild with other retrieval settings from its profiles (--profiles_from)."""

import json
import subprocess
import sys

import numpy as np

from sediff_jax.experience.reports import ExperienceTable
from sediff_jax.experience.profiles import ProfileCorpus


def _run(repo_root, *args):
    return subprocess.run([sys.executable, "-m", "experiments.build_experience", *args], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)


def test_a_rebuild_from_earlier_profiles_keeps_them_and_applies_the_new_retrieval(repo_root, data_dir, tmp_path):
    built = _run(repo_root, "--dataset=ludb", f"--source_dir={data_dir / 'ludb'}", "--nomeasure",
                 f"--out_dir={tmp_path / 'first'}")
    assert built.returncode == 0, built.stderr
    rebuilt = _run(repo_root, "--dataset=ludb", f"--profiles_from={tmp_path / 'first'}", "--k=2", "--age_weight=0",
                   "--sex_weight=0", f"--out_dir={tmp_path / 'second'}")
    assert rebuilt.returncode == 0, rebuilt.stderr
    first, second = (ProfileCorpus.load(tmp_path / name / "profiles.npz") for name in ("first", "second"))
    assert len(first) == len(second) > 100 and second.source == first.source
    np.testing.assert_array_equal(first.record_ids, second.record_ids)
    np.testing.assert_array_equal(first.features, second.features)
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert manifest["retrieval"]["k"] == 2 and manifest["retrieval"]["age_weight"] == 0
    assert manifest["profiles_from"] == str(tmp_path / "first") and manifest["source_dir"] == str(data_dir / "ludb")
    table = ExperienceTable.load(tmp_path / "second" / "experience.jsonl")
    assert max(len(entry["neighbours"]) for entry in table.entries.values()) == 2

    wrong = _run(repo_root, "--dataset=ptbxl", f"--profiles_from={tmp_path / 'first'}",
                 f"--out_dir={tmp_path / 'third'}")
    assert wrong.returncode == 2 and "built from ludb, not --dataset=ptbxl" in wrong.stderr
    both = _run(repo_root, "--dataset=ludb", f"--profiles_from={tmp_path / 'first'}",
                f"--source_dir={data_dir / 'ludb'}", f"--out_dir={tmp_path / 'third'}")
    assert both.returncode == 2 and "either --source_dir" in both.stderr
    missing = _run(repo_root, "--dataset=ludb", f"--profiles_from={tmp_path / 'nowhere'}",
                   f"--out_dir={tmp_path / 'third'}")
    assert missing.returncode == 2 and "nowhere: profile corpus not found" in missing.stderr
    assert not (tmp_path / "third").exists()
