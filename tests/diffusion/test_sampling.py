"""Sampler maths against closed forms: for Gaussian data x0 ~ N(mu, s^2) the optimal denoiser is known exactly,
so DDPM and DDIM must return N(mu, s^2) samples, and classifier-free guidance between two such models must return
N(mu_u + w (mu_c - mu_u), s^2). DDIM with eta = 1 must be the DDPM ancestral step (Song et al. 2021)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sediff_jax.diffusion.sampling import (
    SamplerConfig, anneal_condition, cads_gamma, denoise_steps, group_guided_epsilon, guided_epsilon, guided_steps,
    initial_latents, noise_levels, record_keys, reverse_step, sample, sampling_timesteps,
)
from sediff_jax.diffusion.schedule import make_schedule, target

SCHEDULE = make_schedule("cosine", 1000)
SHAPE = (4000, 3, 2)  # 24k scalars: standard error of a mean ~0.006 s
MU_C, MU_U, S = 1.5, -0.5, 0.7


def gaussian_epsilon(x_t, t, mu, s=S):
    """E[eps | x_t] for x0 ~ N(mu, s^2) per coordinate."""
    a = jnp.asarray(SCHEDULE.alphas_cumprod, jnp.float32)[t][:, None, None]
    return jnp.sqrt(1 - a) * (x_t - jnp.sqrt(a) * mu) / (a * s**2 + 1 - a)


def gaussian_model(x_t, t, drop):
    """Conditional mean MU_C; with the text group dropped, MU_U."""
    mu = jnp.where(drop[:, 0][:, None, None], MU_U, MU_C)
    return gaussian_epsilon(x_t, t, mu)


def _run(config, key=0, model=gaussian_model, prediction="epsilon", energy=None):
    return np.asarray(jax.jit(lambda k: sample(model, SCHEDULE, prediction, config, SHAPE, k, energy))(
        jax.random.key(key)))


def test_timesteps_descend_from_the_last_to_zero():
    for n in (1, 2, 20, 50, 999, 1000):
        ts = sampling_timesteps(1000, n)
        assert len(ts) == n and ts[0] == 999 and (n == 1 or ts[-1] == 0) and np.all(np.diff(ts) < 0)
    np.testing.assert_array_equal(sampling_timesteps(1000, 1000), np.arange(999, -1, -1))
    with pytest.raises(ValueError, match="num_steps"):
        sampling_timesteps(1000, 1001)


@pytest.mark.parametrize("num_steps", [1000, 50])
def test_ddim_with_eta_one_is_the_ddpm_ancestral_step(num_steps):
    key = jax.random.key(3)
    ddpm = SamplerConfig(kind="ddpm", num_steps=num_steps)
    ddim = SamplerConfig(kind="ddim", num_steps=num_steps, eta=1.0)
    # Over a whole chain the two float32 formulas drift apart by round-off only (~1e-3 after 1000 steps).
    np.testing.assert_allclose(_run(ddpm, 3), _run(ddim, 3), rtol=1e-3, atol=3e-3)
    x = jax.random.normal(key, (16, 3, 2))
    eps = jax.random.normal(jax.random.key(4), x.shape)
    noise = jax.random.normal(jax.random.key(5), x.shape)
    for t, t_prev in ((999, 979), (500, 499), (10, 0), (0, -1)):
        a, _ = reverse_step(SCHEDULE, ddpm, x, eps, jnp.int32(t), jnp.int32(t_prev), noise)
        b, _ = reverse_step(SCHEDULE, ddim, x, eps, jnp.int32(t), jnp.int32(t_prev), noise)
        # Near t = T-1, x0 = (x - sqrt(1-a) eps) / sqrt(a) divides by sqrt(a) ~ 1e-3: float32 round-off ~1e-4.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=5e-4, atol=5e-4)


@pytest.mark.parametrize("kind,num_steps,std_tolerance",
                         [("ddpm", 1000, 0.04), ("ddpm", 100, 0.04), ("ddim", 50, 0.04), ("ddim", 20, 0.10)])
def test_samplers_recover_the_gaussian_data_distribution(kind, num_steps, std_tolerance):
    """DDIM-20's coarse steps shrink the spread a little (discretisation error of the probability-flow ODE)."""
    x = _run(SamplerConfig(kind=kind, num_steps=num_steps, guidance_scale=1.0, eta=0.0))
    assert abs(x.mean() - MU_C) < 0.03, x.mean()
    assert abs(x.std() - S) / S < std_tolerance, x.std()


