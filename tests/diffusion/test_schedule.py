"""Noise schedules and parametrisations: published formulas, exact inversions, and q(x_t | x_0) moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.diffusion import add_noise, make_schedule, predict_epsilon, predict_x0, target


def test_cosine_schedule_follows_nichol_dhariwal():
    s = make_schedule("cosine", 1000)
    f = lambda t: np.cos(((t / 1000) + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert s.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    assert np.all(np.diff(s.alphas_cumprod) < 0) and 0 < s.alphas_cumprod[-1] < 1e-3
    assert np.max(s.betas) <= 0.999 and np.all(s.betas > 0)


def test_linear_schedule_is_ho_et_al():
    s = make_schedule("linear", 1000)
    np.testing.assert_allclose(s.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-9, atol=1e-12)
    assert s.alphas_cumprod[-1] == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_parametrisations_invert_exactly(prediction):
    s = make_schedule("cosine", 1000)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (6, 16, 4))
    noise = jax.random.normal(k2, (6, 16, 4))
    t = jnp.array([0, 1, 100, 500, 900, 998])
    x_t = add_noise(s, x0, noise, t)
    out = target(s, prediction, x0, noise, t)  # a perfect denoiser
    np.testing.assert_allclose(predict_x0(s, prediction, x_t, out, t), x0, atol=2e-3 if prediction == "epsilon" else 1e-5)
    np.testing.assert_allclose(predict_epsilon(s, prediction, x_t, out, t), noise, atol=1e-4)


def test_forward_process_moments():
    s = make_schedule("cosine", 1000)
    t = jnp.full((200000,), 300)
    x0 = jnp.full((200000, 1), 1.5)
    x_t = add_noise(s, x0, jax.random.normal(jax.random.key(1), x0.shape), t)
    a = s.alphas_cumprod[300]
    assert float(jnp.mean(x_t)) == pytest.approx(1.5 * np.sqrt(a), abs=0.01)
    assert float(jnp.var(x_t)) == pytest.approx(1 - a, rel=0.02)


def test_errors():
    with pytest.raises(ValueError, match="unknown"):
        make_schedule("sigmoid")
    s = make_schedule("cosine", 10)
    with pytest.raises(ValueError, match="prediction 'x0' is unknown"):
        target(s, "x0", jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1,), int))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_weighting_is_the_x0_error_weighted_by_clipped_snr(prediction):
    """Hang et al. 2023: the weighted eps (or v) error equals min(SNR, gamma) x the x0 error, per record; the
    plain error stays reported as ddpm_unweighted, and 'uniform' is today's loss."""
    from sediff_jax.diffusion.losses import DiffusionLossConfig, diffusion_losses
    from sediff_jax.simulator.params import WaveParams  # noqa: F401  (no simulator term runs here)

    s = make_schedule("cosine", 1000)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.normal(k1, (5, 16, 4))
    noise = jax.random.normal(k2, x0.shape)
    t = jnp.array([1, 50, 300, 700, 990])
    wrong = jax.random.normal(k3, x0.shape)  # a denoiser that outputs this whatever its input
    config = DiffusionLossConfig(prediction=prediction, euler_weight=0, interlead_weight=0, sim_weight=0,
                                 ddpm_weighting="min_snr", min_snr_gamma=5.0)
    ones = jnp.ones(5)
    per_record = []
    for i in range(5):
        terms = diffusion_losses(lambda x_t, tt: wrong[i:i + 1], None, None, s, config, x0[i:i + 1], t[i:i + 1],
                                 noise[i:i + 1], None, jnp.full((1,), jnp.nan), ones[:1])
        x_t = add_noise(s, x0[i:i + 1], noise[i:i + 1], t[i:i + 1])
        x0_error = float(jnp.mean((predict_x0(s, prediction, x_t, wrong[i:i + 1], t[i:i + 1]) - x0[i:i + 1]) ** 2))
        snr = float(s.snr(t[i]))
        assert float(terms["ddpm"]) == pytest.approx(min(snr, 5.0) * x0_error, rel=2e-3)
        per_record.append(float(terms["ddpm_unweighted"]))
    uniform = DiffusionLossConfig(prediction=prediction, euler_weight=0, interlead_weight=0, sim_weight=0)
    terms = diffusion_losses(lambda x_t, tt: wrong, None, None, s, uniform, x0, t, noise, None,
                             jnp.full((5,), jnp.nan), ones)
    assert "ddpm_unweighted" not in terms and float(terms["ddpm"]) == pytest.approx(np.mean(per_record), rel=1e-5)
    with pytest.raises(ValueError, match="ddpm_weighting"):
        DiffusionLossConfig(ddpm_weighting="snr")


def test_repa_term_is_one_minus_the_cosine_per_time_step_and_enters_the_total_at_its_weight():
    """alignment_loss against a NumPy reference (and its known values: 0 aligned, 1 orthogonal, 2 opposite, scale
    free), a target of another length resampled linearly; diffusion_losses adds repa_weight x L_REPA, weighted
    by record, and refuses the term without features or targets."""
    from sediff_jax.diffusion.losses import DiffusionLossConfig, alignment_loss, diffusion_losses

    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(3, 8, 5)), rng.normal(size=(3, 8, 5))
    cos = np.sum(f * g, -1) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(g, axis=-1))
    np.testing.assert_allclose(alignment_loss(jnp.asarray(f), jnp.asarray(g)), 1 - cos.mean(1), rtol=1e-5)
    e = np.eye(5)[None, :2]
    np.testing.assert_allclose(alignment_loss(jnp.asarray(3 * e), jnp.asarray(e)), [0.0], atol=1e-6)
    np.testing.assert_allclose(alignment_loss(jnp.asarray(e), jnp.asarray(e[:, ::-1])), [1.0], atol=1e-6)
    np.testing.assert_allclose(alignment_loss(jnp.asarray(e), jnp.asarray(-e)), [2.0], atol=1e-6)
    ramp = np.linspace(1.0, 2.0, 4)[None, :, None] * np.ones((1, 1, 5))  # a constant direction: any resampling
    np.testing.assert_allclose(alignment_loss(jnp.ones((1, 9, 5)), jnp.asarray(ramp)), [0.0], atol=1e-6)

    s = make_schedule("cosine", 1000)
    x0, noise = jnp.asarray(rng.normal(size=(3, 16, 4))), jnp.asarray(rng.normal(size=(3, 16, 4)))
    t = jnp.array([10, 400, 900])
    out = jnp.asarray(rng.normal(size=(3, 16, 4)))
    weight = jnp.array([1.0, 1.0, 0.0])  # the third record is padding
    config = DiffusionLossConfig(euler_weight=0, interlead_weight=0, sim_weight=0, repa_weight=0.5)
    terms = diffusion_losses(None, None, None, s, config, x0, t, noise, None, jnp.full((3,), jnp.nan), weight,
                             denoise_features=lambda x_t, tt: (out, jnp.asarray(f)), align_target=jnp.asarray(g))
    expected = float(np.mean((1 - cos.mean(1))[:2]))
    assert float(terms["repa"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["total"]) == pytest.approx(float(terms["ddpm"]) + 0.5 * expected, rel=1e-5)
    with pytest.raises(ValueError, match="needs denoise_features and align_target"):
        diffusion_losses(lambda x_t, tt: out, None, None, s, config, x0, t, noise, None, jnp.full((3,), jnp.nan),
                         weight)
    with pytest.raises(ValueError, match="repa_weight"):
        DiffusionLossConfig(repa_weight=-0.1)
