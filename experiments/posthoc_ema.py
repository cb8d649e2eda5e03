r"""Choose a run's EMA length after training (post-hoc EMA, EDM2), on validation, and export the best.

    python -m experiments.posthoc_ema --workdir=runs/ptbxl100 --sigma_rel=0.05,0.07,0.09,0.12,0.15,0.2 \
        --validation_records=256 --out=checkpoints/sediff_posthoc --dtype=float16

For each relative width sigma_rel, the kept checkpoints of the run (up to --step, default the last) are combined
into the power-function EMA of that width (`sediff_jax.checkpoints.posthoc_ema`); each candidate and the run's
own EMA are scored by the denoising loss (epsilon MSE over 10 noise bands, the same draws for all) on the first
--validation_records records of the validation split, and the best of them (the run's own EMA included) is
exported to --out. Prints a table;
--report writes it as JSON. Keep checkpoints densely for this (--config.diffusion.training.max_to_keep): every
~EMA length / 4 steps matches widths from that spacing up to the whole run within a few per cent.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from experiments import cli
from experiments.benchmarks.timing import markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (with diffusion/) or a diffusion stage directory.",
                    required=True)
flags.DEFINE_list("sigma_rel", ["0.05", "0.07", "0.09", "0.12", "0.15", "0.2"], "Relative EMA widths to try, "
                  "each in (0, 0.2887) (EDM2's sigma_rel; a run's own EMA with decay 0.999 is ~0.09 for its first "
                  "~9,000 steps, where the warm-up bounds the decay).")
flags.DEFINE_integer("step", None, "The step to average up to (a kept checkpoint; default: the last).")
flags.DEFINE_integer("validation_records", 256, "Validation records to choose on (0: no choice; then --out "
                     "needs a single --sigma_rel).")
flags.DEFINE_enum("dataset", "ptbxl", ["ptbxl", "mimic"], "The run's dataset layout (for its validation records).")
flags.DEFINE_string("source_dir", None, "Dataset root (default: $SEDIFF_DATA_DIR/ptb-xl).")
flags.DEFINE_integer("seed", 0, "Seed of the loss's noise and timesteps.")
flags.DEFINE_string("out", None, "Export the chosen model here (as experiments/export_model.py).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float16"], "Exported weight precision.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
flags.DEFINE_string("report", None, "Also write the table as JSON here.")
cli.check_int("validation_records", 0)


def _sigma_rels() -> list[float]:
    try:
        values = [float(v) for v in FLAGS.sigma_rel]
    except ValueError:
        raise cli.UsageError(f"--sigma_rel={','.join(FLAGS.sigma_rel)}: numbers expected") from None
    from sediff_jax.checkpoints.posthoc_ema import power_exponent

    for v in values:
        try:
            power_exponent(v)
        except ValueError as e:
            raise cli.UsageError(f"--sigma_rel: {e}") from None
    if not values:
        raise cli.UsageError("--sigma_rel: give at least one width")
    return values


def main(argv):
    del argv
    from experiments.configs.common import dataset_dir
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import dataset_entries
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.evaluation.denoising import loss_by_noise_level
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.generation import export_model, load_model
    from sediff_jax.generation.model import check_export_target, load_posthoc_ema
    from sediff_jax.io import jsonio

    sigma_rels = _sigma_rels()
    if FLAGS.out and not FLAGS.validation_records and len(sigma_rels) != 1:
        raise cli.UsageError("--out without --validation_records needs exactly one --sigma_rel")
    try:
        if FLAGS.out:
            check_export_target(FLAGS.out, FLAGS.overwrite)
        own, candidates = load_posthoc_ema(FLAGS.workdir, sigma_rels, FLAGS.step)
    except (CheckpointError, FileExistsError, ValueError) as e:
        cli.fail(str(e))
    step = candidates[0][1].steps[-1]
    rows = [{"model": f"run's EMA, step {step}", "sigma_rel": None, "profile_error": 0.0, "id": own.id}]
    rows += [{"model": f"post-hoc sigma_rel={s:g}", "sigma_rel": s, "profile_error": round(fit.relative_error, 4),
              "max_coefficient": round(float(np.abs(fit.coefficients).max()), 3), "id": model.id}
             for s, (model, fit) in zip(sigma_rels, candidates)]
    chosen = 1 if len(candidates) == 1 else None  # a row of `rows`: 0 is the run's own EMA
    if FLAGS.validation_records:
        source = FLAGS.source_dir or dataset_dir(FLAGS.dataset)
        canonical = CanonicalConfig(fs=own.fs, duration_s=own.spec.duration_s)
        try:
            pairs = real_pairs(dataset_entries(FLAGS.dataset, source, canonical.fs), canonical, "validation",
                               FLAGS.validation_records)
        except (LayoutError, ValueError, OSError) as e:
            raise cli.UsageError(f"--dataset={FLAGS.dataset} --source_dir={source}: {e}") from None
        rhythms = pairs.rhythms(own.spec.duration_s)
        losses = [loss_by_noise_level(m, pairs.ecg, pairs.prompts, rhythms, 10, FLAGS.seed)["per_record"].mean(1)
                  for m in [own] + [model for model, _ in candidates]]
        for row, loss in zip(rows, losses):
            difference = loss - losses[0]
            row.update(validation_loss=round(float(loss.mean()), 5),
                       minus_own=round(float(difference.mean()), 5),
                       minus_own_se=round(float(difference.std(ddof=1) / np.sqrt(len(loss))), 5))
        chosen = int(np.argmin([float(l.mean()) for l in losses]))
    print(_table(rows))
    if chosen is not None:
        print(f"chosen: {rows[chosen]['model']}")
    if FLAGS.report:
        jsonio.write_json(FLAGS.report, {"workdir": FLAGS.workdir, "step": step, "rows": rows,
                                         "validation_records": FLAGS.validation_records,
                                         "chosen": None if chosen is None else rows[chosen]["model"]})
    if FLAGS.out and chosen is not None:
        model = own if chosen == 0 else candidates[chosen - 1][0]
        training = model.spec.training
        training.pop("workdir", None)
        training["posthoc_ema"] = {**training.get("posthoc_ema", {}), "chosen": rows[chosen]["model"],
                                   "validation": rows if FLAGS.validation_records else None}
        out = export_model(model, FLAGS.out, {"training": training}, overwrite=FLAGS.overwrite, dtype=FLAGS.dtype)
        print(f"exported {rows[chosen]['model']} of {FLAGS.workdir} to {out} (model id {load_model(out).id})")


def _table(rows: list[dict]) -> str:
    return markdown_table(
        ["model", "profile error", "validation loss", "minus the run's EMA (± s.e.)"],
        [(r["model"], f"{r['profile_error']:.4f}",
          f"{r['validation_loss']:.5f}" if "validation_loss" in r else "-",
          f"{r['minus_own']:+.5f} ± {r['minus_own_se']:.5f}" if "minus_own" in r else "-") for r in rows],
        [False, True, True, True])


if __name__ == "__main__":
    cli.run(main)
