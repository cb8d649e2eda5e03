r"""Does a model keep the rhythm it is asked for? Heart rate, RR regularity and beat placement, measured by
detectors we did not write (wfdb's XQRS; neurokit2 when installed), for one or more models in one table.

    python -m experiments.evaluate_rhythm --checkpoints=scaffold=runs/scaffold,paper=runs/paper \
        --source_dir=data/ptb-xl-full --num_records=200 --out=eval/rhythm

The protocol (paired records of PTB-XL --split, sinus and AF prompts, explicit rhythms) is
`sediff_jax.evaluation.rhythm_protocol`. Writes --out/rhythm.json and --out/rhythm.md (atomically).
"""

from __future__ import annotations


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
    from sediff_jax.evaluation.rhythm_protocol import (AF_PROMPTS, MORPHOLOGIES, RR_LISTS_MS, SINUS_PROMPTS,
                                                       evaluate_rhythm, explicit_rhythms, real_rhythm,
                                                       rhythm_markdown, sinus_af_prompts)
    from sediff_jax.generation import Generator, load_model
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

    sinus_af = sinus_af_prompts(FLAGS.samples_per_prompt)
    plans, kinds = explicit_rhythms(pairs, first.spec.duration_s, FLAGS.num_rhythm_from)
    real_groups = real_rhythm(pairs)
    results = {}
    for name, model in models.items():
        print(f"{name}: {model.source}", flush=True)
        results[name] = evaluate_rhythm(Generator(model, max_batch=FLAGS.max_batch), pairs, sinus_af,
                                        (plans, kinds), sampler, FLAGS.seed)
    summary = (f"Paired: the first {len(pairs.record_ids)} usable records of PTB-XL {FLAGS.split} ({source}); "
               f"prompts: {len(SINUS_PROMPTS)} sinus and {len(AF_PROMPTS)} AF prompts x {FLAGS.samples_per_prompt}; "
               f"explicit: {len(RR_LISTS_MS)} RR lists and {int((kinds == 'rhythm_from').sum())} records' R peaks, each with "
               f"the prompts {list(MORPHOLOGIES.values())}. DDIM-{FLAGS.steps}, eta {FLAGS.eta:g}, "
               f"guidance {FLAGS.guidance_scale:g}, "
               f"experience off, seed {FLAGS.seed}. Lead II; mean ± s.e. (median, n).")
    report = rhythm_markdown(results, real_groups, summary)
    cli.publish(out, {"rhythm.json": {"models": results, "real": real_groups, "summary": summary,
                                      "device": str(jax.devices()[0].device_kind), **cli.provenance()}},
                {"rhythm.md": report})
    print(report)
    return 0


if __name__ == "__main__":
    cli.run(main)
