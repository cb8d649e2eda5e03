r"""Generate 12-lead ECGs from text (+ age, sex, heart rate) with a trained SE-Diff model.

    python -m experiments.sample --text="sinus bradycardia, otherwise normal ECG" --age=63 --sex=M --hr=52 \
        --num_samples=4 --out_dir=out/brady
    python -m experiments.sample --prompts=prompts.csv --sampler=ddpm --steps=1000 --out_dir=out/batch

The default checkpoint is the one shipped in checkpoints/ (see checkpoints/README.md). Writes to --out_dir, per
ECG, a WFDB record `ecg_<prompt>_<sample>.hea/.dat` (12 named leads, mV, the prompt in the header comments) and
a standard-layout PNG; `samples.npz` with every ECG and its conditions; `manifest.json` (prompts, seed, sampler,
checkpoint id, measured heart rates, each ECG's rhythm, time). A model trained with the rhythm scaffold beats
where the simulator places the prompt's rhythm, or where --rr_ms / --rhythm_from say:

    python -m experiments.sample --text="left bundle branch block" --rhythm_from=patient/rec01 --out_dir=out/lbbb
    python -m experiments.sample --text="left bundle branch block" \
        --rhythm_from=examples/records/sinus_arrhythmia_0,examples/records/atrial_fibrillation_0 --out_dir=out/two

and each lead's amplitude comes from a retrieved patient with the prompt's findings, or from a record you name:

    python -m experiments.sample --text="left bundle branch block" --amplitudes_from=patient/rec01 --out_dir=out/mine
 Input errors stop before anything is written, naming the flag (and
the row of a prompt file); files appear in --out_dir only once every ECG has been generated.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from absl import flags

from experiments import cli
from sediff_jax.generation.model import SHIPPED_CHECKPOINT
from sediff_jax.io import jsonio

REPO = Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Exported model directory or training workdir (default: the shipped "
                    f"checkpoint, {SHIPPED_CHECKPOINT.relative_to(REPO)}).")
flags.DEFINE_string("text", None, "The report to generate from (or use --prompts).")
flags.DEFINE_float("age", None, "Age, years (0-120).")
flags.DEFINE_string("sex", None, "M or F.")
flags.DEFINE_float("hr", None, "Heart rate, bpm (20-300).")
flags.DEFINE_string("prompts", None, "CSV (header: text[,age,sex,hr,rr_ms,rhythm_from,amplitudes_from]) or JSONL "
                    "file of prompts.")
flags.DEFINE_list("rr_ms", None, "RR intervals (ms, 200-3000) the ECG beats with, e.g. 820,790,810,... (a model "
                  "trained with the rhythm scaffold); the first R peak falls at 0.3 s.")
flags.DEFINE_list("rhythm_from", None, "WFDB records whose R peaks the ECGs follow (their first 10 s): this "
                  "patient's rhythm with the prompt's morphology. Paths or PhysioNet records "
                  "pn://<database>/<version>/<folder>/<record>, comma-separated: one prompt is generated once per "
                  "record, one record serves every prompt, or N prompts (--prompts) pair with N records in order. A prompts file may instead have "
                  "a rhythm_from column.")
flags.DEFINE_string("amplitudes_from", None, "A WFDB record whose lead amplitudes (robust peak-to-peak, its first "
                    "10 s) every ECG takes, at --amplitude_strength, instead of a retrieved patient's: this patient's "
                    "voltages with the prompt's findings. A prompts file may instead have an amplitudes_from column.")
flags.DEFINE_integer("num_samples", 1, "ECGs per prompt (>= 1).")
flags.DEFINE_integer("seed", 0, "Random seed; the same seed and prompts give the same ECGs on any device count.")
flags.DEFINE_enum("sampler", "ddim", ["ddim", "ddpm"], "DDIM (deterministic at --eta=0) or ancestral DDPM.")
flags.DEFINE_integer("steps", 50, "Reverse steps (1 .. the model's training steps, e.g. 1000 for full DDPM).")
flags.DEFINE_float("guidance_scale", 2.0, "Classifier-free guidance: 0 unconditional, 1 conditional, > 1 stronger.")
flags.DEFINE_float("eta", 1.0, "DDIM noise in [0, 1]: 0 deterministic, 1 (default) DDPM's ancestral noise on the "
                   "DDIM step subsequence; DDIM-50 with eta 1 matched DDPM-1000's heart-rate error (docs/generation.md).")
flags.DEFINE_float("clip_x0", None, "Clip the predicted clean latent to +-this (default: the model's, 3 for unit-"
                   "variance latents; inf: no clipping).")
flags.DEFINE_float("simulator_guidance", 0.0, "Simulator-consistency guidance scale (0: off; see docs/generation.md).")
flags.DEFINE_enum("experience", "auto", ["auto", "off"], "Retrieved clinical experience (auto: when available).")
flags.DEFINE_string("out_dir", None, "Output directory (new or empty; see --overwrite).", required=True)
flags.DEFINE_bool("overwrite", False, "Replace this tool's earlier outputs in --out_dir (the files its record "
                  "there, .sediff_outputs.json, lists, if unchanged); a folder holding any other file refuses.")
flags.DEFINE_bool("png", True, "Write a standard-layout 12-lead PNG per ECG.")
flags.DEFINE_integer("max_batch", 64, "ECGs sampled together (memory).")


cli.check_int("num_samples", 1)
cli.check_sampling_flags()
cli.define_variety_flags()
cli.check_float("clip_x0", 0, low_open=True, allow_inf=True)
cli.check_float("simulator_guidance", 0)
cli.check_int("max_batch", 1)

UsageError = cli.UsageError


def _prompts():
    from sediff_jax.generation import PromptError, make_prompt, read_prompts, with_rhythm_records

    if FLAGS.num_samples < 1:
        raise UsageError(f"--num_samples={FLAGS.num_samples} must be >= 1")
    if FLAGS.rr_ms is not None and FLAGS.rhythm_from is not None:
        raise UsageError("--rr_ms and --rhythm_from both give the rhythm; pass one")
    if FLAGS.prompts is not None:
        if FLAGS.text is not None or any(v is not None for v in (FLAGS.age, FLAGS.sex, FLAGS.hr, FLAGS.rr_ms)):
            raise UsageError("--prompts cannot be combined with --text/--age/--sex/--hr/--rr_ms (put them in the "
                             "file)")
        try:
            prompts = read_prompts(FLAGS.prompts)
        except PromptError as e:
            raise UsageError(str(e)) from None
    elif FLAGS.text is None:
        raise UsageError("--text or --prompts is required")
    else:
        try:
            prompts = [make_prompt(FLAGS.text, FLAGS.age, FLAGS.sex, FLAGS.hr, rr_ms=FLAGS.rr_ms)]
        except PromptError as e:
            raise UsageError(str(e)) from None
    if FLAGS.amplitudes_from is not None:
        if not FLAGS.amplitudes_from.strip() or any(p.amplitudes_from for p in prompts):
            raise UsageError("--amplitudes_from is empty, or the prompts file has an amplitudes_from column too; "
                             "pass one")
        prompts = [dataclasses.replace(p, amplitudes_from=FLAGS.amplitudes_from.strip()) for p in prompts]
    try:
        return with_rhythm_records(prompts, FLAGS.rhythm_from, where="--rhythm_from")
    except PromptError as e:
        raise UsageError(str(e)) from None


def _sampler_config(model=None):
    """The sampler the flags ask for (checked before the model loads; --steps against the model once it has)."""
    from sediff_jax.diffusion.sampling import SamplerConfig

    limit = model.schedule.num_steps if model is not None else FLAGS.steps
    if not 1 <= FLAGS.steps <= limit:
        raise UsageError(f"--steps={FLAGS.steps} must be within 1-{limit} (the model's diffusion steps)")
    try:
        return SamplerConfig(kind=FLAGS.sampler, num_steps=FLAGS.steps, guidance_scale=FLAGS.guidance_scale,
                             eta=FLAGS.eta, simulator_guidance=FLAGS.simulator_guidance, clip_x0=FLAGS.clip_x0,
                             **cli.variety_options())
    except ValueError as e:
        raise UsageError(f"--{str(e).split('=')[0]}: {e}") from None


def experience_summary(generator, prompts, experience: str) -> dict:
    """What experience the prompts were conditioned on, for the manifest."""
    if experience == "off":
        return {"mode": "off"}
    if generator.prompt_experience is None:
        return {"mode": "auto", "used": False, "why": "the model was trained without experience (or its corpus "
                                                      "is missing)"}
    return {"mode": "auto", "used": True, "reports": generator.experience_reports(prompts, experience)}


def generate_files(out, prompts, generator, config, seed: int, num_samples: int, png: bool,
                   experience: str) -> dict:
    """Generate and write everything into `out` (an io.outputs.OutputDir); returns the manifest.  Nothing is
    written until every ECG exists; this tool's earlier outputs there are replaced only then."""
    import jax
    import numpy as np

    from sediff_jax.generation.outputs import SAMPLES_FILE, sampler_summary, write_generated
    from sediff_jax.io import atomic_directory

    model = generator.model
    out_dir = out.path
    expanded = [(i, k, p) for i, p in enumerate(prompts) for k in range(num_samples)]
    start = time.perf_counter()
    total = config.num_steps * -(-len(expanded) // generator.max_batch)
    from sediff_jax.generation import PromptError

    try:  # before anything is written: a rhythm the model cannot follow, or that does not fit, stops here,
        plans = generator.plan_rhythms([p for _, _, p in expanded], seed)  # and so does an unusable amplitude record
        generator.amplitude_targets([p for _, _, p in expanded], config, experience, seed)
    except PromptError as e:  # (RhythmError and AmplitudeError are ones)
        raise UsageError(str(e)) from None
    with cli.Progress(total, f"{config.kind}-{config.num_steps}", unit="step") as progress:
        ecg = generator.generate([p for _, _, p in expanded], seed, config, experience, progress.update, plans)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(ecg)):
        raise RuntimeError(f"{model.source}: the model produced non-finite ECGs (nothing was written)")

    out.mkdir()
    with atomic_directory(out_dir) as tmp:
        records = write_generated(tmp, ecg, expanded, plans, model, config, seed, png)
        manifest = {
            "prompts": [p.as_dict() for p in prompts], "num_samples": num_samples, "seed": seed,
            "sampler": sampler_summary(config, generator.latent_clip,
                                       generator.lead_amplitude_source(config, experience),
                                       any(p.amplitudes_from for p in prompts)),
            "experience": experience_summary(generator, prompts, experience),
            "checkpoint": {"path": str(model.source), "id": model.id,
                           "training": model.spec.training},
            "fs": model.fs, "samples": len(expanded), "records": records, "npz": SAMPLES_FILE,
            "seconds": round(seconds, 2), "device": f"{jax.devices()[0].device_kind} x{len(jax.devices())}",
            **cli.provenance(),
        }
        (tmp / "manifest.json").write_text(jsonio.dumps(manifest, indent=1) + "\n")
        out.clear(keep=[tmp])  # this tool's earlier outputs (--overwrite); the new ones are complete
        out.install(sorted(tmp.iterdir(), key=lambda f: f.name == "manifest.json"))  # the manifest last
    return manifest


