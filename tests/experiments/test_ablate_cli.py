"""experiments/ablate.py in a subprocess: its evaluation and table on real PTB-XL records (with --notrain on
already-trained variants; the small exported model stands in for each), and its flag checks."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest


def _run(repo_root, *args):
    return subprocess.run([sys.executable, "-m", "experiments.ablate", *args], cwd=repo_root, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow  # CI time (the same runner is tested through experiments/evaluate.py); in `make test-all`
def test_evaluates_trained_variants_and_writes_the_table(repo_root, exported_model_dir, data_dir, tmp_path):
    from sediff_jax.io.outputs import claim_workdir, release_folder

    claim_workdir(tmp_path / "runs", tool="ablate")  # (the root an earlier ablate run made)
    release_folder(tmp_path / "runs")  # (that run is over: its writer lock is gone)
    for variant in ("full", "no_interlead"):
        shutil.copytree(exported_model_dir, tmp_path / "runs" / variant)
    result = _run(repo_root, "--config=ptbxl100", "--variants=full,no_interlead", f"--workdir={tmp_path / 'runs'}",
                  "--notrain", "--num_samples=8", "--steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "runs" / "ablation" / "table.md").read_text()
    assert "| SE-Diff (full) |" in table and "| 8.43 |" in table and "| w/o inter-lead |" in table, table
    summary = json.loads((tmp_path / "runs" / "ablation" / "ablation.json").read_text())
    full = summary["results"]["full"]
    full_records = json.loads((tmp_path / "runs" / "ablation" / "full" / "metrics.json").read_text())["records"]
    assert full["paired"]["n"] == 8 and "n/a" in table
    # The small model makes 256-sample ECGs; the shipped CLIP model takes 1000 (FID/CLIP are tested elsewhere).
    assert not full["distribution"]["computed"] and "1000 samples" in full["distribution"]["why"]
    per_variant = json.loads((tmp_path / "runs" / "ablation" / "no_interlead" / "metrics.json").read_text())
    assert per_variant["paired"] == summary["results"]["no_interlead"]["paired"]
    # The same weights, records and seeds: record by record the two variants differ by exactly zero.
    assert "Record by record against SE-Diff (full)" in table and "| w/o inter-lead | +0.0000 ± 0.0000 |" in table
    assert summary["differences"]["baseline"] == "full"
    assert summary["differences"]["variants"]["no_interlead"]["mae_mv"]["mean"] == 0
    with np.load(tmp_path / "runs" / "ablation" / "full" / "generated.npz") as saved:
        assert saved["ecg"].shape[0] == 8 and saved["record_ids"].tolist() == full_records


# The ablation with training replaced by a run that a SIGTERM ended early (that the loop saves and returns on SIGTERM
# is tested in tests/training/test_train_cli.py): the runner must exit, not evaluate the half-trained variant.
_STOPPED_TRAINING = """
import sys
from sediff_jax import generation
from sediff_jax.training import loop

def stopped(config, workdir):
    print(f"training {config.stage} in {workdir}", flush=True)
    return [loop.StageResult(stage=config.stage, step=3, stopped_early=True, last_metrics={}, eval_metrics={},
                             seconds=0.0)]

def no_model(*args, **kwargs):
    raise AssertionError("a variant was loaded for evaluation after a stop request")

loop.train, generation.load_model = stopped, no_model
from experiments import ablate, cli
sys.argv = ["ablate", *sys.argv[1:]]
cli.run(ablate.main)
"""


@pytest.mark.parametrize("stage", ["vae", "diffusion"])
def test_a_stop_request_while_training_ends_the_ablation(stage, repo_root, data_dir, tmp_path):
    workdir = tmp_path / "runs"
    shared_vae = [f"--vae_checkpoint={tmp_path / 'vae'}"] if stage == "diffusion" else []
    result = subprocess.run([sys.executable, "-c", _STOPPED_TRAINING, "--config=ptbxl100", f"--workdir={workdir}",
                             "--variants=full,no_interlead", "--encoder=", *shared_vae], cwd=repo_root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = [line for line in result.stdout.splitlines() if line.startswith("training ")]
    assert trained == [f"training {stage} in {workdir / 'full' if stage == 'diffusion' else workdir}"], result.stdout
    what = "full" if stage == "diffusion" else "vae"
    assert f"{what}: stopped at step 3 on request; run the same command again to resume" in result.stdout
    assert not (workdir / "ablation").exists()


def test_flag_errors_name_the_flag(repo_root, tmp_path):
    result = _run(repo_root, f"--workdir={tmp_path}", "--variants=full,no_experience")
    assert result.returncode != 0 and "--experience_dir" in result.stderr
    result = _run(repo_root, f"--workdir={tmp_path}", "--variants=full,no_physics")
    assert result.returncode != 0 and "no_physics" in result.stderr
    assert not any(tmp_path.iterdir())


def test_every_config_variant_has_a_label_in_the_ablation_table(repo_root):
    # (in a subprocess: ablate's absl flags would clash with another entrypoint's imported in this process)
    check = ("from experiments import ablate; from sediff_jax.training.config import VARIANTS; "
             "assert set(ablate.LABELS) == set(VARIANTS), set(ablate.LABELS) ^ set(VARIANTS)")
    result = subprocess.run([sys.executable, "-c", check], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
