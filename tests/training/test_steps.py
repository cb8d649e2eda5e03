"""Train steps of both stages: 8-device sharded vs single device, simulator-loss gradients, the NaN guard."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sediff_jax.diffusion.losses import DiffusionLossConfig, diffusion_losses, simulator_rows
from sediff_jax.diffusion.schedule import make_schedule
from sediff_jax.models.conditions import Conditions
from sediff_jax.models.denoiser import LatentDenoiser
from sediff_jax.models.vae import ECGVAE
from sediff_jax.models.vae_losses import VAELossConfig
from sediff_jax.simulator.priors import load_prior
from sediff_jax.parallel import host_local_to_global, make_mesh, replicated_sharding
from sediff_jax.training.state import OptimizerConfig, init_state, make_optimizer, split_params
from sediff_jax.training.steps import (
    DIFFUSION_BATCH_KEYS, VAE_BATCH_KEYS, DiffusionStepConfig, make_diffusion_steps,
    make_vae_steps,
)

from tests.training.conftest import B, DENOISER_CONFIG, FS, VAE_CONFIG

PRIOR = load_prior()
_SCHEDULES = {"cosine50": make_schedule("cosine", 50)}
WAVES = PRIOR.wave_table(PRIOR.class_names)


def _vae_setup():
    graphdef, params = split_params(ECGVAE(VAE_CONFIG, rngs=nnx.Rngs(0)))
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10))
    return graphdef, params, tx


def _tree_allclose(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def _run(steps_for_mesh, state, inputs, mesh, num_steps=2):
    state = jax.device_put(jax.tree.map(np.array, state), replicated_sharding(mesh))  # own buffers (donated)
    metrics = []
    for _ in range(num_steps):
        state, m = steps_for_mesh(state, inputs)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def test_vae_step_sharded_over_8_devices_matches_single_device(batch):
    assert len(jax.devices()) == 8
    graphdef, params, tx = _vae_setup()
    loss_config = VAELossConfig(fs=FS)
    inputs = {k: batch[k] for k in VAE_BATCH_KEYS}
    results = {}
    for n in (1, 8):
        mesh = make_mesh(jax.devices()[:n])
        step, _ = make_vae_steps(graphdef, tx, loss_config, 0.9, mesh)
        results[n] = _run(step, init_state(params, tx, 0), inputs, mesh)
    (s1, m1), (s8, m8) = results[1], results[8]
    for a, b in zip(m1, m8):
        assert a["finite"] and b["finite"]
        np.testing.assert_allclose(a["total"], b["total"], rtol=1e-5)
    _tree_allclose(s1.params, s8.params, rtol=1e-4, atol=1e-6)
    _tree_allclose(s1.ema_params, s8.ema_params, rtol=1e-4, atol=1e-6)
    assert int(s8.step) == 2
    assert not np.allclose(jax.tree.leaves(s8.params)[0], jax.tree.leaves(params)[0])  # it did train


def _diffusion_setup(loss_config):
    vae_graphdef, vae_params = split_params(ECGVAE(VAE_CONFIG, rngs=nnx.Rngs(0)))
    graphdef, params = split_params(LatentDenoiser(DENOISER_CONFIG, rngs=nnx.Rngs(1)))
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10))
    return vae_graphdef, vae_params, graphdef, params, tx, "cosine50"


def test_diffusion_step_with_simulator_terms_sharded_matches_single_device(batch):
    loss_config = DiffusionLossConfig(fs=FS)  # every term on, including the diffrax solve
    vae_graphdef, vae_params, graphdef, params, tx, schedule = _diffusion_setup(loss_config)
    inputs = {k: batch[k] for k in DIFFUSION_BATCH_KEYS}
    results = {}
    for n in (1, 8):
        mesh = make_mesh(jax.devices()[:n])
        step, _ = make_diffusion_steps(graphdef, vae_graphdef, tx, _SCHEDULES[schedule], loss_config,
                                       DiffusionStepConfig(latent_scale=2.0), WAVES, 0.99, mesh)
        vae = jax.device_put(vae_params, replicated_sharding(mesh))
        results[n] = _run(lambda s, b: step(s, vae, b), init_state(params, tx, 3), inputs, mesh)
    (s1, m1), (s8, m8) = results[1], results[8]
    for a, b in zip(m1, m8):
        assert a["finite"] and b["finite"]
        for term in ("ddpm", "euler", "interlead", "sim", "total"):
            np.testing.assert_allclose(a[term], b[term], rtol=1e-4, err_msg=term)
    _tree_allclose(s1.params, s8.params, rtol=1e-4, atol=1e-6)


def _loss_and_grads(loss_config, batch, params, graphdef, vae_graphdef, vae_params, schedule):
    return _jitted_loss_and_grads(loss_config, graphdef, vae_graphdef, schedule)(batch, params, vae_params)


@functools.lru_cache(maxsize=None)
def _jitted_loss_and_grads(loss_config, graphdef, vae_graphdef, schedule_id):
    schedule = _SCHEDULES[schedule_id]
    return jax.jit(functools.partial(_loss_and_grads_impl, loss_config, graphdef=graphdef,
                                     vae_graphdef=vae_graphdef, schedule=schedule))


def _loss_and_grads_impl(loss_config, batch, params, vae_params, *, graphdef, vae_graphdef, schedule):
    """Total loss and its gradient w.r.t. the denoiser's parameters, with every condition kept."""
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    vae = nnx.merge(vae_graphdef, vae_params)
    x0 = vae.encode(b["ecg"])[0] * 2.0
    key_t, key_n = jax.random.split(jax.random.key(5))
    t = jax.random.randint(key_t, (B,), 0, 10)  # low noise: the simulator weights are large
    noise = jax.random.normal(key_n, x0.shape)
    waves = jax.tree.map(lambda table: table[b["class_index"]], WAVES)

    def loss(p):
        denoiser = nnx.merge(graphdef, p)
        terms = diffusion_losses(lambda x, tt: denoiser(x, tt, Conditions.from_batch(b)),
                                 lambda x: vae.beat_decoder(x / 2.0), lambda x: vae.decoder(x / 2.0),
                                 schedule, loss_config, x0, t, noise, waves, b["hr_bpm"], b["mask"])
        return terms["total"], terms

    return jax.value_and_grad(loss, has_aux=True)(params)


