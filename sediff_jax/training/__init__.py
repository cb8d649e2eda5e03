"""Training: device meshes and shardings, the train state, jitted data-parallel steps of both stages, orbax
checkpoints, metric writers and the loop (`sediff_jax.training.loop.train`)."""

from sediff_jax.parallel import batch_sharding, make_mesh, replicated_sharding, shard_batch
from sediff_jax.training.state import OptimizerConfig, TrainState
