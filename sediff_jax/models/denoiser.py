"""Stage 2 of SE-Diff: the latent denoiser, a 1-D U-Net with self-attention over time and cross-attention to
condition tokens (report text, retrieved experience, and metadata: age, sex, heart rate), in Flax NNX.

Conditions enter as tokens through real cross-attention (not one pooled vector repeated along time, which makes
attention uniform). Classifier-free guidance: `drop` (batch, 3) replaces the text / experience / metadata tokens
of a record by learned null tokens, so one network gives the conditional and the unconditional prediction.
Unknown metadata (age NaN, sex -1, heart rate NaN) get learned "unknown" tokens of their own.

A model built with `amplitude_leads=12` is also told each lead's amplitude (robust peak-to-peak, mV: the record's
own in training, a retrieved patient's at sampling) through the timestep embedding, which modulates every residual
block: the waveform can follow them (voltage with axis, ST with its QRS), where a gain after decoding cannot. Its
last layer starts at zero, so a model warm-started from one without it predicts exactly what that one did.

`dtype` is the compute precision (`float32`, or `bfloat16` for mixed precision on accelerators): convolutions,
attention, matmuls and norms run in it; parameters stay float32, attention softmaxes and the timestep
embedding are float32, and the prediction is returned in float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sediff_jax.leads import NUM_LEADS
from sediff_jax.models.conditions import Conditions
from sediff_jax.signal.phase import ECTOPIC_RHYTHM_FEATURES, RHYTHM_FEATURES

Array = jax.Array
DType = jnp.dtype | type
TEXT, EXPERIENCE, METADATA = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
    """latent_channels: C of the (time, C) latent.  channels: widths per U-Net level (each level after the first
    halves the time axis).  attention: per level, whether blocks attend (self + cross).  num_heads: attention
    heads.  context_dim: width of the condition tokens (the text encoder's, 384 for MiniLM).
    time_embed_dim: width of the timestep embedding.  num_groups: GroupNorm groups.  rhythm_channels: channels
    of the rhythm scaffold concatenated to x_t (`sediff_jax.signal.phase.rhythm_features`: cos phi, sin phi,
    present; 4 adds whether the nearest beat is premature); 0 = none, SE-Diff as published.  repa_dim: width of the features the middle block's output is
    projected to for representation alignment (`diffusion.repa`: a frozen ECG encoder's features; 0 = no
    projector).  repa_hidden: the projector MLP's hidden width.  amplitude_leads: 12 = conditioned on each lead's
    amplitude (`AmplitudeEmbedding`), 0 = not (every model before it)."""

    latent_channels: int = 4
    channels: tuple[int, ...] = (64, 128, 128)
    attention: tuple[bool, ...] = (False, True, True)
    num_heads: int = 4
    context_dim: int = 384
    time_embed_dim: int = 128
    num_groups: int = 8
    rhythm_channels: int = 0
    repa_dim: int = 0
    repa_hidden: int = 256
    amplitude_leads: int = 0

    def __post_init__(self):
        if self.amplitude_leads not in (0, NUM_LEADS):
            raise ValueError(f"amplitude_leads={self.amplitude_leads}; expected 0 (none) or {NUM_LEADS}")
        if self.rhythm_channels not in (0, RHYTHM_FEATURES, ECTOPIC_RHYTHM_FEATURES):
            raise ValueError(f"rhythm_channels={self.rhythm_channels}; expected 0 (no scaffold), {RHYTHM_FEATURES} "
                             f"(the cardiac phase) or {ECTOPIC_RHYTHM_FEATURES} (and premature beats)")
        if len(self.channels) != len(self.attention):
            raise ValueError(f"channels {self.channels} and attention {self.attention} need one entry per level")

    @property
    def length_multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
    """Sinusoidal embedding of integer or real timesteps: (batch,) -> (batch, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


MIN_AMPLITUDE_MV = 0.02  # amplitudes below this (a flat lead) are read as this before the log


def amplitude_features(amplitudes: Array) -> Array:
    """(b, 12) lead amplitudes, mV, NaN unknown -> (b, 24) float32: log amplitude where known (0 elsewhere), then
    1 where known (0 elsewhere)."""
    amplitudes = amplitudes.astype(jnp.float32)
    known = jnp.isfinite(amplitudes)
    log = jnp.log(jnp.maximum(jnp.where(known, amplitudes, 1.0), MIN_AMPLITUDE_MV))
    return jnp.concatenate([jnp.where(known, log, 0.0), known.astype(jnp.float32)], axis=-1)


class AmplitudeEmbedding(nnx.Module):
    """Per-lead amplitudes (b, 12) mV, NaN unknown -> (b, time_embed_dim), added to the timestep embedding. An MLP
    over `amplitude_features` whose output layer starts at zero (a warm start is unchanged); all-unknown (dropped,
    or not given) maps to one learned vector."""

    def __init__(self, leads: int, dim: int, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(2 * leads, dim, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(dim, dim, dtype=dtype, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, amplitudes: Array) -> Array:
        return self.out(jax.nn.silu(self.hidden(amplitude_features(amplitudes))))


def _norm(c: int, groups: int, dtype: DType, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(c, num_groups=math.gcd(groups, c), dtype=dtype, rngs=rngs)


class TimeResBlock(nnx.Module):
    """Residual conv block whose second norm is modulated (scale, shift) by the timestep embedding."""

    def __init__(self, c_in: int, c_out: int, config: DenoiserConfig, *, dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        self.norm1 = _norm(c_in, config.num_groups, dtype, rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3,), padding="SAME", dtype=dtype, rngs=rngs)
        self.modulation = nnx.Linear(config.time_embed_dim, 2 * c_out, dtype=dtype, rngs=rngs)
        self.norm2 = _norm(c_out, config.num_groups, dtype, rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3,), padding="SAME", dtype=dtype, rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1,), dtype=dtype, rngs=rngs) if c_in != c_out else None

    def __call__(self, x: Array, temb: Array) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        scale, shift = jnp.split(self.modulation(jax.nn.silu(temb))[:, None, :], 2, axis=-1)
        h = self.conv2(jax.nn.silu(self.norm2(h) * (1.0 + scale) + shift))
        return h + (self.skip(x) if self.skip is not None else x)


class Attention(nnx.Module):
    """Multi-head attention of x (batch, n, c) over context (batch, m, d) with a key mask (batch, m)."""

    def __init__(self, c: int, context_dim: int, num_heads: int, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.query = nnx.Linear(c, c, use_bias=False, dtype=dtype, rngs=rngs)
        self.key = nnx.Linear(context_dim, c, use_bias=False, dtype=dtype, rngs=rngs)
        self.value = nnx.Linear(context_dim, c, use_bias=False, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(c, c, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, context: Array, mask: Array) -> Array:
        b, n, c = x.shape
        h = self.num_heads
        q = self.query(x).reshape(b, n, h, c // h)
        k = self.key(context).reshape(b, context.shape[1], h, c // h)
        v = self.value(context).reshape(b, context.shape[1], h, c // h)
        logits = jnp.einsum("bnhc,bmhc->bhnm", q, k).astype(jnp.float32) / math.sqrt(c // h)
        logits = jnp.where(mask[:, None, None, :], logits, -1e9)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return self.out(jnp.einsum("bhnm,bmhc->bnhc", weights, v).reshape(b, n, c))


class AttentionBlock(nnx.Module):
    """Pre-norm self-attention over time, cross-attention to the condition tokens, and a GELU MLP."""

    def __init__(self, c: int, config: DenoiserConfig, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.norm_self = nnx.LayerNorm(c, dtype=dtype, rngs=rngs)
        self.self_attention = Attention(c, c, config.num_heads, dtype=dtype, rngs=rngs)
        self.norm_cross = nnx.LayerNorm(c, dtype=dtype, rngs=rngs)
        self.cross_attention = Attention(c, config.context_dim, config.num_heads, dtype=dtype, rngs=rngs)
        self.norm_mlp = nnx.LayerNorm(c, dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(c, 4 * c, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * c, c, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, context: Array, context_mask: Array) -> Array:
        h = self.norm_self(x)
        x = x + self.self_attention(h, h, jnp.ones(h.shape[:2], bool))
        x = x + self.cross_attention(self.norm_cross(x), context, context_mask)
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm_mlp(x))))


class ConditionTokens(nnx.Module):
    """Text and experience tokens (projected), three metadata tokens, and learned null/unknown tokens."""

    def __init__(self, config: DenoiserConfig, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        d = config.context_dim
        self.dtype = dtype
        self.text_proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.experience_proj = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.age_proj = nnx.Linear(1, d, rngs=rngs)
        self.hr_proj = nnx.Linear(1, d, rngs=rngs)
        self.sex_embed = nnx.Embed(3, d, rngs=rngs)  # male, female, unknown
        init = nnx.initializers.normal(0.02)
        self.null = nnx.Param(init(rngs.params(), (3, d)))  # text, experience, metadata when dropped
        self.unknown = nnx.Param(init(rngs.params(), (2, d)))  # unknown age, unknown heart rate

    def __call__(self, text, text_mask, experience, experience_mask, age, sex, hr, drop):
        b = text.shape[0]
        null = self.null[...].astype(self.dtype)
        age_known = jnp.isfinite(age)[:, None]
        hr_known = jnp.isfinite(hr)[:, None]
        unknown = self.unknown[...].astype(self.dtype)
        age_token = jnp.where(age_known, self.age_proj(jnp.nan_to_num(age)[:, None] / 100.0), unknown[0])
        hr_token = jnp.where(hr_known, self.hr_proj(jnp.nan_to_num(hr)[:, None] / 100.0), unknown[1])
        sex_token = self.sex_embed(jnp.where((sex == 0) | (sex == 1), sex, 2).astype(jnp.int32)).astype(self.dtype)
        metadata = jnp.stack([age_token, sex_token, hr_token], axis=1).astype(self.dtype)

        def group(tokens, mask, k):
            dropped = drop[:, k][:, None, None]
            tokens = jnp.where(dropped, 0.0, tokens)
            mask = jnp.where(drop[:, k][:, None], False, mask)
            null_token = jnp.broadcast_to(null[k], (b, 1, null.shape[-1]))
            null_mask = drop[:, k][:, None]  # the null token is visible exactly when the group is dropped
            return jnp.concatenate([tokens, null_token], 1), jnp.concatenate([mask, null_mask], 1)

        t, tm = group(self.text_proj(text), text_mask, TEXT)
        e, em = group(self.experience_proj(experience), experience_mask, EXPERIENCE)
        m, mm = group(metadata, jnp.ones((b, 3), bool), METADATA)
        return jnp.concatenate([t, e, m], 1), jnp.concatenate([tm, em, mm], 1)


class LatentDenoiser(nnx.Module):
    """`__call__(x_t, t, conditions, drop)` -> the prediction (epsilon or v), same shape as x_t.

    `with_features` also returns the middle block's output through the REPA projector (`config.repa_dim`).

    x_t: (batch, time, latent_channels); t: (batch,) timesteps.  conditions: dict with text_tokens
    (batch, Lt, d), text_mask (batch, Lt), experience_tokens (batch, Le, d), experience_mask, age (batch,)
    years or NaN, sex (batch,) 0/1/-1, hr (batch,) bpm or NaN, and with `config.rhythm_channels` rhythm
    (batch, time, 3) (the scaffold; zeros for none), and with `config.amplitude_leads` amplitudes (batch, 12) mV,
    NaN unknown (None: all unknown). drop: (batch, 3) bool (text, experience,
    metadata) for classifier-free guidance; None keeps every condition. `dtype`: the compute precision (module
    docstring); the prediction is float32 whatever it is.
    """

    def __init__(self, config: DenoiserConfig = DenoiserConfig(), *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        c, e = config.channels, config.time_embed_dim
        self.time_in = nnx.Linear(e, e, dtype=dtype, rngs=rngs)
        self.time_out = nnx.Linear(e, e, dtype=dtype, rngs=rngs)
        self.conditions = ConditionTokens(config, dtype=dtype, rngs=rngs)
        if config.amplitude_leads:
            self.amplitude_embed = AmplitudeEmbedding(config.amplitude_leads, e, dtype=dtype, rngs=rngs)
        self.conv_in = nnx.Conv(config.latent_channels + config.rhythm_channels, c[0], (3,), padding="SAME",
                                dtype=dtype, rngs=rngs)
        down, down_attn, downsample, skips_c = [], [], [], []
        c_prev = c[0]
        for level, (width, attend) in enumerate(zip(c, config.attention)):
            down.append(TimeResBlock(c_prev, width, config, dtype=dtype, rngs=rngs))
            down_attn.append(AttentionBlock(width, config, dtype=dtype, rngs=rngs) if attend else None)
            skips_c.append(width)
            last = level == len(c) - 1
            downsample.append(None if last else nnx.Conv(width, width, (4,), strides=(2,), padding="SAME", dtype=dtype,
                                                         rngs=rngs))
            c_prev = width
        self.down, self.down_attn, self.downsample = nnx.List(down), nnx.List(down_attn), nnx.List(downsample)
        self.mid1 = TimeResBlock(c_prev, c_prev, config, dtype=dtype, rngs=rngs)
        self.mid_attn = AttentionBlock(c_prev, config, dtype=dtype, rngs=rngs)
        self.mid2 = TimeResBlock(c_prev, c_prev, config, dtype=dtype, rngs=rngs)
        up, up_attn, upsample = [], [], []
        for level in reversed(range(len(c))):
            width = c[level]
            up.append(TimeResBlock(c_prev + skips_c[level], width, config, dtype=dtype, rngs=rngs))
            up_attn.append(AttentionBlock(width, config, dtype=dtype, rngs=rngs) if config.attention[level] else None)
            upsample.append(None if level == 0 else nnx.Conv(width, width, (3,), padding="SAME", dtype=dtype,
                                                             rngs=rngs))
            c_prev = width
        self.up, self.up_attn, self.upsample = nnx.List(up), nnx.List(up_attn), nnx.List(upsample)
        self.norm_out = _norm(c_prev, config.num_groups, dtype, rngs)
        self.conv_out = nnx.Conv(c_prev, config.latent_channels, (3,), padding="SAME", dtype=dtype,
                                 kernel_init=nnx.initializers.zeros, rngs=rngs)
        if config.repa_dim:  # REPA's projector: a 3-layer MLP per time step (Yu et al. 2024)
            mid, hidden = c[-1], config.repa_hidden
            self.repa_projector = nnx.Sequential(
                nnx.Linear(mid, hidden, dtype=dtype, rngs=rngs), jax.nn.silu,
                nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs), jax.nn.silu,
                nnx.Linear(hidden, config.repa_dim, dtype=dtype, rngs=rngs))

    def __call__(self, x_t: Array, t: Array, conditions: Conditions, drop: Array | None = None) -> Array:
        return self._forward(x_t, t, conditions, drop)[0]

    def with_features(self, x_t: Array, t: Array, conditions: Conditions, drop: Array | None = None
                      ) -> tuple[Array, Array]:
        """(the prediction, the middle block's output projected to (batch, padded time / 2 ** (levels - 1),
        repa_dim) float32); needs `config.repa_dim`."""
        if not self.config.repa_dim:
            raise ValueError("with_features needs a denoiser built with repa_dim > 0 (a REPA projector)")
        output, mid = self._forward(x_t, t, conditions, drop)
        return output, self.repa_projector(mid).astype(jnp.float32)

    def _forward(self, x_t: Array, t: Array, conditions: Conditions, drop: Array | None) -> tuple[Array, Array]:
        b, length, _ = x_t.shape
        multiple = self.config.length_multiple
        pad = (-length) % multiple
        x = x_t
        if self.config.rhythm_channels:
            x = jnp.concatenate([x, conditions.rhythm.astype(x.dtype)], axis=-1)
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        drop = jnp.zeros((b, 3), bool) if drop is None else drop
        context, context_mask = self.conditions(
            conditions.text_tokens, conditions.text_mask, conditions.experience_tokens, conditions.experience_mask,
            conditions.age, conditions.sex, conditions.hr, drop)
        temb = self.time_out(jax.nn.silu(self.time_in(timestep_embedding(t, self.config.time_embed_dim))))
        if self.config.amplitude_leads:
            amplitudes = conditions.amplitudes
            if amplitudes is None:
                amplitudes = jnp.full((b, self.config.amplitude_leads), jnp.nan, jnp.float32)
            temb = temb + self.amplitude_embed(amplitudes).astype(temb.dtype)
        h = self.conv_in(x)
        skips = []
        for block, attn, down in zip(self.down, self.down_attn, self.downsample):
            h = block(h, temb)
            if attn is not None:
                h = attn(h, context, context_mask)
            skips.append(h)
            if down is not None:
                h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb), context, context_mask), temb)
        mid = h
        for block, attn, upsample in zip(self.up, self.up_attn, self.upsample):
            h = block(jnp.concatenate([h, skips.pop()], axis=-1), temb)
            if attn is not None:
                h = attn(h, context, context_mask)
            if upsample is not None:
                h = upsample(jnp.repeat(h, 2, axis=1))
        return self.conv_out(jax.nn.silu(self.norm_out(h)))[:, :length].astype(jnp.float32), mid
