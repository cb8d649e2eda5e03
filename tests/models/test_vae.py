"""Stage-1 VAE: shapes, the KL term against Monte Carlo, on-device beats against the NumPy median beat on real
records, gradients of every term, and that training steps reduce the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sediff_jax.signal.beats import median_beat, median_beat_jax
from sediff_jax.models import ECGVAE, VAEConfig, VAELossConfig, kl_divergence, vae_losses

FS = 100.0


def _small(beat_samples=60):
    return VAEConfig(channels=(8, 16, 16), num_groups=4, beat_samples=beat_samples, beat_hidden=16)


def _batch(n=4, seed=0):
    from sediff_jax import simulator as sim
    from sediff_jax.signal.rpeaks import detect_r_peaks

    config = sim.SimulatorConfig(duration_s=4.0, fs=FS)
    params = sim.stack_params([sim.preset_params("normal_sinus", hr=60.0 + 15 * k) for k in range(n)])
    ecg = np.asarray(sim.simulate_batch(params, jax.random.split(jax.random.key(seed), n), config))
    r_peaks = np.full((n, 16), -1, np.int32)
    for i in range(n):
        peaks = detect_r_peaks(ecg[i], FS)
        r_peaks[i, : len(peaks)] = peaks
    return jnp.asarray(ecg[:, :400]), jnp.asarray(r_peaks)


def test_shapes_and_deterministic_mean():
    model = ECGVAE(_small(), rngs=nnx.Rngs(0))
    ecg, _ = _batch(2)
    run = nnx.jit(lambda m, x, k: m(x, k))
    out = run(model, ecg, jax.random.key(1))
    assert out["mean"].shape == (2, 50, 4) and out["reconstruction"].shape == (2, 400, 12)
    assert out["beat"].shape == (2, 60, 12)
    a, b = run(model, ecg, None), run(model, ecg, None)
    np.testing.assert_array_equal(a["reconstruction"], b["reconstruction"])
    np.testing.assert_array_equal(a["z"], a["mean"])
    with pytest.raises(ValueError, match="multiple of 8"):
        model(ecg[:, :397])


def test_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean = jnp.asarray(rng.normal(0, 0.7, (1, 5, 3)), jnp.float32)
    log_var = jnp.asarray(rng.normal(-0.5, 0.4, (1, 5, 3)), jnp.float32)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(jax.random.key(0), (200000, 5, 3))
    log_q = -0.5 * ((z - mean) ** 2 / jnp.exp(log_var) + log_var + jnp.log(2 * jnp.pi))
    log_p = -0.5 * (z**2 + jnp.log(2 * jnp.pi))
    monte_carlo = float(jnp.mean(log_q - log_p))
    assert float(kl_divergence(mean, log_var)[0]) == pytest.approx(monte_carlo, abs=5e-3)


def test_device_median_beat_matches_numpy_on_real_records(data_dir):
    from sediff_jax.data.canonical import CanonicalConfig, canonicalize
    from sediff_jax.data.ptbxl import read_ptbxl
    from sediff_jax.data.wfdb_reader import read_record

    entries = read_ptbxl(str(data_dir / "ptb-xl"), 100)[:6]
    records = [canonicalize(read_record(e.path), CanonicalConfig(fs=FS)) for e in entries]
    ecg = np.stack([r.ecg for r in records])
    r_peaks = np.full((len(records), 51), -1, np.int32)
    for i, r in enumerate(records):
        r_peaks[i, : len(r.r_peaks)] = r.r_peaks
    beats, counts = median_beat_jax(jnp.asarray(ecg), jnp.asarray(r_peaks), 20, 40)
    for i, r in enumerate(records):
        expected, n = median_beat(r.ecg, r.r_peaks, FS, 0.2, 0.4)
        assert int(counts[i]) == n
        np.testing.assert_allclose(np.asarray(beats[i]), expected, atol=1e-6)


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_every_term_has_gradient_and_beatless_records_are_masked():
    model = ECGVAE(_small(), rngs=nnx.Rngs(0))
    ecg, r_peaks = _batch(3)
    config = VAELossConfig(fs=FS)
    graphdef, params = nnx.split(model, nnx.Param)

    def term(name, peaks):
        def loss(p):
            return vae_losses(nnx.merge(graphdef, p)(ecg, jax.random.key(0)), ecg, peaks, config)[name]
        return loss

    names = ("reconstruction", "kl", "beat", "spectrum")

    @jax.jit
    def gradient_norms(p, peaks):
        return {name: optax.tree.norm(jax.grad(term(name, peaks))(p)) for name in names}

    norms = gradient_norms(params, r_peaks)
    for name in names:
        assert np.isfinite(float(norms[name])) and float(norms[name]) > 0, name
    no_peaks = jnp.full_like(r_peaks, -1)
    terms = vae_losses(model(ecg), ecg, no_peaks, config)
    assert float(terms["beat"]) == 0.0 and float(terms["spectrum"]) == 0.0
    beatless = gradient_norms(params, no_peaks)
    assert float(beatless["beat"]) == 0.0 and float(beatless["spectrum"]) == 0.0


def test_training_steps_reduce_the_loss():
    model = ECGVAE(_small(), rngs=nnx.Rngs(0))
    ecg, r_peaks = _batch(4)
    config = VAELossConfig(fs=FS)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, key):
        def loss(m):
            return vae_losses(m(ecg, key), ecg, r_peaks, config)["total"]

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    losses = [float(step(model, optimizer, jax.random.key(i))) for i in range(60)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
