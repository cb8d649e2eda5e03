"""Stage 1 of SE-Diff: a 1-D convolutional VAE for 12-lead ECGs and the beat decoder, in Flax NNX.

The encoder maps `ecg: (batch, time, 12)` mV to a Gaussian latent `(batch, time / 8, latent_channels)` (three
stride-2 stages, residual blocks with GroupNorm and SiLU, in the style of latent-diffusion autoencoders); the
decoder maps it back. The beat decoder maps the same latent to one QRS-aligned beat
`(batch, beat_samples, 12)` (0.2 s before the R peak to 0.4 s after), the signal the simulator losses compare
with, so the latent must carry a clean beat. Losses are in `sediff_jax.models.vae_losses`.

`dtype` is the compute precision (`float32`, or `bfloat16` for mixed precision on accelerators): convolutions,
matmuls and norms run in it, parameters stay float32 (the checkpoint is the same), and every output the losses
and the simulator see (latent mean and log-variance, reconstruction, beat) is float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
DType = jnp.dtype | type


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """num_leads: input channels.  latent_channels: C of the (time / 8, C) latent.
    channels: widths of the three resolution stages.  kernel_size: conv kernel (samples).
    num_groups: GroupNorm groups.  beat_samples: length of the decoded beat (0.6 s x fs).
    beat_r_index: sample of the decoded beat that is its R peak (0.2 s x fs): with beat_samples, the beat window.
    beat_hidden: width of the beat decoder."""

    num_leads: int = 12
    latent_channels: int = 4
    channels: tuple[int, int, int] = (32, 64, 128)
    kernel_size: int = 7
    num_groups: int = 8
    beat_samples: int = 60
    beat_hidden: int = 128
    beat_r_index: int = 20

    def __post_init__(self):
        if not 0 <= self.beat_r_index < self.beat_samples:
            raise ValueError(f"beat_r_index={self.beat_r_index} must lie in the beat's {self.beat_samples} samples")

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.channels)


def _norm(c: int, config: VAEConfig, dtype: DType, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm computing its statistics in float32 and its output in `dtype`."""
    return nnx.GroupNorm(c, num_groups=min(config.num_groups, c), dtype=dtype, rngs=rngs)