@pytest.mark.parametrize("term", ["euler_weight", "interlead_weight", "sim_weight"])
def test_each_simulator_term_moves_the_denoiser_and_is_exactly_zero_when_off(batch, term):
    off = DiffusionLossConfig(fs=FS, euler_weight=0.0, interlead_weight=0.0, sim_weight=0.0)
    vae_graphdef, vae_params, graphdef, params, _, schedule = _diffusion_setup(off)
    # A denoiser whose output is not identically zero (the output conv starts at zero).
    params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(x.size), x.shape), params)
    args = (batch, params, graphdef, vae_graphdef, vae_params, schedule)
    (loss_off, terms_off), grads_off = _loss_and_grads(off, *args)
    assert set(terms_off) == {"ddpm", "total"} and float(loss_off) == float(terms_off["ddpm"])
    on = dataclasses.replace(off, **{term: 1.0})
    (loss_on, terms_on), grads_on = _loss_and_grads(on, *args)
    assert float(terms_on["ddpm"]) == float(terms_off["ddpm"])
    name = {"euler_weight": "euler", "interlead_weight": "interlead", "sim_weight": "sim"}[term]
    assert float(terms_on[name]) > 0
    np.testing.assert_allclose(float(loss_on), float(terms_on["ddpm"] + terms_on[name]), rtol=1e-6)
    difference = jax.tree.map(lambda a, b: a - b, grads_on, grads_off)  # the term's own gradient
    norms = [float(jnp.linalg.norm(d)) for d in jax.tree.leaves(difference)]
    assert max(norms) > 1e-6, f"{name} has no gradient w.r.t. the denoiser"
    assert sum(n > 0 for n in norms) > len(norms) // 2, "the gradient should reach most of the network"


