"""Training infrastructure: device meshes and shardings (train state, steps and loop come with stage 1/2)."""

from sediff_jax.training.mesh import batch_sharding, make_mesh, replicated_sharding, shard_batch
