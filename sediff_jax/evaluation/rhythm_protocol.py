"""Does a model keep the rhythm it is asked for? The rhythm protocol of `experiments/evaluate_rhythm.py`: heart
rate, RR regularity and beat placement of generated ECGs, measured by detectors we did not write (wfdb's XQRS;
neurokit2 when installed) beside ours.

Three parts, the same seeds for every model:
  * paired: one ECG per real record from its report, age, sex and measured heart rate; |HR error| against the
    record's rate, and the RR CV of the ECGs whose record's report names sinus rhythm / atrial fibrillation.
  * prompts: ECGs for each of 8 sinus and 8 atrial fibrillation prompts (rates 48-150 bpm); RR CV per ECG.
  * explicit rhythm (models trained with the scaffold): RR lists and the stored R peaks of real records, each with
    a narrow-QRS and a wide-QRS (LBBB) prompt; median distance from each requested R peak to the detected one.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sediff_jax.evaluation.paired import RealPairs
from sediff_jax.evaluation.physiology import summarize
from sediff_jax.evaluation.rhythm import peak_match_ms, rhythm_table
from sediff_jax.generation import Generator, Prompt, RhythmPlan, make_prompt, rhythm_from_rr
from sediff_jax.generation.rhythm import FIRST_R_S
from sediff_jax.rhythm import rhythm_class

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


def sinus_af_prompts(samples_per_prompt: int) -> tuple[list[Prompt], np.ndarray]:
    """(prompts, group of each: 'sinus' / 'af'): every sinus and AF prompt `samples_per_prompt` times."""
    prompts, groups = [], []
    for group, chosen in (("sinus", SINUS_PROMPTS), ("af", AF_PROMPTS)):
        for k, (text, hr) in enumerate(chosen):
            for _ in range(samples_per_prompt):
                prompts.append(make_prompt(text, age=45 + 5 * k, sex="MF"[k % 2], hr=hr))
                groups.append(group)
    return prompts, np.array(groups)


def explicit_rhythms(pairs: RealPairs, duration_s: float, num_records: int) -> tuple[list[RhythmPlan], np.ndarray]:
    """(plans, kind of each: 'rr_ms' / 'rhythm_from'): the RR lists (each cut to the beats that fit
    `duration_s`), then the stored R peaks of the first `num_records` pairs (those with a usable rhythm)."""
    plans = []
    for i, rr in enumerate(RR_LISTS_MS):
        fits = FIRST_R_S + np.cumsum(rr) / 1000.0 < duration_s  # every beat inside the ECG (`rhythm_from_rr`)
        plans.append(rhythm_from_rr(list(np.asarray(rr)[fits]), duration_s, where=f"RR list {i}"))
    kinds = ["rr_ms"] * len(plans)
    for plan in pairs.take(range(min(num_records, len(pairs.record_ids)))).rhythms(duration_s):
        if plan is not None:
            plans.append(plan)
            kinds.append("rhythm_from")
    return plans, np.array(kinds)


def rhythm_groups(pairs: RealPairs) -> dict[str, np.ndarray]:
    """Masks of the paired records whose report names sinus rhythm / atrial fibrillation (by their own text)."""
    classes = np.array([rhythm_class(p.text) for p in pairs.prompts])
    return {"sinus": np.isin(classes, ["sinus", "bradycardia", "tachycardia"]),
            "af": classes == "atrial_fibrillation"}


def real_rhythm(pairs: RealPairs) -> dict[str, dict[str, float]]:
    """XQRS RR CV summaries of the real sinus and AF records of the paired set."""
    real = rhythm_table(pairs.ecg, pairs.fs, ["xqrs"])
    return {group: summarize(real["xqrs_rr_cv"][mask]) for group, mask in rhythm_groups(pairs).items()}


def evaluate_rhythm(generator: Generator, pairs: RealPairs, sinus_af: tuple[list[Prompt], np.ndarray],
                    explicit: tuple[list[RhythmPlan], np.ndarray] | None, sampler, seed: int) -> dict[str, Any]:
    """The three parts for one model (experience off). Returns {"id", "scaffold", "paired": {detector: |HR
    error| summary}, "paired_rr_cv": {group: summary}, "prompts": {group: {"rr_cv": {detector: summary},
    "hr_error": summary}}, "explicit": {"<kind>/<morphology>/<detector>": distance summary (ms)} (scaffold
    models only)}."""
    def generate(prompts: Sequence[Prompt], offset: int, rhythms=None) -> np.ndarray:
        return generator.generate(prompts, seed + offset, sampler, experience="off", rhythms=rhythms)

    fs = generator.model.fs
    out: dict[str, Any] = {"id": generator.model.id, "scaffold": generator.uses_rhythm}
    table = rhythm_table(generate(pairs.prompts, 0), fs)
    wanted = pairs.requested_hr_bpm
    out["paired"] = {name: summarize(np.abs(table[f"{name}_hr_bpm"] - wanted))
                     for name in ("xqrs", "neurokit2", "ours") if f"{name}_hr_bpm" in table}
    out["paired_rr_cv"] = {group: summarize(table["xqrs_rr_cv"][mask]) for group, mask in rhythm_groups(pairs).items()}
    prompts, groups = sinus_af
    table = rhythm_table(generate(prompts, 1), fs)
    wanted = np.array([p.hr for p in prompts], np.float64)
    out["prompts"] = {group: {"rr_cv": {name: summarize(table[f"{name}_rr_cv"][groups == group])
                                        for name in ("xqrs", "neurokit2") if f"{name}_rr_cv" in table},
                              "hr_error": summarize(np.abs(table["xqrs_hr_bpm"] - wanted)[groups == group])}
                      for group in ("sinus", "af")}
    if generator.uses_rhythm and explicit:
        plans, kinds = explicit
        out["explicit"] = {}
        for morphology, text in MORPHOLOGIES.items():
            ecg = generate([make_prompt(text, hr=plan.hr_bpm) for plan in plans], 2, rhythms=plans)
            for detector in ("xqrs", "ours"):
                match = peak_match_ms(ecg, fs, [p.r_peaks_s for p in plans], detector)
                for kind in ("rr_ms", "rhythm_from"):
                    out["explicit"][f"{kind}/{morphology}/{detector}"] = summarize(match[kinds == kind])
    return out


def rhythm_markdown(results: dict[str, dict], real: dict, summary: str) -> str:
    """The protocol's results for several models as a Markdown report."""
    def cell(s, digits=2):
        if not s or not s.get("n"):
            return "n/a"
        sem = s["sem"] if np.isfinite(s["sem"]) else float("nan")
        return f"{s['mean']:.{digits}f} ± {sem:.{digits}f} (median {s['median']:.{digits}f}, n={s['n']})"

    lines = [f"# Rhythm: {', '.join(results)}", "", summary, "",
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
