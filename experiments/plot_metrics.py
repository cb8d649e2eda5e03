r"""Loss curves of one or more training runs: a PNG of the train curves and a Markdown table of the last
validation metrics.

  python -m experiments.plot_metrics --stage=diffusion --runs=full=runs/full,ddpm_only=runs/ddpm \
      --metrics=ddpm,euler,interlead,sim --out=docs/images/ablation_curves.png
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "label=workdir pairs (or workdirs; the label is then the folder name).", required=True)
flags.DEFINE_enum("stage", "diffusion", ["vae", "diffusion"], "Which stage's metrics.")
flags.DEFINE_list("metrics", ["total"], "Train metrics to plot, one panel each.")
flags.DEFINE_integer("smooth", 5, "Moving-average window over logged points (1: raw).")
flags.DEFINE_string("out", None, "PNG to write (optional).")
cli.check_int("smooth", 1)


def _runs() -> list[tuple[str, str]]:
    runs = []
    for item in FLAGS.runs:
        label, _, path = item.partition("=")
        runs.append((label, path) if path else (os.path.basename(os.path.normpath(label)), label))
    return runs


def main(argv):
    del argv
    from sediff_jax.io.outputs import usable_path

    if FLAGS.out is not None:
        usable_path(FLAGS.out, "--out")  # checked before any work
    from sediff_jax.training.metrics import read_metrics

    curves, finals = {}, {}
    for label, workdir in _runs():
        path = os.path.join(workdir, FLAGS.stage, "metrics.jsonl")
        if not os.path.exists(path):
            raise app.UsageError(f"{path}: no metrics (is {workdir} a training workdir?)")
        curves[label] = read_metrics(path, "train")
        validation = read_metrics(path, "validation")
        finals[label] = validation[-1] if validation else {}
    columns = sorted({k for v in finals.values() for k in v if k not in ("step", "split")})
    print("| run | step | " + " | ".join(f"val {c}" for c in columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for label, final in finals.items():
        cells = [f"{final[c]:.4g}" if isinstance(final.get(c), (int, float)) else "-" for c in columns]
        print(f"| {label} | {final.get('step', '-')} | " + " | ".join(cells) + " |")
    if FLAGS.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sediff_jax.io.atomic import atomic_path

        fig, axes = plt.subplots(1, len(FLAGS.metrics), figsize=(4.2 * len(FLAGS.metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], FLAGS.metrics):
            for label, records in curves.items():
                points = [(r["step"], r[metric]) for r in records if isinstance(r.get(metric), (int, float))]
                if not points:
                    continue
                steps, values = map(np.asarray, zip(*points))
                k = max(1, min(FLAGS.smooth, len(values)))
                smooth = np.convolve(values, np.ones(k) / k, mode="valid")
                ax.plot(steps[k - 1 :], smooth, label=label, lw=1.3)
            ax.set_title(f"train {metric}")
            ax.set_xlabel("step")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(FLAGS.out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
