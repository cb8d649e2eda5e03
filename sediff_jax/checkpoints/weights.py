"""Parameter trees as flat safetensors tensors ('<prefix>/<path>'), and the id of a set of weights: the layout of
exported SE-Diff models and of the evaluation networks' files."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np

from sediff_jax.checkpoints.errors import CheckpointError


def _tensor_name(prefix: str, path) -> str:
    """'denoiser/down/0/conv1/kernel' for a pytree key path."""
    return "/".join([prefix] + [str(getattr(p, "key", getattr(p, "idx", p))) for p in path])


def flatten_params(params: Any, prefix: str) -> dict[str, np.ndarray]:
    """{'<prefix>/<path>': array} of a params pytree (the safetensors layout of exported models)."""
    return {_tensor_name(prefix, path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def unflatten_params(template: Any, flat: dict[str, np.ndarray], prefix: str, where: str) -> Any:
    """`template`'s tree with its leaves taken from `flat`; every name and shape must match."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves, wanted = [], set()
    for path, leaf in paths:
        name = _tensor_name(prefix, path)
        wanted.add(name)
        if name not in flat:
            raise CheckpointError(f"{where}: incompatible checkpoint, tensor {name!r} is missing")
        value = flat[name]
        if value.shape != leaf.shape:
            raise CheckpointError(f"{where}: incompatible checkpoint, tensor {name!r} has shape {value.shape}, "
                                  f"the model needs {leaf.shape}")
        leaves.append(np.asarray(value, np.float32) if np.issubdtype(value.dtype, np.floating) else value)
    extra = sorted(k for k in flat if k.startswith(prefix + "/") and k not in wanted)
    if extra:
        raise CheckpointError(f"{where}: incompatible checkpoint, unexpected tensors {extra[:3]}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def weights_id(flat: dict[str, np.ndarray]) -> str:
    """12 hex digits of SHA-256 over the tensors' names and bytes: the id of a set of weights."""
    digest = hashlib.sha256()
    for name in sorted(flat):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(flat[name]).tobytes())
    return digest.hexdigest()[:12]
