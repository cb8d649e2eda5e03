"""Device meshes for data parallelism with `jax.jit` (not `jax.pmap`).

The batch axis is sharded over a one-dimensional mesh axis `data` of type `AxisType.Auto`; parameters are
replicated; XLA inserts the collectives (e.g. the gradient all-reduce). `jax.make_mesh` defaults to Explicit
axes since JAX 0.9, which diffrax's solves reject, hence the explicit Auto (docs/training.md, "Parallelism").
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D `data` mesh (Auto axis) over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree, mesh: Mesh):
    """Place every leaf (leading axis = global batch, divisible by the mesh size) batch-sharded on `mesh`.

    Single-process only: with several processes, each host holds its own slice and global arrays are built
    with `jax.make_array_from_process_local_data`.
    """
    size = mesh.devices.size
    for leaf in jax.tree.leaves(tree):
        if leaf.shape[0] % size:
            raise ValueError(f"batch of {leaf.shape[0]} does not divide evenly over {size} devices")
    return jax.device_put(tree, batch_sharding(mesh))


def host_local_to_global(batch: dict, mesh: Mesh) -> dict:
    """Global batch-sharded arrays from each process's local slice of a batch (multi-host or not).

    Numeric NumPy leaves (leading axis = this host's share of the batch) become `jax.Array`s of the global
    batch via `jax.make_array_from_process_local_data`; string (object) fields stay on the host.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        out[name] = value if value.dtype == object else jax.make_array_from_process_local_data(sharding, value)
    return out
