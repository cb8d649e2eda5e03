r"""Build the experience corpus of a dataset: profiles, retrieval of each record's neighbours, distilled reports.

    python -m experiments.build_experience --dataset=ptbxl --source_dir=../shared/data/ptb-xl --out_dir=exp/ptbxl
    python -m experiments.build_experience --dataset=mimic --source_dir=mimic-iv-ecg --hosp_dir=mimiciv/3.1/hosp \
        --out_dir=exp/mimic --weights=diagnosis=0.5,medication=0.3,procedure=0.2 --num_workers=8

Writes to --out_dir (each file atomically, the manifest last):
  profiles.npz     every record's profile (all splits; `sediff_jax.experience.ProfileCorpus`)
  experience.jsonl per record: its k neighbours (training split only, never its own patient), their
                   similarities and the distilled report
  manifest.json    the retrieval config, distiller, counts, build report and timings
Training reads the directory with `--config.experience.dir=...`; `experiments/export_model.py` ships
profiles.npz with the model so `experiments/sample.py --experience=auto` works offline.
The LLM distiller (`--distiller=llm`) talks to any OpenAI-compatible endpoint (`--llm_base_url`, `--llm_model`,
key from the environment variable `--llm_api_key_env`) and falls back to the offline report when it fails.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, ["ptbxl", "ludb", "mimic"], "Dataset layout.", required=True)
flags.DEFINE_string("source_dir", None, "Dataset root (PTB-XL, LUDB or MIMIC-IV-ECG).", required=True)
flags.DEFINE_string("hosp_dir", None, "MIMIC-IV hosp module (admissions, diagnoses_icd, prescriptions, ...).")
flags.DEFINE_string("out_dir", None, "Output directory.", required=True)
flags.DEFINE_integer("fs", 500, "PTB-XL: which records to measure intervals on (100 or 500 Hz).")
flags.DEFINE_bool("measure", True, "PTB-XL/LUDB: measure intervals from the signals (else features are NaN).")
flags.DEFINE_integer("k", 5, "Neighbours per record.")
flags.DEFINE_list("weights", [], "view=lambda entries (default: equal weights over the dataset's views).")
flags.DEFINE_float("link_hours_before", 24.0, "MIMIC: an ECG up to this long before admission joins the stay.")
flags.DEFINE_enum("distiller", "offline", ["offline", "llm"], "Report writer.")
flags.DEFINE_string("llm_base_url", None, "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
flags.DEFINE_string("llm_model", None, "Model name for the LLM distiller.")
flags.DEFINE_string("llm_api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key (optional).")
flags.DEFINE_float("llm_timeout", 30.0, "Seconds per LLM request.")
flags.DEFINE_integer("num_workers", 1, "Processes reading and measuring records.")
flags.register_validator("k", lambda v: v >= 1, message="--k must be >= 1")
flags.register_validator("fs", lambda v: v in (100, 500), message="--fs must be 100 or 500")


def parse_weights(entries: list[str]) -> dict[str, float]:
    weights = {}
    for entry in entries:
        view, sep, value = entry.partition("=")
        try:
            weights[view.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not view.strip():
            raise app.UsageError(f"--weights entry {entry!r} is not view=number")
    return weights


def main(argv):
    del argv
    from tqdm import tqdm

    from sediff_jax.data.sources import LayoutError
    from sediff_jax.experience import ExperienceIndex, RetrievalConfig
    from sediff_jax.experience.builders import BuildReport, ludb_profiles, mimic_profiles, ptbxl_profiles
    from sediff_jax.experience.distill import LLMConfig, make_distiller
    from sediff_jax.experience.reports import build_reports, save_experience

    weights = parse_weights(FLAGS.weights)
    if FLAGS.dataset == "mimic" and not FLAGS.hosp_dir:
        raise app.UsageError("--dataset=mimic needs --hosp_dir (the MIMIC-IV hosp module)")
    if FLAGS.distiller == "llm" and not (FLAGS.llm_base_url and FLAGS.llm_model):
        raise app.UsageError("--distiller=llm needs --llm_base_url and --llm_model")
    if not Path(FLAGS.source_dir).is_dir():
        raise app.UsageError(f"--source_dir={FLAGS.source_dir}: not a directory")
    out = Path(FLAGS.out_dir)
    start = time.perf_counter()
    report = BuildReport()
    try:
        if FLAGS.dataset == "ptbxl":
            corpus = ptbxl_profiles(FLAGS.source_dir, FLAGS.fs, FLAGS.measure, FLAGS.num_workers, report)
        elif FLAGS.dataset == "ludb":
            corpus = ludb_profiles(FLAGS.source_dir, FLAGS.measure, FLAGS.num_workers, report)
        else:
            corpus = mimic_profiles(FLAGS.source_dir, FLAGS.hosp_dir, FLAGS.link_hours_before, report)
        config = RetrievalConfig(weights=weights, k=FLAGS.k)
        index = ExperienceIndex(corpus, config)
    except (LayoutError, ValueError) as e:
        print(f"build_experience: {e}", file=sys.stderr)
        return 2
    profiles_s = time.perf_counter() - start
    llm = LLMConfig(base_url=FLAGS.llm_base_url or "", model=FLAGS.llm_model or "",
                    api_key_env=FLAGS.llm_api_key_env, timeout_s=FLAGS.llm_timeout,
                    cache_path=str(out / "llm_cache.json"))
    distiller = make_distiller(FLAGS.distiller, llm if FLAGS.distiller == "llm" else None)
    with tqdm(total=len(corpus), desc="retrieve + distil", unit="record") as bar:
        entries = build_reports(corpus, index, distiller, progress=bar.update)
    save_experience(out, corpus, index, entries, dataset=FLAGS.dataset, source_dir=FLAGS.source_dir,
                    distiller=FLAGS.distiller,
                    llm={"base_url": llm.base_url, "model": llm.model} if llm.base_url else None,
                    build_report=dataclasses.asdict(report),
                    seconds={"profiles": round(profiles_s, 2), "total": round(time.perf_counter() - start, 2)},
                    command=" ".join(sys.argv))
    with_report = sum(bool(e["report"]) for e in entries)
    print(f"{len(corpus)} profiles ({len(index)} in the training index), {with_report} with an experience report; "
          f"wrote {out}/profiles.npz, experience.jsonl, manifest.json")
    return 0


if __name__ == "__main__":
    app.run(main)
