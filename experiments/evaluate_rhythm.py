r"""Does a model keep the rhythm it is asked for? Heart rate, RR regularity and beat placement, measured by
detectors we did not write (wfdb's XQRS; neurokit2 when installed), for one or more models in one table.

    python -m experiments.evaluate_rhythm --checkpoints=scaffold=runs/scaffold,paper=runs/paper \
        --source_dir=data/ptb-xl-full --num_records=200 --out=eval/rhythm

Three protocols, the same seeds for every model:
  * paired, PTB-XL --split (fold 10): one ECG per record from its report, age, sex and measured heart rate;
    |HR error| against the record's rate.
  * prompts: --samples_per_prompt ECGs for each of 8 sinus and 8 atrial fibrillation prompts (rates 48-150 bpm);
    RR coefficient of variation per ECG (real PTB-XL fold-10 sinus records: median 0.031).
  * explicit rhythm (models trained with the scaffold): RR lists and the R peaks of real records
    (`--rhythm_from`), each with a narrow-QRS and a wide-QRS (LBBB) prompt; median distance from each requested
    R peak to the one XQRS (and our detector) finds.
Writes --out/rhythm.json and --out/rhythm.md (atomically).
"""

from __future__ import annotations


import numpy as np
from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("checkpoints", None, "name=path of each model (exported directory or training workdir).",
                  required=True)
flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of a training workdir: best on validation or "
                  "the last.")
