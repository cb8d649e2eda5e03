"""The training part of the device bundle (`make device-bundle`): what a lent GPU machine needs to continue stage 2
(`make device-train`) without the data, in one git-ignored folder (`sediff_jax.training.carry`).

    python -m experiments.build_device_bundle --latent_cache=data/prepared/ptbxl/100hz_10s/1.0.0_latents/<vae id> \
        --experience_dir=runs/exp_patient --out=.device_bundle/train

Prints the bundle's parts and what a device call would carry with the repository, and fails when that is over
the limit.
"""

from __future__ import annotations

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("latent_cache", None, "The latent cache stage 2 trains from (its train and validation splits).",
                    required=True)
flags.DEFINE_string("experience_dir", None, "The experience directory of the model to continue (none: without).")
flags.DEFINE_string("out", ".device_bundle/train", "Bundle folder: new, or an earlier bundle, replaced once the new "
                    "one is complete (a folder of other files is refused).")
flags.DEFINE_list("also_carried", [".device_bundle/wheels", ".device_bundle/text_encodings.npz"],
                  "Other carried paths counted in the size check (those that exist).")
flags.DEFINE_float("limit_mib", 60.0, "Largest total carried per device call, repository included, MiB.")
cli.check_float("limit_mib", 0, 64, low_open=True)


def main(argv):
    del argv
    import os

    from sediff_jax.data.latents import LatentCacheError
    from sediff_jax.experience.profiles import ProfileError
    from sediff_jax.training.carry import BundleError, check_fits, write_training_bundle

    try:
        summary = write_training_bundle(FLAGS.latent_cache, FLAGS.out, FLAGS.experience_dir)
    except (BundleError, LatentCacheError, ProfileError, FileNotFoundError, ValueError) as e:
        cli.fail(str(e))
    encoder = summary["text_encoder"]
    print(f"bundle {FLAGS.out}: {summary['splits']} records, {summary['experience_records']} experience reports; "
          f"text encoder {encoder['vocab']} tokens, int8: token RMS error {encoder['relative_rms_token_error']:.4f} "
          f"of the full encoder's, pooled cosine >= {encoder['min_pooled_cosine']:.5f}")
    parts = [FLAGS.out] + [p for p in FLAGS.also_carried if os.path.exists(p)]
    try:
        sizes = check_fits(parts, ".", FLAGS.limit_mib)
    except BundleError as e:
        cli.fail(str(e))
    for name, mib in sizes.items():
        print(f"  {name:40s} {mib:7.1f} MiB")
    print(f"a device call carries {sizes['total']:.1f} MiB of {FLAGS.limit_mib:g}")


if __name__ == "__main__":
    cli.run(main)
