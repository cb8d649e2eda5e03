"""The files of a generation run, as `experiments/sample.py` writes them: per ECG a WFDB record (12 named leads,
mV, the prompt, seed, sampler, model and rhythm in its header comments) and optionally a PNG; `samples.npz` with
every ECG and its conditions; and the manifest's per-ECG entries (measured heart rate, rhythm, beat placement)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sediff_jax.diffusion.sampling import SamplerConfig
from sediff_jax.generation.model import SEDiffModel
from sediff_jax.generation.prompts import Prompt
from sediff_jax.generation.rhythm import RhythmPlan
from sediff_jax.io import save_ecg_png, write_npz, write_wfdb
from sediff_jax.signal.measurement import beat_placement
from sediff_jax.signal.rpeaks import detect_r_peaks, heart_rate_bpm

SAMPLES_FILE = "samples.npz"


def ecg_name(prompt_index: int, sample_index: int) -> str:
    """The file stem of sample `sample_index` of prompt `prompt_index` (ecg_<prompt>_<sample>)."""
    return f"ecg_{prompt_index:03d}_{sample_index:02d}"


def sampler_summary(sampler: SamplerConfig, latent_clip: float, lead_amplitudes: str | None = None,
                    from_records: bool = False) -> dict[str, Any]:
    """The sampler settings a manifest records (clip_x0: the clip actually used; lead_amplitudes: where the
    amplitudes came from, 'auto' resolved by `Generator.lead_amplitude_source`, else as configured;
    from_records: some prompts name an `amplitudes_from` record, which they take instead)."""
    source = lead_amplitudes or sampler.lead_amplitudes
    return {"kind": sampler.kind, "steps": sampler.num_steps, "guidance_scale": sampler.guidance_scale,
            "eta": sampler.eta, "simulator_guidance": sampler.simulator_guidance,
            "guidance_interval": sampler.guidance_interval, "group_scales": sampler.group_scales,
            "cads_noise": sampler.cads_noise, "cads_tau": sampler.cads_tau,
            "exact_limb_leads": sampler.exact_limb_leads, "lead_amplitudes": source,
            "amplitudes_from_records": from_records,
            "amplitude_strength": sampler.amplitude_strength if source != "model" or from_records else None,
            "clip_x0": latent_clip if sampler.clip_x0 is None else sampler.clip_x0}


def write_generated(directory: str | Path, ecg: np.ndarray, expanded: Sequence[tuple[int, int, Prompt]],
                    plans: Sequence[RhythmPlan | None], model: SEDiffModel, sampler: SamplerConfig, seed: int,
                    png: bool) -> list[dict[str, Any]]:
    """Write every generated ECG into `directory` (each file atomically) and samples.npz; return the manifest's
    per-ECG entries.

    ecg: (n, time, 12) mV at model.fs, finite.  expanded: (prompt index, sample index, prompt) of each row.
    plans: each row's rhythm plan (None for a model without the rhythm scaffold)."""
    directory = Path(directory)
    records = []
    for n, (i, k, p) in enumerate(expanded):
        name = ecg_name(i, k)
        peaks = detect_r_peaks(ecg[n], model.fs)  # (finite: the caller checked)
        measured = heart_rate_bpm(peaks, model.fs)
        comments = ["sediff_jax generated ECG (synthetic; not for clinical use)", f"text: {p.text}",
                    f"age: {'' if p.age is None else f'{p.age:g}'}", f"sex: {p.sex or ''}",
                    f"hr_bpm: {'' if p.hr is None else f'{p.hr:g}'}", f"seed: {seed}", f"sample: {k}",
                    f"sampler: {sampler.kind}-{sampler.num_steps} guidance {sampler.guidance_scale:g}",
                    f"checkpoint: {model.id}"]
        plan = plans[n]
        if plan is not None:
            comments += [f"rhythm: {plan.rhythm} from {plan.source}",
                         "rr_ms: " + ",".join(f"{x:.0f}" for x in plan.rr_ms)]
        write_wfdb(directory / name, ecg[n], model.fs, comments=comments)
        files = [f"{name}.hea", f"{name}.dat"]
        if png:
            title = f"Generated: {p.text[:70]}" + (f" | HR {p.hr:g}" if p.hr is not None else "")
            save_ecg_png(directory / f"{name}.png", ecg[n], model.fs, title=title)
            files.append(f"{name}.png")
        records.append({"prompt": i, "sample": k, "files": files,
                        "measured_hr_bpm": None if not np.isfinite(measured) else round(float(measured), 1),
                        **({} if plan is None else {"rhythm": plan.as_dict(), "r_peak_match":
                                                    beat_placement(ecg[n], model.fs, plan.r_peaks_s, peaks)})})
    nan = float("nan")
    write_npz(directory / SAMPLES_FILE, ecg, model.fs,
              text=np.array([p.text for _, _, p in expanded]),
              age=np.array([nan if p.age is None else p.age for _, _, p in expanded], np.float32),
              sex=np.array([p.sex or "" for _, _, p in expanded]),
              hr_bpm=np.array([nan if p.hr is None else p.hr for _, _, p in expanded], np.float32),
              prompt_index=np.array([i for i, _, _ in expanded]),
              sample_index=np.array([k for _, k, _ in expanded]), seed=seed, checkpoint_id=model.id)
    return records