def _model_steps(checkpoint: str) -> int | None:
    """The diffusion steps of an exported model, from its config.json alone (checked field by field; None when
    the checkpoint is not an exported model), so that --steps is checked before the model loads."""
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.checkpoints.exported import is_exported, read_exported_spec

    if not is_exported(checkpoint):
        return None  # a training workdir, or nothing: load_model says what is wrong
    try:
        return read_exported_spec(checkpoint).schedule_steps
    except CheckpointError as e:
        raise UsageError(f"--checkpoint: {e}") from None


def main(argv):
    del argv
    from sediff_jax.generation import Generator
    from sediff_jax.io.outputs import output_dir
    from sediff_jax.checkpoints import CheckpointError


    prompts = _prompts()
    _sampler_config()  # bad sampling flags stop here, before the model loads
    out = output_dir(FLAGS.out_dir, overwrite=FLAGS.overwrite, tool="sample")
    checkpoint = FLAGS.checkpoint or str(SHIPPED_CHECKPOINT)
    limit = _model_steps(checkpoint)
    if limit is not None and FLAGS.steps > limit:  # before the model load
        raise UsageError(f"--steps={FLAGS.steps} must be within 1-{limit} (the model's diffusion steps)")
    try:
        model = cli.load_model(checkpoint)
    except CheckpointError as e:
        raise UsageError(f"--checkpoint: {e}") from None
    config = _sampler_config(model)
    generator = Generator(model, max_batch=FLAGS.max_batch)
    if FLAGS.experience == "auto" and generator.experience_error is not None:
        raise UsageError(f"--experience=auto: {generator.experience_error}")
    manifest = generate_files(out, prompts, generator, config, FLAGS.seed, FLAGS.num_samples, FLAGS.png,
                              FLAGS.experience)
    print(f"wrote {manifest['samples']} ECG(s) ({config.kind}-{config.num_steps}, guidance "
          f"{config.guidance_scale:g}, {manifest['seconds']:.1f} s) to {out.path.resolve()}/")


if __name__ == "__main__":
    cli.run(main)
