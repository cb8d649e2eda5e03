"""The evaluation networks: a 1-D ResNet ECG encoder, the ECG-text CLIP model built on it, and the downstream
classifier built on it, in Flax NNX.

`ResNet1D` maps `ecg: (batch, time, 12)` mV to a feature vector `(batch, channels[-1])` (a stride-2 stem, one
residual stage per width, each halving the time axis, GroupNorm + SiLU, global average pooling), so it takes any
length. `ECGTextCLIP` projects those features and a frozen sentence vector of the project's text encoder into a
shared unit sphere (the FID, precision/recall and CLIP-score features); `ECGClassifier` adds a linear head.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ECGEncoderConfig:
    """num_leads: input channels.  channels: width of the stem and of each residual stage (each stage halves
    time).  kernel_size: conv kernel (samples).  num_groups: GroupNorm groups.  embed_dim: CLIP space.
    text_dim: the sentence vectors' width (MiniLM: 384).  text_hidden: the text projection's hidden width."""

    num_leads: int = 12
    channels: tuple[int, ...] = (32, 64, 128, 128)
    kernel_size: int = 7
    num_groups: int = 8
    embed_dim: int = 128
    text_dim: int = 384
    text_hidden: int = 256

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]


class _Stage(nnx.Module):
    """Residual block with stride 2: (batch, time, c_in) -> (batch, ceil(time / 2), c_out)."""

    def __init__(self, c_in: int, c_out: int, config: ECGEncoderConfig, *, rngs: nnx.Rngs):
        k = (config.kernel_size,)
        self.norm1 = nnx.GroupNorm(c_in, num_groups=min(config.num_groups, c_in), rngs=rngs)
        self.conv1 = nnx.Conv(c_in, c_out, k, strides=(2,), padding="SAME", rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=min(config.num_groups, c_out), rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, k, padding="SAME", rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1,), strides=(2,), rngs=rngs)

    def __call__(self, x: Array) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + self.skip(x)


class ResNet1D(nnx.Module):
    """ecg (batch, time, num_leads) mV -> features (batch, channels[-1])."""

    def __init__(self, config: ECGEncoderConfig, *, rngs: nnx.Rngs):
        c = config.channels
        self.stem = nnx.Conv(config.num_leads, c[0], (config.kernel_size,), strides=(2,), padding="SAME", rngs=rngs)
        self.stages = nnx.List([_Stage(a, b, config, rngs=rngs) for a, b in zip(c[:-1], c[1:])])
        self.norm_out = nnx.GroupNorm(c[-1], num_groups=min(config.num_groups, c[-1]), rngs=rngs)

    def tokens(self, ecg: Array) -> Array:
        """ecg (batch, time, num_leads) mV -> features along time (batch, ceil(time / 2 ** len(channels)),
        channels[-1]), before the pooling (REPA's alignment targets)."""
        h = self.stem(ecg)
        for stage in self.stages:
            h = stage(h)
        return jax.nn.silu(self.norm_out(h))

    def __call__(self, ecg: Array) -> Array:
        return jnp.mean(self.tokens(ecg), axis=1)


def _normalize(x: Array) -> Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


class ECGTextCLIP(nnx.Module):
    """ECG tower (ResNet1D + linear) and text tower (MLP on frozen sentence vectors) into a unit sphere, with a
    learned temperature (initialised at 1/0.07, as CLIP)."""

    def __init__(self, config: ECGEncoderConfig, *, rngs: nnx.Rngs):
        self.encoder = ResNet1D(config, rngs=rngs)
        self.ecg_proj = nnx.Linear(config.feature_dim, config.embed_dim, rngs=rngs)
        self.text_hidden = nnx.Linear(config.text_dim, config.text_hidden, rngs=rngs)
        self.text_proj = nnx.Linear(config.text_hidden, config.embed_dim, rngs=rngs)
        self.log_scale = nnx.Param(jnp.log(jnp.float32(1 / 0.07)))

    def features(self, ecg: Array) -> Array:
        """ecg (batch, time, leads) mV -> (batch, feature_dim): the FID / precision-recall features."""
        return self.encoder(ecg)

    def feature_tokens(self, ecg: Array) -> Array:
        """ecg (batch, time, leads) mV -> (batch, ceil(time / 16), feature_dim): `features` before the time average."""
        return self.encoder.tokens(ecg)

    def embed_ecg(self, ecg: Array) -> Array:
        """(batch, time, leads) mV -> (batch, embed_dim), unit norm."""
        return _normalize(self.ecg_proj(self.encoder(ecg)))

    def embed_text(self, sentence: Array) -> Array:
        """sentence vectors (batch, text_dim) -> (batch, embed_dim), unit norm."""
        return _normalize(self.text_proj(jax.nn.gelu(self.text_hidden(sentence))))

    def logit_scale(self) -> Array:
        return jnp.exp(jnp.clip(self.log_scale[...], 0.0, jnp.log(100.0)))


class ECGClassifier(nnx.Module):
    """ecg (batch, time, leads) mV -> logits (batch, num_classes) (multi-label: sigmoid per class)."""

    def __init__(self, config: ECGEncoderConfig, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = ResNet1D(config, rngs=rngs)
        self.head = nnx.Linear(config.feature_dim, num_classes, rngs=rngs)

    def __call__(self, ecg: Array) -> Array:
        return self.head(self.encoder(ecg))
