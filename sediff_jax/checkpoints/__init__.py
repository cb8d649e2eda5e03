"""Checkpoints and model files: orbax stage checkpoints (last N + best, EMA weights as their own item, loader
position, meta), the safetensors layout of exported models, and the one error they raise."""

from sediff_jax.checkpoints.errors import CheckpointError
from sediff_jax.checkpoints.stage import Checkpointer, read_ema_params, read_meta, restore
from sediff_jax.checkpoints.weights import flatten_params, unflatten_params, weights_id

__all__ = ["CheckpointError", "Checkpointer", "flatten_params", "read_ema_params", "read_meta", "restore",
           "unflatten_params", "weights_id"]
