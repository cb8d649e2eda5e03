r"""Build the experience corpus of a dataset: profiles, retrieval of each record's neighbours, distilled reports.

    python -m experiments.build_experience --dataset=ptbxl --source_dir=../shared/data/ptb-xl --out_dir=exp/ptbxl
    python -m experiments.build_experience --dataset=mimic --source_dir=mimic-iv-ecg --hosp_dir=mimiciv/3.1/hosp \
        --out_dir=exp/mimic --weights=diagnosis=0.5,medication=0.3,procedure=0.2 --num_workers=8
    python -m experiments.build_experience --dataset=ptbxl --profiles_from=exp/ptbxl --age_weight=0 \
        --out_dir=exp/ptbxl_codes_only     # new retrieval settings on the profiles already measured
    python -m experiments.build_experience --dataset=ptbxl --profiles_from=exp/ptbxl --source_dir=ptb-xl \
        --amplitude_fs=100 --out_dir=exp/ptbxl_amp   # the same profiles, lead amplitudes (re)measured at 100 Hz

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

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from absl import app, flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, ["ptbxl", "ludb", "mimic"], "Dataset layout.", required=True)
flags.DEFINE_string("source_dir", None, "Dataset root (PTB-XL, LUDB or MIMIC-IV-ECG).")
flags.DEFINE_string("profiles_from", None, "Instead of --source_dir: reuse the profiles of an earlier build of the "
                    "same dataset (its directory or profiles.npz), so new retrieval settings or another distiller "
                    "take seconds instead of re-reading and re-measuring every record (17 minutes for PTB-XL). "
                    "With --source_dir as well, only the lead amplitudes are measured there (--amplitude_fs).")
flags.DEFINE_string("hosp_dir", None, "MIMIC-IV hosp module (admissions, diagnoses_icd, prescriptions, ...).")
flags.DEFINE_string("out_dir", None, "Output directory.", required=True)
flags.DEFINE_integer("fs", 500, "PTB-XL: which records to measure intervals on (100 or 500 Hz).")
flags.DEFINE_bool("measure", True, "PTB-XL/LUDB: measure intervals from the signals (else features are NaN).")
flags.DEFINE_integer("amplitude_fs", 100, "Measure each record's lead amplitudes (robust peak-to-peak, mV) at this "
                     "rate, Hz: the rate of the model that draws them (`--lead_amplitudes=retrieved`); 0: none. "
                     "With --profiles_from, only when --source_dir is given too (else the reused ones are kept).")
flags.DEFINE_integer("k", 5, "Neighbours per record.")
flags.DEFINE_list("weights", [], "view=lambda entries (default: equal weights over the dataset's views).")
flags.DEFINE_float("age_weight", 0.1, "Retrieval's patient factor: weight of age closeness (0: codes alone; 0.1 "
                   "keeps neighbours' code similarity within 0.3 % and brings their mean age gap from 17 to 4 years "
                   "on PTB-XL).")
flags.DEFINE_float("age_scale_years", 10.0, "Age difference at which the age term falls to 1/e.")
flags.DEFINE_float("sex_weight", 0.1, "Retrieval's patient factor: weight of the same sex (0: codes alone; 0.1 "
                   "raises same-sex neighbours from 52 % to 94 % on PTB-XL).")
flags.DEFINE_float("link_hours_before", 24.0, "MIMIC: an ECG up to this long before admission joins the stay.")
flags.DEFINE_enum("distiller", "offline", ["offline", "llm"], "Report writer.")
flags.DEFINE_string("llm_base_url", None, "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
flags.DEFINE_string("llm_model", None, "Model name for the LLM distiller.")
flags.DEFINE_string("llm_api_key_env", "OPENAI_API_KEY", "Environment variable holding the API key (optional).")
flags.DEFINE_float("llm_timeout", 30.0, "Total seconds per LLM request (deadline), in (0, 3600].")
flags.DEFINE_integer("llm_max_failures", 3, "Failed LLM requests in a row after which the endpoint is given up "
                     "(the remaining reports are offline ones).")
flags.DEFINE_bool("overwrite", False, "Replace this tool's earlier outputs in --out_dir (the LLM cache is kept).")
flags.DEFINE_integer("num_workers", 1, "Processes reading and measuring records.")
flags.register_validator("k", lambda v: v >= 1, message="--k must be >= 1")
flags.register_validator("fs", lambda v: v in (100, 500), message="--fs must be 100 or 500")
cli.check_int("k", 1, 1000)
cli.check_int("amplitude_fs", 0, 10000)
cli.check_float("link_hours_before", 0, 24 * 365)
cli.check_float("llm_timeout", 0, 3600, low_open=True)
cli.check_int("llm_max_failures", 1)
cli.check_int("num_workers", 1, 256)
cli.check_float("age_weight", 0, 100)
cli.check_float("sex_weight", 0, 100)
cli.check_float("age_scale_years", 0, 200, low_open=True)

OUTPUT_FILES = ("profiles.npz", "experience.jsonl", "manifest.json", "llm_cache.json")


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


def reused_profiles(path: str, dataset: str):
    """The ProfileCorpus of an earlier build (`path`: its directory or profiles.npz), checked to be `dataset`'s."""
    from sediff_jax.experience.profiles import ProfileCorpus, ProfileError

    npz = Path(path) / "profiles.npz" if Path(path).is_dir() else Path(path)
    try:
        corpus = ProfileCorpus.load(npz)
    except ProfileError as e:
        raise cli.UsageError(f"--profiles_from: {e}") from None
    built_from = corpus.source.partition(":")[0]
    if built_from != dataset:
        raise cli.UsageError(f"--profiles_from={path}: those profiles were built from "
                             f"{built_from or 'an unknown dataset'}, not --dataset={dataset}")
    return corpus