def test_v_prediction_gives_the_same_samples_as_epsilon_prediction():
    def v_model(x_t, t, drop):
        eps = gaussian_model(x_t, t, drop)
        a = jnp.asarray(SCHEDULE.alphas_cumprod, jnp.float32)[t][:, None, None]
        x0 = (x_t - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
        return target(SCHEDULE, "v", x0, eps, t)

    config = SamplerConfig(kind="ddim", num_steps=20, guidance_scale=2.0)
    np.testing.assert_allclose(_run(config, 1, v_model, "v"), _run(config, 1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guidance_interpolates_and_extrapolates_between_the_two_models(scale):
    x = _run(SamplerConfig(kind="ddim", num_steps=50, guidance_scale=scale))
    expected = MU_U + scale * (MU_C - MU_U)
    assert abs(x.mean() - expected) < 0.03 + 0.01 * scale, (x.mean(), expected)


def test_guidance_scale_zero_and_one_are_the_unconditional_and_conditional_models():
    x = jax.random.normal(jax.random.key(0), (8, 3, 2))
    t = jnp.full((8,), 400, jnp.int32)
    keep, dropped = jnp.zeros((8, 3), bool), jnp.ones((8, 3), bool)
    cond, uncond = gaussian_model(x, t, keep), gaussian_model(x, t, dropped)
    np.testing.assert_array_equal(guided_epsilon(gaussian_model, SCHEDULE, "epsilon", x, t, 0.0), uncond)
    np.testing.assert_array_equal(guided_epsilon(gaussian_model, SCHEDULE, "epsilon", x, t, 1.0), cond)
    np.testing.assert_allclose(guided_epsilon(gaussian_model, SCHEDULE, "epsilon", x, t, 2.5),
                               uncond + 2.5 * (cond - uncond), rtol=1e-6, atol=1e-6)
    # Only the named groups are dropped in the unconditional branch: keeping text keeps MU_C.
    np.testing.assert_allclose(guided_epsilon(gaussian_model, SCHEDULE, "epsilon", x, t, 2.5, (False, True, True)),
                               cond, rtol=1e-6, atol=1e-6)


def test_same_key_same_samples_and_chunked_calls_match_one_call():
    config = SamplerConfig(kind="ddpm", num_steps=30, guidance_scale=1.5)
    a, b, c = _run(config, 7), _run(config, 7), _run(config, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    keys = record_keys(jax.random.key(7), SHAPE[0])
    x = initial_latents(keys, SHAPE)
    for first, count in ((0, 10), (10, 7), (17, 13)):
        x = denoise_steps(gaussian_model, SCHEDULE, "epsilon", config, x, keys, first, count)
    np.testing.assert_allclose(np.asarray(x), a, rtol=1e-5, atol=1e-5)
    # A record's sample depends only on its key: the first 100 records alone give the same samples.
    few = denoise_steps(gaussian_model, SCHEDULE, "epsilon", config, initial_latents(keys[:100], (100,) + SHAPE[1:]),
                        keys[:100])
    np.testing.assert_allclose(np.asarray(few), a[:100], rtol=1e-5, atol=1e-5)


def test_simulator_guidance_pulls_samples_down_the_energy_and_is_off_at_zero():
    def energy(x0):  # a stand-in consistency energy with its minimum at 0.5
        return 0.5 * jnp.sum((x0 - 0.5) ** 2, axis=(1, 2))

    plain = SamplerConfig(kind="ddim", num_steps=50, guidance_scale=1.0, eta=0.0)
    np.testing.assert_array_equal(_run(plain, 2, energy=energy), _run(plain, 2))
    guided = _run(dataclasses.replace(plain, simulator_guidance=0.3), 2, energy=energy)
    assert abs(guided.mean() - 0.5) < abs(_run(plain, 2).mean() - 0.5) - 0.2


SMALL = (64, 3, 2)


def _small(config, key=5):
    return np.asarray(jax.jit(lambda k: sample(gaussian_model, SCHEDULE, "epsilon", config, SMALL, k))(
        jax.random.key(key)))


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_a_guidance_interval_covering_every_step_is_plain_guidance_bit_for_bit(kind):
    plain = SamplerConfig(kind=kind, num_steps=20, guidance_scale=2.0, eta=1.0)
    sigma = noise_levels(SCHEDULE, sampling_timesteps(SCHEDULE.num_steps, 20))
    for interval in ((0.0, float("inf")), (float(sigma.min()) / 2, float(sigma.max()))):
        np.testing.assert_array_equal(_small(dataclasses.replace(plain, guidance_interval=interval)), _small(plain))
    # an interval that covers no step is the conditional model (guidance scale 1), bit for bit
    none = dataclasses.replace(plain, guidance_interval=(1e6, 1e7))
    assert not guided_steps(SCHEDULE, none).any()
    np.testing.assert_array_equal(_small(none), _small(dataclasses.replace(plain, guidance_scale=1.0)))


def test_a_guidance_interval_guides_exactly_the_steps_inside_it():
    """The interval sampler equals running the steps outside it with scale 1 and those inside with the scale:
    composed by hand from chunks of the plain samplers, to float32 rounding (bit for bit with jax 0.10; XLA's
    fusion in jax 0.12 differs by up to 3e-6 on values ~5)."""
    config = SamplerConfig(kind="ddim", num_steps=20, guidance_scale=3.0, eta=1.0)
    sigma = noise_levels(SCHEDULE, sampling_timesteps(SCHEDULE.num_steps, 20))
    interval = (0.3, 5.0)
    inside = (sigma > 0.3) & (sigma <= 5.0)
    assert 0 < inside.sum() < 20 and inside[0] == False  # noqa: E712 (the noisiest steps are outside)
    np.testing.assert_array_equal(guided_steps(SCHEDULE, dataclasses.replace(config, guidance_interval=interval)),
                                  inside)
    keys = record_keys(jax.random.key(5), SMALL[0])
    x = initial_latents(keys, SMALL)
    conditional = dataclasses.replace(config, guidance_scale=1.0)
    step = jax.jit(lambda x, cfg_guided, j: denoise_steps(gaussian_model, SCHEDULE, "epsilon",
                                                           config if cfg_guided else conditional, x, keys, j, 1),
                   static_argnums=(1,))
    for j in range(20):
        x = step(x, bool(inside[j]), j)
    got = _small(dataclasses.replace(config, guidance_interval=interval))
    np.testing.assert_allclose(got, np.asarray(x), rtol=0, atol=1e-5)
    assert not np.allclose(got, _small(config), atol=1e-3)  # and it is not plain guidance


def _three_group_model(x_t, t, drop):
    """A Gaussian model whose mean adds 1.0 for text, 0.5 for experience and 0.25 for metadata when kept."""
    mu = MU_U + jnp.where(drop[:, 0], 0.0, 1.0) + jnp.where(drop[:, 1], 0.0, 0.5) + jnp.where(drop[:, 2], 0.0, 0.25)
    return gaussian_epsilon(x_t, t, mu[:, None, None])


def test_per_group_guidance_scales_each_group_and_equal_scales_are_plain_guidance():
    x = jax.random.normal(jax.random.key(0), (8, 3, 2))
    t = jnp.full((8,), 400, jnp.int32)
    plain = guided_epsilon(_three_group_model, SCHEDULE, "epsilon", x, t, 2.5)
    np.testing.assert_allclose(group_guided_epsilon(_three_group_model, SCHEDULE, "epsilon", x, t, (2.5,) * 3),
                               plain, rtol=1e-5, atol=1e-5)
    # chain members with weight 0 are not evaluated: (3, 1, 1) calls the model on 3 x batch, same result
    calls = []

    def counting(x_t, t, drop):
        calls.append(x_t.shape[0])
        return _three_group_model(x_t, t, drop)

    lean = group_guided_epsilon(counting, SCHEDULE, "epsilon", x, t, (3.0, 1.0, 1.0))
    e = [_three_group_model(x, t, jnp.broadcast_to(jnp.asarray(d), (8, 3))) for d in
         ((True, True, True), (True, True, False), (False, True, False), (False, False, False))]
    np.testing.assert_allclose(lean, e[0] + 1.0 * (e[1] - e[0]) + 3.0 * (e[2] - e[1]) + 1.0 * (e[3] - e[2]),
                               rtol=1e-5, atol=1e-5)
    assert calls == [24]
    # eps is affine in mu here, so the guided mean is MU_U + 1.0 w_text + 0.5 w_exp + 0.25 w_meta
    config = SamplerConfig(kind="ddim", num_steps=50, group_scales=(2.0, 0.0, 1.0))
    got = np.asarray(jax.jit(lambda k: sample(_three_group_model, SCHEDULE, "epsilon", config, SHAPE, k))(
        jax.random.key(1)))
    assert abs(got.mean() - (MU_U + 2.0 + 0.0 + 0.25)) < 0.04, got.mean()


def test_cads_anneals_the_condition_only_at_high_noise_and_keeps_its_statistics():
    config = SamplerConfig(cads_noise=0.25, cads_tau=(0.6, 0.9))
    np.testing.assert_allclose(cads_gamma(jnp.array([0.0, 0.6, 0.75, 0.9, 1.0]), config.cads_tau),
                               [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    y = jax.random.normal(jax.random.key(0), (6, 32)) * 0.3 + 0.1
    mask = jnp.array([True] * 4 + [False] * 2)
    key = jax.random.key(1)
    np.testing.assert_array_equal(anneal_condition(y, mask, jnp.float32(0.5), key, config), y)
    off = dataclasses.replace(config, cads_noise=0.0)
    np.testing.assert_array_equal(anneal_condition(y, mask, jnp.float32(0.95), key, off), y)
    annealed = anneal_condition(y, mask, jnp.float32(0.75), key, config)
    assert not np.allclose(annealed, y)
    valid, got = np.asarray(y)[:4], np.asarray(annealed)[:4]
    assert abs(got.mean() - valid.mean()) < 1e-5 and abs(got.std() - valid.std()) < 1e-4  # rescaled (psi 1)
    assert 0.5 < np.corrcoef(got.ravel(), valid.ravel())[0, 1] < 0.999  # partly the condition, partly noise
    pure = anneal_condition(y, mask, jnp.float32(1.0), key, config)  # gamma 0: noise alone, rescaled
    assert abs(np.corrcoef(np.asarray(pure)[:4].ravel(), valid.ravel())[0, 1]) < 0.3


def test_bad_sampler_settings_are_refused():
    for kwargs, match in (({"kind": "euler"}, "sampler"), ({"num_steps": 0}, "num_steps"),
                          ({"guidance_scale": -1.0}, "guidance_scale"), ({"eta": 2.0}, "eta"),
                          ({"guidance_drop": (False, False, False)}, "guidance_drop"),
                          ({"guidance_interval": (2.0, 1.0)}, "guidance_interval"),
                          ({"guidance_interval": (float("nan"), 1.0)}, "guidance_interval"),
                          ({"group_scales": (1.0, -1.0, 1.0)}, "group_scales"),
                          ({"group_scales": (1.0, 1.0)}, "group_scales"),
                          ({"cads_noise": float("inf")}, "cads_noise"), ({"cads_tau": (0.9, 0.6)}, "cads_tau"),
                          ({"cads_psi": 1.5}, "cads_psi")):
        with pytest.raises(ValueError, match=match):
            SamplerConfig(**kwargs)


def test_describe_names_every_setting_that_changes_the_samples():
    bare = {"exact_limb_leads": False, "lead_amplitudes": "model"}
    assert SamplerConfig(eta=0.0, guidance_scale=1.0, **bare).describe() == "ddim-50, eta 0, guidance 1"
    assert SamplerConfig(kind="ddpm", num_steps=1000, **bare).describe() == "ddpm-1000, guidance 2"
    assert SamplerConfig().describe() == ("ddim-50, eta 1, guidance 2, exact limb leads, lead amplitudes of a "
                                          "retrieved patient where the corpus has them (strength 0.75)")
    text = SamplerConfig(eta=1.0, group_scales=(3.0, 1.0, 1.0), guidance_interval=(0.3, 5.0), cads_noise=0.25,
                         exact_limb_leads=True, lead_amplitudes="model").describe()
    assert text == ("ddim-50, eta 1, guidance text 3 / experience 1 / metadata 1, guided for sigma in (0.3, 5], "
                    "CADS noise 0.25 (tau 0.6-0.9), exact limb leads")


def test_the_recommended_sampler_is_what_every_generating_cli_defaults_to():
    """SamplerConfig.recommended() (and Generator.generate's default) and the CLIs' flag defaults are one setting,
    read from the CLIs' sources so a changed default in either place fails here."""
    import re
    from pathlib import Path

    from sediff_jax.diffusion.sampling import RECOMMENDED

    config = SamplerConfig.recommended()
    assert (config.kind, config.num_steps, config.eta, config.guidance_scale, config.exact_limb_leads,
            config.lead_amplitudes, config.amplitude_strength) == ("ddim", 50, 1.0, 2.0, True, "auto", 0.75)
    assert SamplerConfig() == config  # one set of defaults: the dataclass's are the recommended ones
    assert SamplerConfig.recommended(eta=0.5).eta == 0.5
    root = Path(__file__).resolve().parents[2] / "experiments"
    for name in ("sample", "evaluate", "evaluate_rhythm", "gallery", "downstream", "ablate", "sweep_sampling"):
        source = (root / f"{name}.py").read_text()
        for flag, key in (("steps", "num_steps"), ("eta", "eta"), ("guidance_scale", "guidance_scale")):
            found = re.search(rf'DEFINE_(?:float|integer)\("{flag}", ([0-9.]+)', source)
            if found:
                assert float(found.group(1)) == float(RECOMMENDED[key]), (name, flag)
    cli_source = (root / "cli.py").read_text()
    assert 'DEFINE_bool("exact_limb_leads", True' in cli_source
    assert 'DEFINE_enum("lead_amplitudes", "auto"' in cli_source and 'DEFINE_float("amplitude_strength", 0.75' in cli_source
