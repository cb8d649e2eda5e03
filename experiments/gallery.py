r"""Generated ECGs next to the real ones whose report, age, sex and heart rate they were generated from.

    python -m experiments.gallery --prepared=runs/ptbxl100/prepared/ptbxl/100hz_10s/1.0.0 --split=test \
        --records=3 --out=docs/images/gallery.png

Picks the first `--records` records of the split with distinct reports, generates one ECG for each from its
conditions (DDIM, `--steps`, `--guidance_scale`), and draws leads II and V2 of the real (left) and the generated
(right) record, with the requested and the measured heart rate.
"""

from __future__ import annotations

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Model (default: the shipped checkpoint).")
flags.DEFINE_string("prepared", None, "A prepared dataset version directory.", required=True)
flags.DEFINE_string("split", "test", "Split to take the records from.")
flags.DEFINE_integer("records", 3, "Number of records.")
flags.DEFINE_integer("skip", 0, "Records to skip before picking.")
flags.DEFINE_integer("steps", 50, "DDIM steps.")
flags.DEFINE_float("guidance_scale", 2.0, "Classifier-free guidance scale.")
flags.DEFINE_float("eta", 1.0, "DDIM noise (as experiments/sample.py).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("out", "gallery.png", "Output PNG (new, or see --overwrite).")
flags.DEFINE_bool("overwrite", False, "Replace a PNG this tool wrote earlier at --out (never another file).")
cli.check_int("records", 1)
cli.check_int("skip", 0)
cli.check_sampling_flags()


def main(argv):
    del argv
    from pathlib import Path

    from sediff_jax.io.outputs import output_files

    out = output_files([FLAGS.out], tool="gallery", overwrite=FLAGS.overwrite)  # checked before any work
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sediff_jax.data.builder import open_split
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.evaluation import measured_heart_rates
    from sediff_jax.generation import SHIPPED_CHECKPOINT, Generator, make_prompt
    from sediff_jax.io import atomic_path
    from sediff_jax.leads import LEAD_NAMES

    model = cli.load_model(FLAGS.checkpoint or SHIPPED_CHECKPOINT)
    source = open_split(FLAGS.prepared, FLAGS.split)
    examples, seen = [], set()
    for i in range(FLAGS.skip, len(source)):
        example = source[i]
        text = example["text"].decode() if isinstance(example["text"], bytes) else str(example["text"])
        if text in seen or not text.strip():
            continue
        seen.add(text)
        examples.append((text, example))
        if len(examples) == FLAGS.records:
            break
    sex = {0: "M", 1: "F"}
    prompts = [make_prompt(text, None if not np.isfinite(e["age"]) else float(e["age"]), sex.get(int(e["sex"])),
                           None if not np.isfinite(e["hr_bpm"]) else float(e["hr_bpm"])) for text, e in examples]
    generated = Generator(model).generate(prompts, FLAGS.seed, SamplerConfig(
        kind="ddim", num_steps=FLAGS.steps, guidance_scale=FLAGS.guidance_scale, eta=FLAGS.eta))

    leads = [LEAD_NAMES.index("II"), LEAD_NAMES.index("V2")]
    fig, axes = plt.subplots(2 * len(prompts), 2, figsize=(14, 2.0 * 2 * len(prompts)), sharex=True, squeeze=False)
    t = np.arange(model.num_samples) / model.fs
    real = np.stack([np.asarray(e["ecg"]) for _, e in examples])
    rates = measured_heart_rates(np.concatenate([real, generated]), model.fs).reshape(2, len(prompts))
    for row, (prompt, fake) in enumerate(zip(prompts, generated)):
        for col, (ecg, what) in enumerate(((real[row], "real"), (fake, "generated"))):
            hr = rates[col, row]
            for k, lead in enumerate(leads):
                ax = axes[2 * row + k, col]
                ax.plot(t, ecg[:, lead], lw=0.8, color="black" if col == 0 else "tab:blue")
                ax.set_ylabel(LEAD_NAMES[lead], rotation=0, labelpad=12)
                ax.set_ylim(-1.5, 2.5)
                ax.grid(alpha=0.3)
                if k == 0:
                    title = prompt.text if len(prompt.text) < 75 else prompt.text[:72] + "..."
                    ax.set_title(f"{what}: {title}\nHR measured {hr:.0f} bpm"
                                 + (f" (requested {prompt.hr:.0f})" if prompt.hr is not None else ""), fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("s")
    fig.tight_layout()
    with out.writing(Path(FLAGS.out).name):
        with atomic_path(FLAGS.out) as tmp:
            fig.savefig(tmp, dpi=110)
    print(f"wrote {FLAGS.out} (model {model.id}, {len(prompts)} records of {FLAGS.prepared} {FLAGS.split})")


if __name__ == "__main__":
    cli.run(main)
