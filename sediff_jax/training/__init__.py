"""Training: the config schema and its checks (`config`), where examples come from (`sources`: the prepared
dataset, the latent cache, the loaders), each stage's models, steps, recipe and meta (`stages`), each stage as the
driver runs it (`stage_runs`), the train state (`state`), jitted data-parallel steps (`steps`), evaluators
(`evaluators`: the loss over records, stage 2's generated samples), a start from a trained model (`warm_start`),
metric writers (`metrics`) and the loop with resume (`loop`: `train`, `run_stage`). Device meshes live in
`sediff_jax.parallel`, checkpoints in `sediff_jax.checkpoints`."""

from sediff_jax.parallel import batch_sharding, make_mesh, replicated_sharding, shard_batch
from sediff_jax.training.state import OptimizerConfig, TrainState
