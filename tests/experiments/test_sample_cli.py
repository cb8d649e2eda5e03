"""experiments/sample.py end to end, in a subprocess as a user runs it, on a small exported model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import wfdb

from sediff_jax.leads import LEAD_NAMES


def _run(repo_root, *args):
    return subprocess.run([sys.executable, "-m", "experiments.sample", *args], cwd=repo_root, capture_output=True,
                          text=True, timeout=300)


def test_writes_wfdb_png_npz_and_manifest(repo_root, exported_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "sinus bradycardia", "age": 70, "sex": "M", "hr": 50}\n'
                       '{"text": "sinus tachycardia", "hr": 120}\n')
    out = tmp_path / "out"
    result = _run(repo_root, f"--checkpoint={exported_model_dir}", f"--prompts={prompts}", "--num_samples=2",
                  "--steps=4", "--guidance_scale=1.5", "--seed=5", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"loading model {exported_model_dir} ..." in result.stderr.splitlines()  # (a load takes seconds)
    names = sorted(p.name for p in out.iterdir())
    expected = [f"ecg_{i:03d}_{k:02d}.{ext}" for i in range(2) for k in range(2) for ext in ("dat", "hea", "png")]
    assert names == sorted(expected + ["manifest.json", "samples.npz", ".sediff_outputs.json"])
    record = wfdb.rdrecord(str(out / "ecg_001_01"))
    assert record.fs == 100 and record.sig_len == 256 and record.sig_name == list(LEAD_NAMES)
    assert "text: sinus tachycardia" in record.comments and "hr_bpm: 120" in record.comments
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["sampler"] == {"kind": "ddim", "steps": 4, "guidance_scale": 1.5,
                                                             "eta": 1.0, "simulator_guidance": 0.0,
                                                             "guidance_interval": None, "group_scales": None,
                                                             "cads_noise": 0.0, "cads_tau": [0.6, 0.9],
                                                             "exact_limb_leads": True,
                                                             # 'auto' resolved: this model has no corpus
                                                             "lead_amplitudes": "model", "amplitude_strength": None,
                                                             "amplitudes_from_records": False,
                                                             "clip_x0": 3.0}
    assert manifest["samples"] == 4 and len(manifest["checkpoint"]["id"]) == 12
    with np.load(out / "samples.npz") as f:
        assert f["ecg"].shape == (4, 256, 12)
        np.testing.assert_allclose(f["ecg"][3], record.p_signal, atol=1e-3)
        assert list(f["text"]) == ["sinus bradycardia"] * 2 + ["sinus tachycardia"] * 2
        assert np.isnan(f["age"][2]) and f["hr_bpm"][0] == 50
        assert np.abs(f["ecg"][0] - f["ecg"][1]).max() > 1e-3  # two samples of one prompt differ


# Each case is a fresh interpreter (~5 s); the prompt checks themselves are tested in-process in
# tests/generation, so the cases that only repeat them through the CLI are marked slow.
@pytest.mark.parametrize("args,message", [
    pytest.param(["--text=  "], "--text must be a non-empty", marks=pytest.mark.slow),
    (["--text=normal ECG", "--age=130"], "--age=130 is outside 0-120"),
    pytest.param(["--text=normal ECG", "--hr=10"], "--hr=10 is outside 20-300", marks=pytest.mark.slow),
    pytest.param(["--text=normal ECG", "--sex=X"], "--sex='X' is unknown", marks=pytest.mark.slow),
    (["--prompts=BAD"], "row 3: hr=400"),
    pytest.param(["--text=normal ECG", "--checkpoint=MISSING"], "--checkpoint: .*no such checkpoint",
                 marks=pytest.mark.slow),
    pytest.param(["--text=normal ECG", "--checkpoint=INCOMPATIBLE"], "--checkpoint: .*incompatible checkpoint",
                 marks=pytest.mark.slow),
    pytest.param(["--text=normal ECG", "--steps=5000"], "--steps=5000 must be within 1-100",
                 marks=pytest.mark.slow),
    (["--text=normal ECG", "--rr_ms=800"], "trained without the rhythm scaffold"),
    pytest.param(["--text=normal ECG", "--rr_ms=800,100"], r"rr_ms\[1\]=100.0 is outside 200-3000 ms",
                 marks=pytest.mark.slow),
    pytest.param(["--text=normal ECG", "--rhythm_from=MISSING"], "trained without the rhythm scaffold",
                 marks=pytest.mark.slow),  # (a missing record on a scaffold model: tests/generation/test_rhythm.py)
    pytest.param(["--text=normal ECG", "--rhythm_from=MISSING", "--rr_ms=800"], "pass one",
                 marks=pytest.mark.slow),
    (["--text=normal ECG", "--amplitudes_from=MISSING"], "amplitudes_from=.*nowhere"),
    pytest.param(["--text=normal ECG", "--amplitudes_from=MISSING", "--lead_amplitudes=model"],
                 "lead_amplitudes='model' keeps the model's own", marks=pytest.mark.slow),
])
def test_bad_input_names_the_flag_and_writes_nothing(repo_root, exported_model_dir, tmp_path, args, message):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,age,sex,hr\nnormal ECG,40,M,60\nsinus tachycardia,,,400\n")
    incompatible = tmp_path / "incompatible"
    incompatible.mkdir()
    config = json.loads((exported_model_dir / "config.json").read_text())
    config["denoiser"]["time_embed_dim"] = 32
    (incompatible / "config.json").write_text(json.dumps(config))
    (incompatible / "model.safetensors").write_bytes((exported_model_dir / "model.safetensors").read_bytes())
    args = [a.replace("BAD", str(bad)).replace("MISSING", str(tmp_path / "nowhere"))
            .replace("INCOMPATIBLE", str(incompatible)) for a in args]
    if not any(a.startswith("--checkpoint") for a in args):
        args.append(f"--checkpoint={exported_model_dir}")
    out = tmp_path / "out"
    result = _run(repo_root, *args, f"--out_dir={out}")
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    assert __import__("re").search(message, result.stderr), result.stderr[-2000:]
    assert not out.exists()


def test_several_records_give_one_ecg_each_in_one_call(repo_root, tmp_path):
    """--rhythm_from with several records: the prompt once per record (one model load, one sampling call), each
    ECG's manifest entry naming its record; a count that pairs with neither one prompt nor the prompts is refused
    before anything is written."""
    from sediff_jax.generation import export_model
    from tests.generation.small_model import small_model

    model_dir = export_model(small_model(rhythm=True), tmp_path / "model")
    records = [str(repo_root / "examples" / "records" / name) for name in ("sinus_arrhythmia_0",
                                                                         "atrial_fibrillation_0")]
    out = tmp_path / "out"
    result = _run(repo_root, f"--checkpoint={model_dir}", "--text=left bundle branch block", "--steps=3",
                  f"--rhythm_from={','.join(records)}", "--nopng", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["rhythm"]["source"] for r in manifest["records"]] == [f"record:{r}" for r in records]
    assert [p["rhythm_from"] for p in manifest["prompts"]] == records
    prompts = tmp_path / "three.csv"
    prompts.write_text("text\nnormal ECG\nsinus rhythm\nLBBB\n")
    refused = _run(repo_root, f"--checkpoint={model_dir}", f"--prompts={prompts}",
                   f"--rhythm_from={','.join(records)}", f"--out_dir={tmp_path / 'refused'}")
    assert refused.returncode == 2 and "--rhythm_from names 2 records for 3 prompts" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_rhythm_records_pair_with_prompts_one_to_many_or_in_order():
    from sediff_jax.generation import PromptError, make_prompt, with_rhythm_records

    one, three = [make_prompt("LBBB")], [make_prompt(t) for t in ("normal ECG", "sinus rhythm", "LBBB")]
    assert [p.rhythm_from for p in with_rhythm_records(one, ["a", " b"])] == ["a", "b"]
    assert [(p.text, p.rhythm_from) for p in with_rhythm_records(three, ["a"])] == [
        ("normal ECG", "a"), ("sinus rhythm", "a"), ("LBBB", "a")]
    assert [p.rhythm_from for p in with_rhythm_records(three, ["a", "b", "c"])] == ["a", "b", "c"]
    assert with_rhythm_records(three, None) == three
    for records, message in (([], "names no record"), (["a", ""], "has an empty entry"),
                             (["a", "b"], "names 2 records for 3 prompts")):
        with pytest.raises(PromptError, match=message):
            with_rhythm_records(three, records, where="--rhythm_from")
    with pytest.raises(PromptError, match="both give the rhythm"):
        with_rhythm_records([make_prompt("AF", rr_ms=[800, 800])], ["a"])
