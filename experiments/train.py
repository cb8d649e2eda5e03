r"""Train SE-Diff: stage 1 (VAE + beat decoder) and/or stage 2 (text-conditioned latent diffusion with the
simulator losses), data-parallel over every device of every host, resumable.

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/sediff_tiny
  python -m experiments.train --config=experiments/configs/ptbxl100.py:no_interlead --workdir=runs/ptbxl100 \
      --config.stage=diffusion --config.diffusion.training.batch_size=64

Running the same command again resumes from the last checkpoint in --workdir. SIGTERM saves and exits.
Multi-host: pass --distributed (or set the coordinator via JAX's environment variables); every host runs the
same command.
"""

from __future__ import annotations

import json
import sys

from absl import flags, logging
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file, e.g. experiments/configs/tiny.py[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and caches go here.", required=True)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host training).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host; else from the environment).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host; else from the environment).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host; else from the environment).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from sediff_jax.io.outputs import check_workdir
    from sediff_jax.training.config import STAGES

    multi_host = FLAGS.distributed or bool(FLAGS.coordinator_address)
    # (one writer per workdir: a multi-host run's lock is taken by its first process, in train())
    check_workdir(FLAGS.workdir, "--workdir", lock=not multi_host)
    try:
        stage = FLAGS.config.get("stage")  # (a config file that failed to load reports it here)
    except OSError as e:
        raise cli.UsageError("--config: " + "; ".join(line.strip() for line in str(e).splitlines() if line.strip()))
    if stage not in STAGES:
        raise cli.UsageError(f"--config.stage={stage!r} is unknown; expected one of {', '.join(STAGES)}")
    from sediff_jax.training.config import resolve

    resolve(FLAGS.config)  # every value, --config.* overrides included, checked before any work (ConfigError)
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    from sediff_jax.data.sources import LayoutError
    from sediff_jax.simulator.priors import PriorError
    from sediff_jax.checkpoints import CheckpointError
    from sediff_jax.training.loop import TrainingDiverged, train

    logging.info("process %d of %d, %d devices (%d local)", jax.process_index(), jax.process_count(),
                 jax.device_count(), jax.local_device_count())
    try:
        results = train(FLAGS.config, FLAGS.workdir)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (CheckpointError, FileNotFoundError, LayoutError, PriorError) as e:
        cli.fail(str(e))
    if jax.process_index() == 0:
        for r in results:
            print(json.dumps({"stage": r.stage, "step": r.step, "stopped_early": r.stopped_early,
                              "train": r.last_metrics, "validation": r.eval_metrics, "test": r.test_metrics,
                              "seconds": round(r.seconds, 1)}))


if __name__ == "__main__":
    cli.run(main)