def test_simulator_rows_are_a_uniform_random_subset_of_the_real_records():
    mask = np.ones(B, np.float32)
    mask[[1, 6]] = 0  # padding slots
    draws = np.stack([np.asarray(simulator_rows(jnp.asarray(mask), 0.5, jax.random.key(i))) for i in range(600)])
    assert draws.shape == (600, B // 2)
    assert all(len(set(d)) == B // 2 and not {1, 6} & set(d) for d in draws)
    counts = np.bincount(draws.ravel(), minlength=B)[[0, 2, 3, 4, 5, 7]] / 600  # expected 4/6 each
    np.testing.assert_allclose(counts, 4 / 6, atol=0.08)
    np.testing.assert_array_equal(simulator_rows(jnp.asarray(mask), 0.5, None), [0, 2, 3, 4])
    np.testing.assert_array_equal(simulator_rows(jnp.asarray(mask), 1.0, jax.random.key(0)), np.arange(B))
    with pytest.raises(ValueError, match="sim_fraction"):
        DiffusionLossConfig(sim_fraction=0.0)


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_simulator_terms_on_a_fraction_equal_the_terms_with_the_other_records_masked(batch):
    half = DiffusionLossConfig(fs=FS, euler_weight=1.0, interlead_weight=1.0, sim_weight=1.0, sim_fraction=0.5)
    vae_graphdef, vae_params, graphdef, params, _, schedule = _diffusion_setup(half)
    params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(x.size), x.shape), params)
    rows = np.asarray(simulator_rows(jnp.asarray(batch["mask"], jnp.float32), 0.5, None))  # key None, as here
    masked = dict(batch, mask=np.isin(np.arange(B), rows))
    args = (graphdef, vae_graphdef, vae_params, schedule)
    (_, terms_half), _ = _loss_and_grads(half, batch, params, *args)
    (_, terms_all), _ = _loss_and_grads(dataclasses.replace(half, sim_fraction=1.0), masked, params, *args)
    for name in ("euler", "interlead", "sim"):
        np.testing.assert_allclose(float(terms_half[name]), float(terms_all[name]), rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_simulator_gradient_matches_finite_differences(batch):
    """The directional derivative of the full loss (all simulator terms on) by autodiff vs a central difference
    (float32 losses of order 1: agreement to a few per cent is what the arithmetic allows)."""
    config = DiffusionLossConfig(fs=FS, euler_weight=1.0, interlead_weight=1.0, sim_weight=1.0)
    vae_graphdef, vae_params, graphdef, params, _, schedule = _diffusion_setup(config)
    params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(x.size), x.shape), params)
    direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(7), x.shape) * 0.01, params)
    args = (batch, graphdef, vae_graphdef, vae_params, schedule)
    (_, _), grads = _loss_and_grads(config, batch, params, *args[1:])
    analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    eps = 1e-2
    shifted = [jax.tree.map(lambda p, d: p + s * eps * d, params, direction) for s in (1.0, -1.0)]
    plus, minus = (float(_loss_and_grads(config, batch, p, *args[1:])[0][0]) for p in shifted)
    np.testing.assert_allclose(analytic, (plus - minus) / (2 * eps), rtol=0.08)


def test_non_finite_step_leaves_the_state_unchanged(batch):
    graphdef, params, tx = _vae_setup()
    mesh = make_mesh(jax.devices()[:1])
    step, _ = make_vae_steps(graphdef, tx, VAELossConfig(fs=FS), 0.9, mesh)
    inputs = {k: np.array(batch[k]) for k in VAE_BATCH_KEYS}
    inputs["ecg"][2, 100, 3] = np.nan
    state0 = jax.device_get(init_state(params, tx, 0))
    state, metrics = step(jax.device_put(jax.tree.map(np.array, state0), replicated_sharding(mesh)), inputs)
    assert not bool(metrics["finite"])
    assert not np.isfinite(float(metrics["reconstruction"]))
    assert int(state.step) == 1
    _tree_allclose(state.params, state0.params, rtol=0, atol=0)