flags.DEFINE_string("source_dir", None, "PTB-XL root (default: $SEDIFF_DATA_DIR/ptb-xl).")
flags.DEFINE_string("split", "test", "Split of the paired protocol (fold 10 is 'test').")
flags.DEFINE_integer("num_records", 100, "Records of the paired protocol.")
flags.DEFINE_integer("samples_per_prompt", 4, "ECGs per sinus / AF prompt.")
flags.DEFINE_integer("num_rhythm_from", 16, "Records of --split whose R peaks the explicit-rhythm test reuses.")
flags.DEFINE_integer("steps", 50, "DDIM steps.")
flags.DEFINE_float("guidance_scale", 2.0, "Classifier-free guidance scale.")
flags.DEFINE_float("eta", 1.0, "DDIM noise.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("max_batch", 64, "ECGs sampled together.")
flags.DEFINE_string("out", None, "Output directory (new or empty; see --overwrite).", required=True)
flags.DEFINE_bool("overwrite", False, "Replace this tool's earlier rhythm.json / rhythm.md in --out.")
cli.check_int("num_records", 1)
cli.check_int("samples_per_prompt", 1)
cli.check_int("num_rhythm_from", 0)
cli.check_sampling_flags()

SINUS_PROMPTS = [("sinus rhythm, normal ECG", 48), ("sinus rhythm, normal ECG", 62), ("normal ECG", 75),
                 ("sinus rhythm, left ventricular hypertrophy", 70), ("sinus rhythm, incomplete right bundle "
                 "branch block", 80), ("sinus tachycardia", 110), ("sinus bradycardia", 52),
                 ("sinus rhythm, inferior myocardial infarction", 66)]
AF_PROMPTS = [("atrial fibrillation", 80), ("atrial fibrillation", 95), ("atrial fibrillation with rapid "
              "ventricular response", 130), ("atrial fibrillation, left bundle branch block", 100),
              ("atrial fibrillation, ST depression", 110), ("atrial fibrillation", 70),
              ("atrial fibrillation, left ventricular hypertrophy", 90), ("atrial fibrillation", 150)]
RR_LISTS_MS = [[1000] * 8, [600] * 14, [800, 820, 790, 810, 800, 780, 820, 800, 790, 810],
               [700, 950, 620, 880, 760, 1010, 680, 900, 740, 830], [900, 900, 900, 585, 1215, 900, 900, 900]]
# The explicit-rhythm test runs with a narrow and a wide QRS: in a wide one (LBBB) "the R peak" is a less exact
# fiducial for any detector, so its distances measure the detectors as much as the model.
MORPHOLOGIES = {"normal": "sinus rhythm, normal ECG", "lbbb": "left bundle branch block"}
SINUS_CODES, AF_CODES = ("SR",), ("AFIB",)


def _generate(generator, prompts, sampler, seed, rhythms=None):
    return generator.generate(prompts, seed, sampler, experience="off", rhythms=rhythms)


def _stats(values) -> dict:
    from sediff_jax.evaluation.physiology import summarize

    return summarize(values)


def evaluate_model(model, pairs, sinus_af, explicit, sampler) -> dict:
    from sediff_jax.evaluation.rhythm import peak_match_ms, rhythm_table
    from sediff_jax.generation import Generator, make_prompt

    generator = Generator(model, max_batch=FLAGS.max_batch)
    out = {"id": model.id, "scaffold": generator.uses_rhythm}
    fs = model.fs
    ecg = _generate(generator, pairs.prompts, sampler, FLAGS.seed)
    table = rhythm_table(ecg, fs)
    wanted = pairs.requested_hr_bpm
    out["paired"] = {name: _stats(np.abs(table[f"{name}_hr_bpm"] - wanted))
                     for name in ("xqrs", "neurokit2", "ours") if f"{name}_hr_bpm" in table}
    out["paired_rr_cv"] = {group: _stats(table["xqrs_rr_cv"][mask]) for group, mask in pairs_groups(pairs).items()}
    prompts, groups = sinus_af
    ecg = _generate(generator, prompts, sampler, FLAGS.seed + 1)
    table = rhythm_table(ecg, fs)
    wanted = np.array([p.hr for p in prompts], np.float64)
    out["prompts"] = {group: {"rr_cv": {name: _stats(table[f"{name}_rr_cv"][groups == group])
                                        for name in ("xqrs", "neurokit2") if f"{name}_rr_cv" in table},
                              "hr_error": _stats(np.abs(table["xqrs_hr_bpm"] - wanted)[groups == group])}
                      for group in ("sinus", "af")}
    if generator.uses_rhythm and explicit:
        plans, kinds = explicit
        out["explicit"] = {}
        for morphology, text in MORPHOLOGIES.items():
            prompts_ = [make_prompt(text, hr=plan.hr_bpm) for plan in plans]
            ecg = _generate(generator, prompts_, sampler, FLAGS.seed + 2, rhythms=plans)
            for detector in ("xqrs", "ours"):
                match = peak_match_ms(ecg, fs, [p.r_peaks_s for p in plans], detector)
                for kind in ("rr_ms", "rhythm_from"):
                    out["explicit"][f"{kind}/{morphology}/{detector}"] = _stats(match[kinds == kind])
    return out


def pairs_groups(pairs) -> dict[str, np.ndarray]:
    """Masks of the paired records whose report names sinus rhythm / atrial fibrillation (by their own text)."""
    from sediff_jax.generation.rhythm import rhythm_class

    classes = np.array([rhythm_class(p.text) for p in pairs.prompts])
    return {"sinus": np.isin(classes, ["sinus", "bradycardia", "tachycardia"]),
            "af": classes == "atrial_fibrillation"}


def markdown(results: dict, real: dict, meta: dict) -> str:
    def cell(s, digits=2):
        if not s or not s.get("n"):
            return "n/a"
        sem = s["sem"] if np.isfinite(s["sem"]) else float("nan")
        return f"{s['mean']:.{digits}f} ± {sem:.{digits}f} (median {s['median']:.{digits}f}, n={s['n']})"

    lines = [f"# Rhythm: {', '.join(results)}", "", meta["summary"], "",
             "| model | paired HR error, XQRS (bpm) | paired HR error, neurokit2 | sinus prompts RR CV (XQRS) | "
             "AF prompts RR CV (XQRS) | sinus prompts HR error, XQRS |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| {name}{' (scaffold)' if r['scaffold'] else ''} | {cell(r['paired']['xqrs'])} | "
            f"{cell(r['paired'].get('neurokit2'))} | {cell(r['prompts']['sinus']['rr_cv']['xqrs'], 3)} | "
            f"{cell(r['prompts']['af']['rr_cv']['xqrs'], 3)} | {cell(r['prompts']['sinus']['hr_error'])} |")
    explicit = {name: r["explicit"] for name, r in results.items() if r.get("explicit")}
    if explicit:
        lines += ["", "Explicit rhythm: distance (ms) from each requested R peak to the detected one, median per ECG "
                  "(1 sample = 10 ms at 100 Hz):", "",
                  "| model | source | morphology | XQRS | ours |", "|---|---|---|---|---|"]
        for name, e in explicit.items():
            for kind in ("rr_ms", "rhythm_from"):
                for morphology in MORPHOLOGIES:
                    lines.append(f"| {name} | {kind} | {morphology} | {cell(e[f'{kind}/{morphology}/xqrs'], 1)} | "
                                 f"{cell(e[f'{kind}/{morphology}/ours'], 1)} |")
    lines += ["", f"Real records of the paired set (XQRS RR CV): sinus {cell(real['sinus'], 3)}; "
              f"AF {cell(real['af'], 3)}.", ""]
    return "\n".join(lines)


def main(argv):
    del argv
    import jax

    from experiments.configs.common import dataset_dir
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import dataset_entries
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.evaluation.rhythm import rhythm_table
    from sediff_jax.generation import load_model, make_prompt, rhythm_from_rr
    from sediff_jax.generation.rhythm import RhythmPlan
    from sediff_jax.io.outputs import output_dir

    out = output_dir(FLAGS.out, overwrite=FLAGS.overwrite, flag="--out", tool="evaluate_rhythm")
    if not [item for item in FLAGS.checkpoints if item.strip()]:
        raise cli.UsageError("--checkpoints is empty; name at least one model as name=path")
    models = {}
    for item in FLAGS.checkpoints:
        name, _, path = item.partition("=")
        if not path:
            raise cli.UsageError(f"--checkpoints: {item!r} is not name=path")
        try:
            models[name] = load_model(path, FLAGS.which)
        except CheckpointError as e:
            raise cli.UsageError(f"--checkpoints: {name}: {e}") from None
        if FLAGS.steps > models[name].schedule.num_steps:
            raise cli.UsageError(f"--steps={FLAGS.steps} must be within 1-{models[name].schedule.num_steps} (model "
                                 f"{name}'s diffusion steps)")
    first = next(iter(models.values()))
    canonical = CanonicalConfig(fs=first.fs, duration_s=first.spec.duration_s)
    source = FLAGS.source_dir or dataset_dir("ptbxl")
    try:
        entries = dataset_entries("ptbxl", source, canonical.fs)
        pairs = real_pairs(entries, canonical, FLAGS.split, FLAGS.num_records)
    except (LayoutError, ValueError, OSError) as e:
        raise cli.UsageError(f"--source_dir={source} --split={FLAGS.split}: {e}") from None
    sampler = SamplerConfig(kind="ddim", num_steps=FLAGS.steps, guidance_scale=FLAGS.guidance_scale, eta=FLAGS.eta)

    prompts, groups = [], []
    for group, chosen in (("sinus", SINUS_PROMPTS), ("af", AF_PROMPTS)):
        for k, (text, hr) in enumerate(chosen):
            for _ in range(FLAGS.samples_per_prompt):
                prompts.append(make_prompt(text, age=45 + 5 * k, sex="MF"[k % 2], hr=hr))
                groups.append(group)
    duration = first.spec.duration_s
    plans = [rhythm_from_rr(rr, duration, where=f"RR list {i}") for i, rr in enumerate(RR_LISTS_MS)]
    kinds = ["rr_ms"] * len(plans)
    for record_id, ecg_record in list(zip(pairs.record_ids, pairs.ecg))[: FLAGS.num_rhythm_from]:
        from sediff_jax.signal.rpeaks import detect_r_peaks

        peaks = detect_r_peaks(ecg_record, pairs.fs) / pairs.fs
        if len(peaks) >= 2:
            plans.append(RhythmPlan(tuple(float(t) for t in peaks), f"record:{record_id}", "given"))
            kinds.append("rhythm_from")

    real = rhythm_table(pairs.ecg, pairs.fs, ["xqrs"])
    real_groups = {group: _stats(real["xqrs_rr_cv"][mask]) for group, mask in pairs_groups(pairs).items()}
    results = {}
    for name, model in models.items():
        print(f"{name}: {model.source}", flush=True)
        results[name] = evaluate_model(model, pairs, (prompts, np.array(groups)),
                                       (plans, np.array(kinds)), sampler)
    summary = (f"Paired: the first {len(pairs.record_ids)} usable records of PTB-XL {FLAGS.split} ({source}); "
               f"prompts: {len(SINUS_PROMPTS)} sinus and {len(AF_PROMPTS)} AF prompts x {FLAGS.samples_per_prompt}; "
               f"explicit: {len(RR_LISTS_MS)} RR lists and {kinds.count('rhythm_from')} records' R peaks, each with "
               f"the prompts {list(MORPHOLOGIES.values())}. DDIM-{FLAGS.steps}, eta {FLAGS.eta:g}, "
               f"guidance {FLAGS.guidance_scale:g}, "
               f"experience off, seed {FLAGS.seed}. Lead II; mean ± s.e. (median, n).")
    meta = {"summary": summary}
    report = markdown(results, real_groups, meta)
    cli.publish(out, {"rhythm.json": {"models": results, "real": real_groups, "summary": summary,
                                      "device": str(jax.devices()[0].device_kind), **cli.provenance()}},
                {"rhythm.md": report})
    print(report)
    return 0


if __name__ == "__main__":
    cli.run(main)
