"""What the evaluation networks (ECG-text CLIP, downstream classifier) share: the training loop over in-memory
arrays with ECG augmentation, batched inference, and single-file safetensors checkpoints.

These networks are small (about 0.4 M parameters) and trained on a few thousand records at most, in minutes, so
the whole training set lives in memory and one device trains them; the SE-Diff model itself is trained by
`sediff_jax.training` (sharded, resumable, Orbax).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sediff_jax.checkpoints.weights import flatten_params, unflatten_params, weights_id
from sediff_jax.io import atomic_path
from sediff_jax.checkpoints import CheckpointError
from sediff_jax.optim import OptimizerConfig, abstract_split, make_optimizer, split_params, update_ema

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class NetworkTrainConfig:
    """batch_size: records per step.  num_steps: optimiser steps.  learning_rate, warmup_steps, weight_decay:
    AdamW with cosine decay.  ema_decay: the returned weights are this EMA of the iterates.  crop_s: each step
    sees a random window of this many seconds (0: whole records).  amplitude_jitter: per-record gain drawn from
    1 +- this.  noise_mv: white noise std, mV.  seed: initialisation, order and augmentation."""

    batch_size: int = 64
    num_steps: int = 1000
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    crop_s: float = 9.0
    amplitude_jitter: float = 0.1
    noise_mv: float = 0.02
    seed: int = 0


def augment(key: Array, ecg: Array, crop: int, amplitude_jitter: float, noise_mv: float) -> Array:
    """A random `crop`-sample window of each record, a random gain and white noise.
    ecg: (batch, time, leads) mV -> (batch, crop, leads)."""
    k_start, k_gain, k_noise = jax.random.split(key, 3)
    batch, time = ecg.shape[:2]
    starts = jax.random.randint(k_start, (batch,), 0, time - crop + 1)
    windows = jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, crop, axis=0))(ecg, starts)
    gain = 1.0 + amplitude_jitter * jax.random.uniform(k_gain, (batch, 1, 1), minval=-1.0, maxval=1.0)
    return windows * gain + noise_mv * jax.random.normal(k_noise, windows.shape)


def train_network(
    model: nnx.Module,
    loss_fn: Callable[[nnx.Module, dict[str, Array]], tuple[Array, dict[str, Array]]],
    arrays: dict[str, np.ndarray],
    fs: float,
    config: NetworkTrainConfig,
    log: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 100,
) -> Any:
    """Train `model` on minibatches of `arrays` (each (n, ...), "ecg" (n, time, leads) mV, augmented on device);
    loss_fn(model, batch) -> (loss, metrics). Returns the EMA params (a pure dict for `nnx.merge` with the
    model's graphdef). Raises FloatingPointError when the loss stops being finite."""
    n = len(arrays["ecg"])
    if n < config.batch_size:
        raise ValueError(f"{n} training records is fewer than the batch size {config.batch_size}")
    crop = arrays["ecg"].shape[1] if config.crop_s <= 0 else min(int(round(config.crop_s * fs)), arrays["ecg"].shape[1])
    graphdef, params = split_params(model)
    tx = make_optimizer(OptimizerConfig(learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
                                        total_steps=config.num_steps, weight_decay=config.weight_decay))
    opt_state = tx.init(params)
    ema = jax.tree.map(jnp.copy, params)

    data = {name: jnp.asarray(value) for name, value in arrays.items()}  # on device once; steps gather rows

    @jax.jit
    def step(params, opt_state, ema, data, rows, key, i):
        batch = {name: value[rows] for name, value in data.items()}
        batch["ecg"] = augment(key, batch["ecg"], crop, config.amplitude_jitter, config.noise_mv)

        def objective(p):
            return loss_fn(nnx.merge(graphdef, p), batch)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, update_ema(ema, params, i, config.ema_decay), dict(metrics, loss=loss)

    rng = np.random.default_rng(config.seed)
    key = jax.random.key(config.seed)
    order, position = rng.permutation(n), 0
    for i in range(config.num_steps):
        if position + config.batch_size > n:
            order, position = rng.permutation(n), 0
        rows = np.sort(order[position:position + config.batch_size])
        position += config.batch_size
        params, opt_state, ema, metrics = step(params, opt_state, ema, data, jnp.asarray(rows, jnp.int32),
                                               jax.random.fold_in(key, i), jnp.int32(i))
        if (i + 1) % log_every == 0 or i + 1 == config.num_steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(metrics["loss"]):
                raise FloatingPointError(f"step {i + 1}: the loss is {metrics['loss']}; lower the learning rate")
            if log is not None:
                log(i + 1, metrics)
    return ema


def batched_apply(fn: Callable[[Array], Array], ecg: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """fn over `ecg` (n, time, leads) in batches (the last one padded, so one compiled shape); (n, ...) numpy."""
    ecg = np.asarray(ecg, np.float32)
    if ecg.ndim != 3:
        raise ValueError(f"ECGs must be (n, time, leads), got shape {ecg.shape}")
    if not np.isfinite(ecg).all():
        raise ValueError("ECGs contain NaN or inf")
    size = min(batch_size, len(ecg))
    out = []
    for start in range(0, len(ecg), size):
        part = ecg[start:start + size]
        padded = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])
        out.append(np.asarray(fn(jnp.asarray(padded)))[: len(part)])
    return np.concatenate(out)


def save_network(path: str | os.PathLike, params: Any, config: dict[str, Any]) -> Path:
    """Write params (float32) and a JSON config into one safetensors file, atomically."""
    from safetensors.numpy import save_file

    flat = {k: np.array(v, np.float32, order="C") for k, v in flatten_params(params, "params").items()}  # keeps 0-d
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={"config": json.dumps(config, sort_keys=True)})
    return path


def load_network(path: str | os.PathLike, build: Callable[[dict[str, Any]], nnx.Module], kind: str
                 ) -> tuple[nnx.GraphDef, Any, dict[str, Any], str]:
    """(graphdef, params, config, weights id) of a `save_network` file whose config has kind == `kind`;
    build(config) makes the module. A missing, truncated or foreign file raises CheckpointError naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            config = json.loads((f.metadata() or {}).get("config", "{}"))
            flat = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise CheckpointError(f"{path}: unreadable weights ({e})") from None
    if config.get("kind") != kind:
        raise CheckpointError(f"{path}: not a {kind} checkpoint (kind {config.get('kind')!r})")
    graphdef, template = abstract_split(lambda: build(config))
    return graphdef, unflatten_params(template, flat, "params", str(path)), config, weights_id(flat)