def test_evaluation_reports_every_energy_even_when_switched_off(batch):
    off = DiffusionLossConfig(fs=FS, euler_weight=0.0, interlead_weight=0.0, sim_weight=0.0)
    vae_graphdef, vae_params, graphdef, params, tx, schedule = _diffusion_setup(off)
    mesh = make_mesh(jax.devices()[:1])
    train_step, eval_step = make_diffusion_steps(graphdef, vae_graphdef, tx, _SCHEDULES[schedule], off,
                                                 DiffusionStepConfig(), WAVES, 0.99, mesh)
    inputs = {k: batch[k] for k in DIFFUSION_BATCH_KEYS}
    terms, count = eval_step(params, vae_params, jax.random.key(0), inputs)
    assert {"euler", "interlead", "sim"} <= set(terms) and int(count) == B - 1
    assert float(terms["total"]) == float(terms["ddpm"])
    state = jax.device_put(jax.tree.map(np.array, init_state(params, tx, 0)), replicated_sharding(mesh))
    _, metrics = train_step(state, vae_params, inputs)
    assert set(metrics) == {"ddpm", "total", "grad_norm", "finite"}  # training computes none of them


def _one_step_losses(graphdef, params, vae_graphdef, vae_params, loss_config, step_config_at, batches, mesh):
    """({(dropout, batch name): L_DDPM of one train step from `params`} for dropout 0 and 1, the last eval step);
    step_config_at(dropout) -> DiffusionStepConfig."""
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10))
    losses = {}
    for dropout in (0.0, 1.0):
        train_step, eval_step = make_diffusion_steps(graphdef, vae_graphdef, tx, _SCHEDULES["cosine50"], loss_config,
                                                     step_config_at(dropout), WAVES, 0.99, mesh)
        for name, b in batches.items():
            state = init_state(jax.tree.map(jnp.copy, params), tx, 3)  # (the step donates its state)
            _, metrics = train_step(state, vae_params, host_local_to_global(b, mesh))
            assert bool(metrics["finite"])
            losses[dropout, name] = float(metrics["ddpm"])
    return losses, eval_step


def test_the_rhythm_scaffold_reaches_the_denoiser_and_its_dropout_removes_it(batch):
    """A scaffold denoiser's loss depends on where the R peaks are; with rhythm dropout 1 it cannot."""
    loss_config = DiffusionLossConfig(fs=FS, euler_weight=0.0, interlead_weight=0.0, sim_weight=0.0)
    vae_graphdef, vae_params = split_params(ECGVAE(VAE_CONFIG, rngs=nnx.Rngs(0)))
    denoiser = LatentDenoiser(dataclasses.replace(DENOISER_CONFIG, rhythm_channels=3), rngs=nnx.Rngs(1))
    graphdef, params = split_params(denoiser)
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), params)
    mesh = make_mesh(jax.devices()[:1])
    inputs = {k: batch[k] for k in DIFFUSION_BATCH_KEYS}
    shifted = dict(inputs, r_peaks=np.where(inputs["r_peaks"] >= 0, inputs["r_peaks"] + 30, -1))
    losses, eval_step = _one_step_losses(
        graphdef, params, vae_graphdef, vae_params, loss_config,
        lambda dropout: DiffusionStepConfig(latent_scale=2.0, rhythm=True, rhythm_dropout=dropout),
        {"real": inputs, "shifted": shifted}, mesh)
    terms, _ = eval_step(params, vae_params, jax.random.key(0), host_local_to_global(inputs, mesh))
    assert np.isfinite(float(terms["ddpm"]))
    assert abs(losses[0.0, "real"] - losses[0.0, "shifted"]) > 1e-6
    assert losses[1.0, "real"] == losses[1.0, "shifted"]