def main(argv):
    del argv
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.experience import ExperienceIndex, RetrievalConfig
    from sediff_jax.experience.builders import (BuildReport, add_amplitudes, dataset_entries_for_amplitudes,
                                                ludb_profiles, mimic_profiles, ptbxl_profiles)
    from sediff_jax.experience.distill import LLMConfig, make_distiller
    from sediff_jax.experience.reports import build_reports, save_experience
    from sediff_jax.io.outputs import output_dir

    weights = parse_weights(FLAGS.weights)
    output = output_dir(FLAGS.out_dir, overwrite=FLAGS.overwrite, tool="build_experience")
    if FLAGS.dataset == "mimic" and not FLAGS.hosp_dir:
        raise app.UsageError("--dataset=mimic needs --hosp_dir (the MIMIC-IV hosp module)")
    if FLAGS.distiller == "llm" and not (FLAGS.llm_base_url and FLAGS.llm_model):
        raise app.UsageError("--distiller=llm needs --llm_base_url and --llm_model")
    if not (FLAGS.source_dir or FLAGS.profiles_from):
        raise app.UsageError("give --source_dir (read and measure the records) or --profiles_from (reuse an "
                             "earlier build's profiles)")
    if FLAGS.source_dir and FLAGS.profiles_from and not FLAGS.amplitude_fs:
        raise app.UsageError("--source_dir with --profiles_from measures lead amplitudes only; it needs "
                             "--amplitude_fs > 0")
    if FLAGS.source_dir and not Path(FLAGS.source_dir).is_dir():
        raise app.UsageError(f"--source_dir={FLAGS.source_dir}: not a directory")
    out = output.path
    llm = None
    if FLAGS.distiller == "llm":
        try:
            llm = LLMConfig(base_url=FLAGS.llm_base_url, model=FLAGS.llm_model, api_key_env=FLAGS.llm_api_key_env,
                            timeout_s=FLAGS.llm_timeout, max_failures=FLAGS.llm_max_failures,
                            cache_path=str(out / "llm_cache.json"))
        except ValueError as e:
            raise cli.UsageError(f"--llm_base_url: {e}") from None
        print(f"warning: --distiller=llm sends facts derived from patient records (codes, ages, measured intervals "
              f"of similar patients) to {llm.base_url}; use an endpoint you are allowed to share them with",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    report = BuildReport()
    try:
        if FLAGS.profiles_from:
            corpus = reused_profiles(FLAGS.profiles_from, FLAGS.dataset)
        elif FLAGS.dataset == "ptbxl":
            corpus = ptbxl_profiles(FLAGS.source_dir, FLAGS.fs, FLAGS.measure, FLAGS.num_workers, report)
        elif FLAGS.dataset == "ludb":
            corpus = ludb_profiles(FLAGS.source_dir, FLAGS.measure, FLAGS.num_workers, report)
        else:
            corpus = mimic_profiles(FLAGS.source_dir, FLAGS.hosp_dir, FLAGS.link_hours_before, report)
        if FLAGS.source_dir and FLAGS.amplitude_fs:
            amplitude_entries = dataset_entries_for_amplitudes(FLAGS.dataset, FLAGS.source_dir, FLAGS.amplitude_fs)
            corpus = add_amplitudes(corpus, amplitude_entries, FLAGS.amplitude_fs, FLAGS.num_workers, report)
        config = RetrievalConfig(weights=weights, k=FLAGS.k, age_weight=FLAGS.age_weight,
                                 age_scale_years=FLAGS.age_scale_years, sex_weight=FLAGS.sex_weight)
        index = ExperienceIndex(corpus, config)
    except (LayoutError, ValueError) as e:
        raise cli.UsageError(str(e)) from None
    profiles_s = time.perf_counter() - start
    distiller = make_distiller(FLAGS.distiller, llm)
    llm_cache = output.writing("llm_cache.json") if llm is not None else contextlib.nullcontext()
    with llm_cache, cli.Progress(len(corpus), "retrieve + distil", unit="record") as progress:
        entries = build_reports(corpus, index, distiller, progress=progress.update)
    llm_summary = distiller.summary() if llm is not None else None
    if llm_summary is not None and llm_summary["offline_fallbacks"]:
        print(f"warning: {llm_summary['offline_fallbacks']} of {len(entries)} reports fell back to the offline "
              f"distiller ({llm_summary['last_error']})", file=sys.stderr)
    output.mkdir()
    output.clear(keep=["llm_cache.json"])
    with output.writing(*OUTPUT_FILES[:3]):
        save_experience(out, corpus, index, entries, dataset=FLAGS.dataset,
                        source_dir=FLAGS.source_dir or corpus.source.partition(":")[2],
                        **({"profiles_from": str(Path(FLAGS.profiles_from).resolve())} if FLAGS.profiles_from else {}),
                        distiller=("offline (every LLM call fell back)"
                                   if llm_summary and not llm_summary["llm_reports"] else FLAGS.distiller),
                        llm=llm_summary, build_report=dataclasses.asdict(report),
                        seconds={"profiles": round(profiles_s, 2), "total": round(time.perf_counter() - start, 2)},
                        **cli.provenance())
    with_report = sum(bool(e["report"]) for e in entries)
    print(f"{len(corpus)} profiles ({len(index)} in the training index), {with_report} with an experience report; "
          f"wrote {out}/profiles.npz, experience.jsonl, manifest.json")
    return 0


if __name__ == "__main__":
    cli.run(main)
