"""bfloat16 mixed precision: the same parameters (float32, the same checkpoint tree) give losses within a stated
tolerance of float32 compute, with finite gradients, for both stages' train steps (the full SE-Diff step,
diffrax solve included)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sediff_jax.diffusion.losses import DiffusionLossConfig
from sediff_jax.diffusion.schedule import make_schedule
from sediff_jax.models.denoiser import LatentDenoiser
from sediff_jax.models.vae import ECGVAE
from sediff_jax.models.vae_losses import VAELossConfig
from sediff_jax.simulator.priors import load_prior
from sediff_jax.training.stages import PRECISIONS, compute_dtype
from sediff_jax.parallel import make_mesh, replicated_sharding
from sediff_jax.training.state import OptimizerConfig, init_state, make_optimizer, split_params
from tests.training.conftest import DENOISER_CONFIG, FS, VAE_CONFIG
from sediff_jax.training.steps import (
    DIFFUSION_BATCH_KEYS, VAE_BATCH_KEYS, DiffusionStepConfig, make_diffusion_steps, make_vae_steps,
)

# bfloat16 has an 8-bit mantissa (relative rounding 2^-9 = 0.2 %); through ~20 layers the losses of the same
# parameters agree with float32 to a few per cent.
LOSS_RTOL = 0.05


def _step_twice(step, params, tx, inputs, mesh, seed=0):
    state = jax.device_put(init_state(jax.tree.map(jnp.array, params), tx, seed), replicated_sharding(mesh))
    metrics = []
    for _ in range(2):
        state, m = step(state, inputs)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype == jnp.float32


def test_precision_switch_names_the_bad_value():
    import ml_collections

    from sediff_jax.training.config import resolve

    assert compute_dtype(ml_collections.ConfigDict({"precision": "bfloat16"})) == jnp.bfloat16
    assert compute_dtype(resolve(ml_collections.ConfigDict({}))) == jnp.float32  # the schema's default
    with pytest.raises(ValueError, match="'float16' is unknown"):
        compute_dtype(ml_collections.ConfigDict({"precision": "float16"}))
    assert set(PRECISIONS) == {"float32", "bfloat16"}


def test_bfloat16_models_have_float32_parameters_and_outputs(batch):
    f32, bf16 = ECGVAE(VAE_CONFIG, rngs=nnx.Rngs(0)), ECGVAE(VAE_CONFIG, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    _assert_same_tree(split_params(f32)[1], split_params(bf16)[1])  # the checkpoint format is the same
    forward = jax.jit(lambda graphdef, params, ecg: nnx.merge(graphdef, params)(ecg), static_argnums=0)
    out32, out16 = (forward(*split_params(model), jnp.asarray(batch["ecg"])) for model in (f32, bf16))
    for name in ("mean", "log_var", "reconstruction", "beat"):
        assert out16[name].dtype == jnp.float32, name
        relative_rms = float(jnp.sqrt(jnp.mean((out16[name] - out32[name]) ** 2)) / (jnp.std(out32[name]) + 1e-6))
        assert relative_rms < LOSS_RTOL, (name, relative_rms)
    den32 = LatentDenoiser(DENOISER_CONFIG, rngs=nnx.Rngs(1))
    den16 = LatentDenoiser(DENOISER_CONFIG, dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    _assert_same_tree(split_params(den32)[1], split_params(den16)[1])


def test_bfloat16_vae_step_matches_float32_with_finite_gradients(batch):
    mesh = make_mesh(jax.devices()[:1])
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10))
    inputs = {k: batch[k] for k in VAE_BATCH_KEYS}
    runs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        graphdef, params = split_params(ECGVAE(VAE_CONFIG, dtype=dtype, rngs=nnx.Rngs(0)))
        step, _ = make_vae_steps(graphdef, tx, VAELossConfig(fs=FS), 0.9, mesh)
        runs[dtype] = _step_twice(step, params, tx, inputs, mesh)
    (s32, m32), (s16, m16) = runs[jnp.float32], runs[jnp.bfloat16]
    _assert_same_tree(s32.params, s16.params)
    for a, b in zip(m32, m16):
        assert b["finite"] and np.isfinite(b["grad_norm"]) and b["grad_norm"] > 0
        np.testing.assert_allclose(b["total"], a["total"], rtol=LOSS_RTOL)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=0.25)


def test_bfloat16_full_se_diff_step_matches_float32_with_finite_gradients(batch):
    mesh = make_mesh(jax.devices()[:1])
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10))
    prior = load_prior()
    loss_config = DiffusionLossConfig(fs=FS, sim_fraction=1.0)  # every term on every record, diffrax solve too
    inputs = {k: batch[k] for k in DIFFUSION_BATCH_KEYS}
    runs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        vae_graphdef, vae_params = split_params(ECGVAE(VAE_CONFIG, dtype=dtype, rngs=nnx.Rngs(0)))
        graphdef, params = split_params(LatentDenoiser(DENOISER_CONFIG, dtype=dtype, rngs=nnx.Rngs(1)))
        step, _ = make_diffusion_steps(graphdef, vae_graphdef, tx, make_schedule("cosine", 50), loss_config,
                                       DiffusionStepConfig(latent_scale=2.0), prior.wave_table(prior.class_names),
                                       0.99, mesh)
        vae = jax.device_put(vae_params, replicated_sharding(mesh))
        runs[dtype] = _step_twice(lambda s, b: step(s, vae, b), params, tx, inputs, mesh, seed=3)
    (s32, m32), (s16, m16) = runs[jnp.float32], runs[jnp.bfloat16]
    _assert_same_tree(s32.params, s16.params)
    for a, b in zip(m32, m16):
        assert b["finite"] and np.isfinite(b["grad_norm"]) and b["grad_norm"] > 0
        for term in ("ddpm", "euler", "interlead", "sim", "total"):
            assert np.isfinite(b[term]), term
            np.testing.assert_allclose(b[term], a[term], rtol=LOSS_RTOL, atol=1e-4, err_msg=term)