class ResBlock(nnx.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1-projected) skip. (batch, time, c_in) -> (batch, time, c_out)."""

    def __init__(self, c_in: int, c_out: int, config: VAEConfig, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        k = (config.kernel_size,)
        self.norm1 = _norm(c_in, config, dtype, rngs)
        self.conv1 = nnx.Conv(c_in, c_out, k, padding="SAME", dtype=dtype, rngs=rngs)
        self.norm2 = _norm(c_out, config, dtype, rngs)
        self.conv2 = nnx.Conv(c_out, c_out, k, padding="SAME", dtype=dtype, rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1,), dtype=dtype, rngs=rngs) if c_in != c_out else None

    def __call__(self, x: Array) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class Encoder(nnx.Module):
    def __init__(self, config: VAEConfig, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        c = config.channels
        self.conv_in = nnx.Conv(config.num_leads, c[0], (config.kernel_size,), padding="SAME", dtype=dtype,
                                rngs=rngs)
        blocks, downs, c_prev = [], [], c[0]
        for width in c:
            blocks.append(ResBlock(c_prev, width, config, dtype=dtype, rngs=rngs))
            downs.append(nnx.Conv(width, width, (4,), strides=(2,), padding="SAME", dtype=dtype, rngs=rngs))
            c_prev = width
        self.blocks, self.downs = nnx.List(blocks), nnx.List(downs)
        self.mid = ResBlock(c_prev, c_prev, config, dtype=dtype, rngs=rngs)
        self.norm_out = _norm(c_prev, config, dtype, rngs)
        self.conv_out = nnx.Conv(c_prev, 2 * config.latent_channels, (3,), padding="SAME", dtype=dtype, rngs=rngs)

    def __call__(self, ecg: Array) -> tuple[Array, Array]:
        """ecg (batch, time, leads) -> mean, log-variance, each (batch, time / 8, latent_channels)."""
        h = self.conv_in(ecg)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h))
        h = self.conv_out(jax.nn.silu(self.norm_out(self.mid(h)))).astype(jnp.float32)
        mean, log_var = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(log_var, -30.0, 20.0)


class Decoder(nnx.Module):
    def __init__(self, config: VAEConfig, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        c = config.channels[::-1]
        self.conv_in = nnx.Conv(config.latent_channels, c[0], (3,), padding="SAME", dtype=dtype, rngs=rngs)
        self.mid = ResBlock(c[0], c[0], config, dtype=dtype, rngs=rngs)
        ups, blocks, c_prev = [], [], c[0]
        for width in c:
            ups.append(nnx.Conv(c_prev, c_prev, (config.kernel_size,), padding="SAME", dtype=dtype, rngs=rngs))
            blocks.append(ResBlock(c_prev, width, config, dtype=dtype, rngs=rngs))
            c_prev = width
        self.ups, self.blocks = nnx.List(ups), nnx.List(blocks)
        self.norm_out = _norm(c_prev, config, dtype, rngs)
        self.conv_out = nnx.Conv(c_prev, config.num_leads, (config.kernel_size,), padding="SAME", dtype=dtype,
                                 rngs=rngs)

    def __call__(self, z: Array) -> Array:
        """z (batch, time / 8, latent_channels) -> (batch, time, leads) mV."""
        h = self.mid(self.conv_in(z))
        for up, block in zip(self.ups, self.blocks):
            h = block(up(jnp.repeat(h, 2, axis=1)))  # nearest-neighbour x2, then a conv
        return self.conv_out(jax.nn.silu(self.norm_out(h))).astype(jnp.float32)


class BeatDecoder(nnx.Module):
    """Latent -> one QRS-aligned beat: conv features, attention pooling over time, then a small
    upsampling conv stack. (batch, time / 8, C) -> (batch, beat_samples, leads)."""

    def __init__(self, config: VAEConfig, *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        d = config.beat_hidden
        self.config = config
        self.base = -(-config.beat_samples // 4)  # beat length before two x2 upsamplings
        self.conv_in = nnx.Conv(config.latent_channels, d, (3,), padding="SAME", dtype=dtype, rngs=rngs)
        self.block = ResBlock(d, d, config, dtype=dtype, rngs=rngs)
        self.attention_logits = nnx.Linear(d, 1, use_bias=False, dtype=dtype, rngs=rngs)  # softmax ignores a shift
        self.to_beat = nnx.Linear(d, self.base * d, dtype=dtype, rngs=rngs)
        self.up1 = ResBlock(d, d // 2, config, dtype=dtype, rngs=rngs)
        self.up2 = ResBlock(d // 2, d // 2, config, dtype=dtype, rngs=rngs)
        self.norm_out = _norm(d // 2, config, dtype, rngs)
        self.conv_out = nnx.Conv(d // 2, config.num_leads, (config.kernel_size,), padding="SAME", dtype=dtype,
                                 rngs=rngs)

    def __call__(self, z: Array) -> Array:
        h = self.block(self.conv_in(z))
        logits = self.attention_logits(h)[..., 0].astype(jnp.float32)
        weights = jax.nn.softmax(logits, axis=-1).astype(h.dtype)  # (batch, time / 8)
        pooled = jnp.einsum("bt,btd->bd", weights, h)
        h = self.to_beat(jax.nn.silu(pooled)).reshape(z.shape[0], self.base, -1)
        h = self.up1(jnp.repeat(h, 2, axis=1))
        h = self.up2(jnp.repeat(h, 2, axis=1))
        return self.conv_out(jax.nn.silu(self.norm_out(h)))[:, : self.config.beat_samples].astype(jnp.float32)


class ECGVAE(nnx.Module):
    """Encoder, decoder and beat decoder. `__call__(ecg, rngs)` returns a dict: mean, log_var, z (sampled),
    reconstruction (batch, time, leads), beat (batch, beat_samples, leads), all float32. `dtype`: the compute
    precision (module docstring)."""

    def __init__(self, config: VAEConfig = VAEConfig(), *, dtype: DType = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, dtype=dtype, rngs=rngs)
        self.decoder = Decoder(config, dtype=dtype, rngs=rngs)
        self.beat_decoder = BeatDecoder(config, dtype=dtype, rngs=rngs)

    def encode(self, ecg: Array) -> tuple[Array, Array]:
        if ecg.shape[1] % self.config.downsampling:
            raise ValueError(f"ecg length {ecg.shape[1]} is not a multiple of {self.config.downsampling}")
        return self.encoder(ecg)

    def __call__(self, ecg: Array, key: Array | None = None) -> dict[str, Array]:
        """key: sampling noise of the latent; None uses the mean (deterministic)."""
        mean, log_var = self.encode(ecg)
        z = mean if key is None else mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)
        return {"mean": mean, "log_var": log_var, "z": z, "reconstruction": self.decoder(z),
                "beat": self.beat_decoder(z)}