def test_simulator_rows_are_drawn_block_by_block_and_gathered_in_place():
    """Each block of 8 consecutive records gives its own half (so a data shard draws only its own records), and
    take_rows is x[rows] exactly."""
    from sediff_jax.diffusion.losses import SIM_ROW_BLOCK, take_rows

    mask = np.ones(32, np.float32)
    mask[[3, 17, 18]] = 0
    rows = np.asarray(simulator_rows(jnp.asarray(mask), 0.5, jax.random.key(3)))
    assert SIM_ROW_BLOCK == 8 and rows.shape == (16,)
    for b in range(4):
        part = rows[4 * b:4 * b + 4]
        assert np.all((part >= 8 * b) & (part < 8 * b + 8)) and len(set(part)) == 4
        assert not {3, 17, 18} & set(part)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 5, 3)), jnp.float32)
    np.testing.assert_array_equal(take_rows(x, jnp.asarray(rows), 32), x[rows])
    np.testing.assert_array_equal(take_rows(x[:, 0, 0], jnp.asarray(rows), 32), x[rows, 0, 0])
    odd = np.asarray(simulator_rows(jnp.ones(6), 0.5, None))  # gcd(6, 8) = 2: one row of each pair
    np.testing.assert_array_equal(odd, [0, 2, 4])


def test_lead_amplitudes_reach_the_denoiser_train_its_embedding_and_their_dropout_removes_them(batch):
    """An amplitude denoiser's loss depends on the batch's amplitudes (the embedding's zero output layer gets a
    gradient from the first step); with amplitude dropout 1 they cannot matter; the evaluation step (no dropout)
    uses them."""
    loss_config = DiffusionLossConfig(fs=FS, euler_weight=0.0, interlead_weight=0.0, sim_weight=0.0)
    vae_graphdef, vae_params = split_params(ECGVAE(VAE_CONFIG, rngs=nnx.Rngs(0)))
    graphdef, fresh = split_params(LatentDenoiser(dataclasses.replace(DENOISER_CONFIG, amplitude_leads=12),
                                                  rngs=nnx.Rngs(1)))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), fresh)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10))
    mesh = make_mesh(jax.devices()[:1])
    amplitudes = np.asarray(batch["ecg"].max(axis=1) - batch["ecg"].min(axis=1), np.float32)
    amplitudes[2, 4] = np.nan  # one unknown lead
    inputs = {**{k: batch[k] for k in DIFFUSION_BATCH_KEYS}, "amplitudes": amplitudes}
    taller = dict(inputs, amplitudes=3 * amplitudes)
    losses, eval_step = _one_step_losses(
        graphdef, params, vae_graphdef, vae_params, loss_config,
        lambda dropout: DiffusionStepConfig(latent_scale=2.0, amplitudes=True, amplitude_dropout=dropout),
        {"real": inputs, "taller": taller}, mesh)
    assert abs(losses[0.0, "real"] - losses[0.0, "taller"]) > 1e-6
    assert losses[1.0, "real"] == losses[1.0, "taller"]
    evals = [float(eval_step(params, vae_params, jax.random.key(0), host_local_to_global(b, mesh))[0]["ddpm"])
             for b in (inputs, taller)]
    assert evals[0] != evals[1]
    # a trained denoiser with a new embedding (zero output layer, as a warm start gives) learns it (2 steps: the
    # first one's learning rate is 0, warmup)
    warm = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "amplitude_embed/out" in jax.tree_util.keystr(path, simple=True,
                                                                                          separator="/") else x,
        params)
    assert float(jnp.abs(warm["amplitude_embed"]["out"]["kernel"][...]).max()) == 0
    train_step, _ = make_diffusion_steps(graphdef, vae_graphdef, tx, _SCHEDULES["cosine50"], loss_config,
                                         DiffusionStepConfig(latent_scale=2.0, amplitudes=True), WAVES, 0.99, mesh)
    state = init_state(warm, tx, 3)
    for _ in range(2):
        state, _ = train_step(state, vae_params, host_local_to_global(inputs, mesh))
    assert float(jnp.abs(state.params["amplitude_embed"]["out"]["kernel"][...]).max()) > 0
