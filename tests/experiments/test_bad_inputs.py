"""Every CLI in experiments/ with bad inputs, table-driven: exit status, the one-line message that names the
problem, no traceback, and nothing under the scenario folder created, changed or deleted (the working directory
and the folders given as outputs included).

The cases run in two interpreters (tests/experiments/cli_cases.py), each CLI's cases one after another as a user
would run them, so the whole table costs about two CLI start-ups plus the cases themselves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.data.wfdb_fixtures import simulated_ecg, write_record

E = 2  # exit status of a user error
BIG_SEED = str(2**64)

# (cli, arguments, exit status, regex the stderr must match). Placeholders in capitals are filled in below.
CASES = [
    # sample: output folder policy, flags, prompts, model config
    ("sample", ["--text=x", "--out_dir="], E, r"--out_dir is empty"),
    ("sample", ["--text=x", "--out_dir=."], E, r"--out_dir=\.: refusing to write there \(it is the working directory\)"),
    ("sample", ["--text=x", "--out_dir=..", "--overwrite"], E, r"contains the working directory"),
    ("sample", ["--text=x", "--out_dir=FULL"], E, r"is not empty; pass --overwrite"),
    ("sample", ["--text=x", "--out_dir=FULL", "--overwrite"], E, r"holds notes.txt, which sample did not write"),
    ("sample", ["--text=x", "--out_dir=USERRECORDS", "--overwrite"], E,
     r"holds ecg_patient1.dat, which sample did not write"),  # (the old pattern ecg_* deleted them)
    ("fit_simulator", ["--record=RECORDS/good", "--out_dir=FIGURES", "--overwrite"], E,
     r"holds fit.json, which fit_simulator did not write"),  # (the old patterns *.json/*.png deleted them)
    ("sample", ["--text=x", "--out_dir=DANGLING"], E, r"is a symlink to .*, which does not exist"),
    ("sample", ["--text=x", "--out_dir=AFILE"], E, r"exists and is not a folder"),
    ("sample", ["--text=x", "--out_dir=AFILE/sub"], E, r"is a file, not a folder"),
    ("sample", ["--text=x", "--out_dir=NEW", "--guidance_scale=nan"], E, r"--guidance_scale must be a finite"),
    ("sample", ["--text=x", "--out_dir=NEW", "--guidance_scale=-1"], E, r"--guidance_scale must be"),
    ("sample", ["--text=x", "--out_dir=NEW", "--eta=nan"], E, r"--eta must be a finite number in \[0, 1\]"),
    ("sample", ["--text=x", "--out_dir=NEW", "--simulator_guidance=nan"], E, r"--simulator_guidance must be"),
    ("sample", ["--text=x", "--out_dir=NEW", "--clip_x0=0"], E, r"--clip_x0 must be"),
    ("sample", ["--text=x", "--out_dir=NEW", f"--seed={BIG_SEED}"], E, r"--seed must be >= 0 and <= 4294967295"),
    ("sample", ["--text=x", "--out_dir=NEW", "--steps=0"], E, r"--steps must be >= 1"),
    ("sample", ["--text=x", "--out_dir=NEW", "--steps=5000", "--checkpoint=MODEL"], E,
     r"--steps=5000 must be within 1-100"),
    ("sample", ["--text=x", "--out_dir=NEW", "--num_samples=0"], E, r"--num_samples must be >= 1"),
    ("sample", ["--text=x", "--out_dir=NEW", "--guidance_interval=5,1"], E, r"guidance_interval=\(5.0, 1.0\) must be"),
    ("sample", ["--text=x", "--out_dir=NEW", "--group_guidance=1,2"], E, r"--group_guidance=1,2: expected 3 numbers"),
    ("sample", ["--text=x", "--out_dir=NEW", "--cads_noise=-1"], E, r"--cads_noise must be a finite number >= 0"),
    ("sample", ["--text=", "--out_dir=NEW"], E, r"--text must be a non-empty report"),
    ("sample", ["--text=\x1b\x07\t", "--out_dir=NEW", "--checkpoint=MODEL"], E, r"only control characters"),
    ("sample", ["--text=x", "--hr=400", "--out_dir=NEW"], E, r"--hr=400 is outside 20-300"),
    ("sample", ["--text=x", "--age=-3", "--out_dir=NEW"], E, r"--age=-3 is outside 0-120"),
    ("sample", ["--text=x", "--hr=150", "--rr_ms=1200", "--out_dir=NEW"], E, r"--hr=150 bpm disagrees with --rr_ms"),
    ("sample", ["--prompts=HUGECSV", "--out_dir=NEW"], E, r"huge.csv line \d+: not a readable CSV row"),
    ("sample", ["--text=x", "--out_dir=NEW", "--checkpoint=NOWHERE"], E, r"--checkpoint: .*no such checkpoint"),
    ("sample", ["--text=x", "--out_dir=NEW", "--checkpoint=NOCORPUS"], E,
     r"--experience=auto: .*trained with experience but its corpus is missing"),
    *[("sample", ["--text=x", "--out_dir=NEW", f"--checkpoint=BROKEN_{name}"], E, message)
      for name, message in [
          ("fs", r"config.json: field 'fs' is -100.0; expected a number"),
          ("duration", r"field 'duration_s' is \"ten\""),
          ("latent_scale", r"field 'latent_scale' is NaN"),
          ("prediction", r"field 'prediction' is \"x0\""),
          ("schedule_kind", r"field 'schedule' is"),
          ("steps", r"field 'schedule.num_steps' is 1\.5"),
          ("encoder", r"field 'text_encoder' is 3"),
          ("denoiser_unknown", r"field 'denoiser' has unknown settings \['depth'\]"),
          ("denoiser_value", r"field 'denoiser.num_heads' is -2"),
          ("vae_value", r"field 'vae.channels' is \[8, 16, 0\]"),
          ("experience", r"field 'experience' is"),
          ("not_object", r"not a model config"),
          ("format", r"not an SE-Diff model"),
          ("huge", r"fs=10000 Hz x duration_s=3600 s is 36000000 samples per ECG; models of up to 120000"),
          ("wide", r"field 'denoiser widths' is 60000; expected at most 4096"),
      ]],
    # fit_simulator: an impossible --record is a user error naming it (a --records_file run fits the others and
    # exits 1 instead: tests/experiments/test_fit_simulator_cli.py)
    ("fit_simulator", ["--record=RECORDS/scaled", "--out_dir=NEW"], E,
     r"--record=.*records/scaled: cannot fit: implausible amplitude .*reaches [\d.]+e\+06 mV"),
    ("fit_simulator", ["--record=RECORDS/negative_fs", "--out_dir=NEW"], E,
     r"negative_fs.hea: invalid sampling rate -250 Hz"),
    ("fit_simulator", ["--record=NOWHERE", "--out_dir=NEW"], E, r"--record=.*nowhere: cannot fit: .*header file not found"),
    ("fit_simulator", ["--record=RECORDS/good", "--out_dir=."], E, r"refusing to write there"),
    ("fit_simulator", ["--record=RECORDS/good", "--out_dir=FULL"], E, r"is not empty"),
    ("fit_simulator", ["--record=RECORDS/good", "--out_dir=NEW", "--duration=nan"], E, r"--duration must be"),
    ("fit_simulator", ["--record=RECORDS/good", "--out_dir=NEW", "--duration=inf"], E, r"--duration must be"),
    ("fit_simulator", ["--record=RECORDS/good", "--out_dir=NEW", "--batch_size=0"], E, r"--batch_size must be"),
    ("fit_simulator", ["--out_dir=NEW"], E, r"pass exactly one of --record and --records_file"),
    # simulate
    ("simulate", ["--out=NEW/a", "--duration=0.001"], E, r"--duration must be a finite number in \[0.1, 3600\]"),
    ("simulate", ["--out=NEW/a", "--duration=inf"], E, r"--duration must be"),
    ("simulate", ["--out=NEW/a", "--fs=nan"], E, r"--fs must be"),
    ("simulate", ["--out=NEW/a", "--powerline_hz=nan"], E, r"--powerline_hz must be"),
    ("simulate", ["--out=NEW/a", "--seed=-1"], E, r"--seed must be >= 0"),
    ("simulate", ["--out="], E, r"--out is empty"),
    ("simulate", ["--out=AFILE/x"], E, r"is a file, not a folder"),
    ("simulate", ["--out=NEW/a", "--preset=nope"], E, r"--preset"),
    # evaluate
    ("evaluate", ["--out=.", "--checkpoint=MODEL"], E, r"refusing to write there"),
    ("evaluate", ["--out=FULL", "--checkpoint=MODEL"], E, r"is not empty"),
    ("evaluate", ["--out=NEW", "--checkpoint=MODEL", "--guidance_scale=nan"], E, r"--guidance_scale must be"),
    ("evaluate", ["--out=NEW", "--checkpoint=MODEL", "--eta=nan"], E, r"--eta must be"),
    ("evaluate", ["--out=NEW", "--checkpoint=MODEL", "--num_samples=0"], E, r"--num_samples must be"),
    ("evaluate", ["--out=NEW", "--checkpoint=MODEL", "--steps=500"], E, r"--steps=500 must be within 1-100"),
    ("evaluate", ["--out=NEW", "--checkpoint=NOCORPUS"], E, r"--experience=auto: .*corpus is missing"),
    ("evaluate", ["--out=NEW", "--checkpoint=NOWHERE"], E, r"--checkpoint: .*no such checkpoint"),
    ("evaluate", ["--out=NEW", "--checkpoint=MODEL", "--amplitudes=record", "--lead_amplitudes=model"], E,
     r"--amplitudes=record gives each ECG its record's lead amplitudes, and --lead_amplitudes=model"),
    # build_experience (the LLM client is refused before any work)
    ("build_experience", ["--dataset=ludb", "--source_dir=SCENARIO", "--out_dir=NEW", "--distiller=llm",
                          "--llm_base_url=http://llm.example.com/v1", "--llm_model=m"], E, r"use https"),
    ("build_experience", ["--dataset=ludb", "--source_dir=SCENARIO", "--out_dir=NEW", "--llm_timeout=-1"], E,
     r"--llm_timeout must be"),
    ("build_experience", ["--dataset=ludb", "--source_dir=SCENARIO", "--out_dir=."], E, r"refusing to write"),
    ("build_experience", ["--dataset=ludb", "--source_dir=NOWHERE", "--out_dir=NEW"], E, r"not a directory"),
    ("build_experience", ["--dataset=ludb", "--source_dir=SCENARIO", "--out_dir=NEW", "--k=0"], E, r"--k must be"),
    # prepare_data
    ("prepare_data", ["--out_dir=.", "--dataset=synthetic"], E, r"refusing to write there"),
    ("prepare_data", ["--out_dir=", "--dataset=synthetic"], E, r"--out_dir is empty"),
    ("prepare_data", ["--out_dir=NEW", "--fs=nan"], E, r"--fs must be"),
    ("prepare_data", ["--out_dir=NEW", "--duration=inf"], E, r"--duration must be"),
    ("prepare_data", ["--out_dir=NEW", "--dataset=ptbxl"], E, r"--source_dir is required"),
    # posthoc_ema: widths checked before anything is read; an exported model has no kept checkpoints
    ("posthoc_ema", ["--workdir=MODEL", "--sigma_rel=0.3"], E, r"--sigma_rel: sigma_rel=0.3 must be in \(0, 0.2887\)"),
    ("posthoc_ema", ["--workdir=MODEL", "--sigma_rel=wide"], E, r"--sigma_rel=wide: numbers expected"),
    ("posthoc_ema", ["--workdir=MODEL", "--validation_records=0", "--out=NEW"], E,
     r"--out without --validation_records needs exactly one --sigma_rel"),
    ("posthoc_ema", ["--workdir=MODEL", "--sigma_rel=0.1"], E, r"post-hoc EMA needs a training workdir"),
    ("posthoc_ema", ["--workdir=NOWHERE", "--sigma_rel=0.1", "--out=MODEL"], E, r"exists \(pass overwrite"),
    # export_model: never deletes what it did not write
    ("export_model", ["--workdir=MODEL", "--out=.", "--overwrite"], E, r"--out=\.: refusing to write there"),
    ("export_model", ["--workdir=MODEL", "--out=..", "--overwrite"], E, r"contains the working directory"),
    ("export_model", ["--workdir=MODEL", "--out=FULL", "--overwrite"], E, r"holds notes.txt, which export_model did not write"),
    ("export_model", ["--workdir=MODEL", "--out=MODEL"], E, r"exists \(pass overwrite"),
    ("export_model", ["--workdir=NOWHERE", "--out=NEW"], E, r"no such checkpoint"),
    ("export_model", ["--workdir=MODEL", "--out=NEW", "--metrics=NANJSON"], E, r"NaN is not valid JSON"),
    # train
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=NEW", "--config.stage=bogus"], E,
     r"--config.stage='bogus' is unknown"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=."], E, r"refusing to write there"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=AFILE"], E, r"exists and is not a folder"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=MODEL"], E,
     r"is an exported model, not a training workdir"),  # (it rewrote the model's config.json)
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=FULL"], E,
     r"is not empty and holds no train run of ours \(it has notes.txt"),
    # --config.* overrides: every value checked against the schema before the workdir is touched
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=NEW", "--config.precision=garbage"], E,
     r"error: config precision='garbage' must be one of float32, bfloat16"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=NEW", "--config.precision=float16"], E,
     r"precision='float16' must be one of"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=NEW", "--config.data.loader_workers=-1"], E,
     r"data.loader_workers=-1 must be >= 0"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=NEW", "--config.data.loader_workers=1000"], E,
     r"data.loader_workers=1000 must be <= \d+"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=NEW", "--config.diffusion.training.batch_size=0"],
     E, r"diffusion.training.batch_size=0 must be >= 1"),
    ("train", ["--config=experiments/configs/tiny.py", "--workdir=NEW", "--config.data.fs=10000"], E,
     r"data.fs=10000.0 must be <= 2000"),
    ("ablate", ["--workdir=MODEL"], E, r"is an exported model, not a training workdir"),
    ("ablate", ["--workdir=."], E, r"refusing to write there \(it is the working directory\)"),
    ("train", ["--config=experiments/configs/nope.py", "--workdir=NEW"], E, r"Failed loading config file.*nope.py"),
    # the research tools: bad numbers are refused while flags are parsed
    ("downstream", ["--out=NEW", "--eta=nan"], E, r"--eta must be"),
    ("downstream", ["--out=NEW", "--guidance_interval=5,1"], E, r"guidance_interval=\(5.0, 1.0\) must be"),
    ("recognize", ["--out=NEW", "--classifier=NEW/c.safetensors", "--generated=x"], E,
     r"--generated: 'x' is not NAME=PATH"),
    ("recognize", ["--out=NEW", "--classifier=NEW/c.safetensors", "--generated=a=NOWHERE/g.npz"], E,
     r"nowhere/g.npz: not found"),
    ("recognize", ["--out=NEW", "--classifier=NANJSON"], E, r"--classifier: .*nan.json: unreadable weights"),
    ("recognize", ["--out=NEW", "--classifier=AFILE/c.safetensors"], E, r"is a file, not a folder"),
    ("recognize", ["--out=NEW", "--classifier=x", "--num_steps=0"], E, r"--num_steps must be >= 1"),
    ("train_clip", ["--out=NEW/clip.safetensors", "--learning_rate=nan"], E, r"--learning_rate must be"),
    ("ablate", ["--workdir=NEW", "--guidance_scale=inf"], E, r"--guidance_scale must be"),
    ("gallery", ["--out=NEW/g.png", "--prepared=NEW", "--records=0"], E, r"--records must be"),
    ("build_simulator_prior", ["--out=NEW/p.json", "--fs=nan"], E, r"--fs must be"),
    ("plot_metrics", ["--runs=NEW", "--smooth=0"], E, r"--smooth must be"),
    # the CLIs without a research run of their own in this table
    ("encode_latents", ["--config=experiments/configs/tiny.py", "--workdir=NOWHERE", "--batch_size=0"], E,
     r"--batch_size=0: 0 is not a positive integer"),
    ("encode_latents", ["--config=experiments/configs/tiny.py", "--workdir=NOWHERE"], E,
     r"nowhere/vae/best: no checkpoint directory"),
    ("ablate", ["--config=../x", "--workdir=NEW"], E, r"--config must name configs of experiments/configs"),
    ("downstream", ["--seeds=a", "--out=NEW"], E, r"--seeds must be integers >= 0"),
    ("gallery", ["--out=NEW/g.png", "--prepared=NOWHERE"], E, r"nowhere: not a prepared dataset"),
    ("simulate", ["--out=NEW/my ecg"], E, r"invalid WFDB record name 'my ecg_0'"),
    ("evaluate_rhythm", ["--checkpoints=", "--out=NEW"], E, r"--checkpoints is empty"),
    ("evaluate_rhythm", ["--checkpoints=a=MODEL", "--out=NEW", "--steps=500"], E, r"--steps=500 must be within 1-100"),
    ("evaluate_rhythm", ["--checkpoints=a=MODEL", "--out=NEW", "--split=bogus", "--source_dir=NOWHERE"], E,
     r"--source_dir=.*nowhere --split=bogus"),
    ("evaluate_rhythm", ["--checkpoints=x", "--out=NEW"], E, r"--checkpoints: 'x' is not name=path"),
    ("evaluate_rhythm", ["--checkpoints=a=NOWHERE", "--out=NEW"], E, r"--checkpoints: a: .*nowhere: no such checkpoint"),
    ("evaluate_rhythm", ["--checkpoints=a=MODEL", "--out=NEW", "--num_records=0"], E, r"--num_records must be >= 1"),
    ("sweep_sampling", ["--variants=bogus", "--out=NEW"], E, r"--variants: unknown \['bogus'\]"),
    ("sweep_sampling", ["--num_samples=1", "--out=NEW"], E, r"--num_samples must be >= 2"),
    ("sweep_sampling", ["--out="], E, r"--out is empty"),
    ("build_device_bundle", ["--latent_cache=NOWHERE", "--out=NEW"], E, r"nowhere: no latent cache here"),
    ("build_device_bundle", ["--latent_cache=FULL", "--out=NEW"], E, r"full: no latent cache here"),
    ("build_device_bundle", ["--latent_cache=NOWHERE", "--out=FULL"], E,
     r"holds notes.txt and is not a training bundle"),
    ("build_device_bundle", ["--latent_cache=NOWHERE", "--out=."], E, r"refusing to write there"),
    ("build_device_bundle", ["--latent_cache=NOWHERE", "--limit_mib=0"], E, r"--limit_mib must be"),
    # the benchmarks
    ("benchmarks.data", ["--data_dir=NOWHERE"], E, r"nowhere/ptb-xl not found; pass --data_dir"),
    ("benchmarks.data", ["--batch=0"], E, r"--batch must be >= 1"),
    ("benchmarks.fitting", ["--data_dir=NOWHERE"], E, r"nowhere/ludb not found; pass --data_dir"),
    ("benchmarks.model_load", ["--repeats=0"], E, r"--repeats must be >= 1"),
    ("benchmarks.model_load", ["--checkpoint=NOWHERE"], E, r"--checkpoint=.*nowhere: not an exported model"),
    ("benchmarks.retrieval", ["--sizes=abc"], E, r"--sizes must be integers >= 1"),
    ("benchmarks.retrieval", ["--queries=0"], E, r"--queries must be >= 1"),
    ("benchmarks.sampling", ["--samplers=foo-1"], E, r"--samplers / --simulator_guidance: 'foo-1'.*unknown"),
    ("benchmarks.sampling", ["--samplers=ddim"], E, r"--samplers / --simulator_guidance: 'ddim'"),
    ("benchmarks.sampling", ["--checkpoint=NOWHERE"], E, r"nowhere"),
    ("benchmarks.simulator", ["--fs=nan"], E, r"--fs must be a finite number"),
    ("benchmarks.simulator", ["--batch=0"], E, r"--batch must be >= 1"),
    ("benchmarks.train_step", ["--configs=nope"], E, r"--configs must name configs of experiments/configs"),
    ("benchmarks.train_step", ["--rounds=0"], E, r"--rounds must be >= 1"),
    ("benchmarks.train_step", ["--experience_tokens=-1"], E, r"--experience_tokens must be >= 0"),
    ("benchmarks.tpu_compile", ["--out="], E, r"--out is empty"),
    ("benchmarks.tpu_compile", ["--out=NEW", "--steps=sample"], E, r"--steps: unknown \['sample'\]"),
    ("benchmarks.tpu_compile", ["--out=NEW", "--configs=nope"], E, r"--configs must name configs"),
    ("benchmarks.tpu_compile", ["--out=NEW", "--per_chip_batch=0"], E, r"--per_chip_batch must be >= 1"),
    ("benchmarks.device", ["--out="], E, r"--out"),
    ("benchmarks.device", ["--out=NEW", "--configs=nope"], E, r"--configs must name configs"),
]


def _entrypoints() -> list[str]:
    """Every runnable module of experiments/ (benchmarks included), as 'sample' or 'benchmarks.data'."""
    root = Path(__file__).resolve().parents[2] / "experiments"
    found = []
    for path in sorted(root.rglob("*.py")):
        if "configs" in path.parts or path.name in ("cli.py", "__init__.py"):
            continue
        if 'if __name__ == "__main__"' in path.read_text():
            found.append(".".join(path.relative_to(root).with_suffix("").parts))
    return found


ENTRYPOINTS = _entrypoints()
SPECIFIC = len(CASES)
# Generic cases every entrypoint gets: help exits 0; an unknown flag is one line, status 2.
CASES += [case for name in ENTRYPOINTS for case in (
    (name, ["--help"], 0, r"^$"), (name, ["--helpfull"], 0, r"^$"),
    (name, ["--no_such_flag=1"], E, r"^error: Unknown command line flag 'no_such_flag'"))]


def test_every_entrypoint_has_cases_of_its_own():
    """A new CLI (or benchmark) without bad-input cases of its own fails here."""
    assert len(ENTRYPOINTS) >= 25
    covered = {case[0] for case in CASES[:SPECIFIC]}
    missing = [name for name in ENTRYPOINTS if name not in covered]
    assert not missing, f"entrypoints without cases in CASES: {missing}"


def _scenario(root, model_dir):
    """The folder every case runs in (its working directory): outputs, records and models to refuse."""
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("a user's file\n")
    (root / "afile").write_text("not a folder\n")
    (root / "user_records").mkdir()
    for suffix in (".hea", ".dat"):
        (root / "user_records" / f"ecg_patient1{suffix}").write_text("a patient's record\n")
    (root / "figures").mkdir()
    for name in ("fit.json", "fit.npz", "fit.png"):
        (root / "figures" / name).write_text("a README figure\n")
    (root / "dangling").symlink_to(root / "gone")
    records = root / "records"
    good = simulated_ecg(fs=500.0, duration_s=4.0)
    write_record(str(records), "good", good, 500.0)
    write_record(str(records), "scaled", good * 1e6, 500.0, gain=0.001)  # +-1.5e6 mV: mis-scaled
    write_record(str(records), "negative_fs", good, 500.0)
    header = records / "negative_fs.hea"
    first, rest = header.read_text().split("\n", 1)
    fields = first.split()
    fields[2] = "-250"
    header.write_text(" ".join(fields) + "\n" + rest)
    models = root / "models"
    shutil.copytree(model_dir, models / "model")
    config = json.loads((model_dir / "config.json").read_text())
    nocorpus = models / "nocorpus"
    shutil.copytree(model_dir, nocorpus)
    (nocorpus / "config.json").write_text(json.dumps({**config, "experience": {"used": True, "max_tokens": 8}}))
    broken = {
        "fs": {"fs": -100.0}, "duration": {"duration_s": "ten"}, "latent_scale": {"latent_scale": float("nan")},
        "prediction": {"prediction": "x0"}, "schedule_kind": {"schedule": {"kind": "warp", "num_steps": 10}},
        "steps": {"schedule": {"kind": "cosine", "num_steps": 1.5}}, "encoder": {"text_encoder": 3},
        "denoiser_unknown": {"denoiser": {**config["denoiser"], "depth": 3}},
        "denoiser_value": {"denoiser": {**config["denoiser"], "num_heads": -2}},
        "vae_value": {"vae": {**config["vae"], "channels": [8, 16, 0]}},
        "experience": {"experience": "yes"}, "format": {"format": "something.else"},
        "huge": {"fs": 10000.0, "duration_s": 3600.0},
        "wide": {"denoiser": {**config["denoiser"], "channels": [64, 60000, 128]}},
    }
    for name, change in broken.items():
        shutil.copytree(model_dir, models / f"broken_{name}")
        (models / f"broken_{name}" / "config.json").write_text(json.dumps({**config, **change}))
    shutil.copytree(model_dir, models / "broken_not_object")
    (models / "broken_not_object" / "config.json").write_text("[1, 2]")
    (root / "huge.csv").write_text('text,hr\n"' + "x" * 200_000 + '",60\n')
    (root / "nan.json").write_text('{"mae": NaN}')
    return {
        "FULL": "full", "AFILE": "afile", "USERRECORDS": "user_records", "FIGURES": "figures", "DANGLING": "dangling", "NEW": "new_out", "RECORDS": "records", "MODEL": "models/model",
        "NOCORPUS": "models/nocorpus", "NOWHERE": "nowhere", "HUGECSV": "huge.csv", "NANJSON": "nan.json",
        "SCENARIO": ".", **{f"BROKEN_{name}": f"models/broken_{name}" for name in [*broken, "not_object"]},
    }


def _fill(arg: str, places: dict[str, str]) -> str:
    for key in sorted(places, key=len, reverse=True):
        arg = arg.replace(key, places[key])
    return arg


@pytest.fixture(scope="module")
def results(tmp_path_factory, exported_model_dir, repo_root):
    root = tmp_path_factory.mktemp("scenario")
    places = _scenario(root, exported_model_dir)
    work = tmp_path_factory.mktemp("runs")
    by_cli: dict[str, list[int]] = {}
    for index, (name, *_rest) in enumerate(CASES):
        by_cli.setdefault(name, []).append(index)
    env = {**os.environ, "PYTHONPATH": str(repo_root), "JAX_PLATFORMS": "cpu"}

    def cases_of(name: str) -> list[list[str]]:
        cases = [[_fill(a, places) for a in CASES[i][1]] for i in by_cli[name]]
        # (configs are named relative to the repository)
        return [[a.replace("experiments/configs", str(repo_root / "experiments" / "configs")) for a in c]
                for c in cases]

    def run(group: int, names: list[str]) -> dict[str, list[dict]]:
        cases_path, results_path = work / f"{group}.cases.json", work / f"{group}.results.json"
        cases_path.write_text(json.dumps({f"experiments.{name}": cases_of(name) for name in names}))
        done = subprocess.run([sys.executable, "-m", "tests.experiments.cli_cases", str(cases_path),
                               str(results_path), str(root)], cwd=root, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return {name.split(".", 1)[1]: result for name, result in json.loads(results_path.read_text()).items()}

    names = list(by_cli)
    groups = [names[0::2], names[1::2]]  # two interpreters, one per core
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        outputs = {}
        for part in pool.map(run, range(len(groups)), groups):
            outputs.update(part)
    flat = {}
    for name, indices in by_cli.items():
        for index, result in zip(indices, outputs[name]):
            flat[index] = result
    return flat


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{c[0]}-{' '.join(c[1])[:60]}" for c in CASES])
def test_bad_input_is_refused_by_name_and_touches_nothing(results, index):
    name, args, code, message = CASES[index]
    result = results[index]
    stderr = result["stderr"]
    assert result["code"] == code, stderr[-2000:]
    assert re.search(message, stderr), stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    if code == 0:  # (help)
        assert not result["changed"]
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(("error: ", "warning: ", "loading model ")) or "cannot fit" in line
                         or "could not be fitted" in line for line in lines), stderr[-2000:]
    assert not result["changed"], "the case created, changed or deleted files under its working directory"


def test_the_scenario_is_what_the_cases_say(tmp_path, exported_model_dir):
    """The fixtures themselves: the mis-scaled record really is 1.5e6 mV and the header really says -250 Hz."""
    import wfdb

    _scenario(tmp_path, exported_model_dir)
    scaled = wfdb.rdrecord(str(tmp_path / "records" / "scaled"))
    assert np.nanmax(np.abs(scaled.p_signal)) > 1e6
    assert (tmp_path / "records" / "negative_fs.hea").read_text().split()[2] == "-250"


def test_the_cli_boundary_turns_our_errors_into_one_line_and_keeps_bugs_tracebacks(repo_root):
    """Every SediffError (our error types) is `error: ...` with status 2; anything else is a bug: traceback, a
    line saying so, status 1. (One interpreter runs the cases, as a user runs each CLI.)"""
    cases = {"PriorError('prior.json: field x is missing')": (2, "error: prior.json: field x is missing\n"),
             "ProfileError('profiles.npz: not a profile corpus')": (2, "error: profiles.npz: not a profile corpus\n"),
             "CheckpointError('model/config.json: bad')": (2, "error: model/config.json: bad\n"),
             "KeyError('a bug')": (1, "This is a bug in sediff_jax")}
    script = ("import contextlib, io, json, sys\n"
              "from experiments import cli\n"
              "from sediff_jax.simulator.priors import PriorError\n"
              "from sediff_jax.experience.profiles import ProfileError\n"
              "from sediff_jax.checkpoints import CheckpointError\n"
              "results = {}\n"
              f"for raised in {list(cases)!r}:\n"
              "    def main(argv, raised=raised):\n"
              "        raise eval(raised)\n"
              "    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err):\n"
              "        try:\n"
              "            sys.argv = ['x']\n"
              "            cli.run(main)\n"
              "        except SystemExit as e:\n"
              "            results[raised] = [e.code, err.getvalue()]\n"
              "print(json.dumps(results))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=repo_root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for raised, (code, expected) in cases.items():
        got_code, stderr = results[raised]
        assert got_code == code, (raised, stderr)
        if code == 2:
            assert stderr == expected
        else:
            assert "Traceback" in stderr and "KeyError: 'a bug'" in stderr and expected in stderr
