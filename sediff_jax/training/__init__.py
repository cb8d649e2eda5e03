"""Training: the config schema and its checks (`config`), each stage's models, data and steps (`stages`), the train
state (`state`), jitted data-parallel steps (`steps`), a start from a trained model (`warm_start`), metric writers
(`metrics`) and the loop with resume (`loop.train`). Device meshes live in `sediff_jax.parallel`, checkpoints in
`sediff_jax.checkpoints`."""

from sediff_jax.parallel import batch_sharding, make_mesh, replicated_sharding, shard_batch
from sediff_jax.training.state import OptimizerConfig, TrainState
