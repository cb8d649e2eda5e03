"""Latent denoiser: shapes, masking and condition dropout behave as specified, unknown metadata is safe."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sediff_jax.models.conditions import Conditions
from sediff_jax.models.denoiser import DenoiserConfig, LatentDenoiser, timestep_embedding

CONFIG = DenoiserConfig(channels=(16, 32, 32), attention=(False, True, True), num_heads=2, context_dim=24,
                        time_embed_dim=16, num_groups=4)


def _model():
    model = LatentDenoiser(CONFIG, rngs=nnx.Rngs(0))
    # The output conv starts at zero (the usual diffusion init); give it weights so outputs depend on inputs.
    model.conv_out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(9), model.conv_out.kernel[...].shape)
    return model


def _inputs(b=2, length=125, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    conditions = Conditions(
        text_tokens=jax.random.normal(k[0], (b, 7, 24)),
        text_mask=jnp.array([[True] * 5 + [False] * 2] * b),
        experience_tokens=jax.random.normal(k[1], (b, 4, 24)),
        experience_mask=jnp.ones((b, 4), bool),
        age=jnp.array([63.0, jnp.nan][:b]),
        sex=jnp.array([1, -1][:b]),
        hr=jnp.array([72.0, 110.0][:b]),
    )
    return jax.random.normal(k[2], (b, length, 4)), jnp.array([10, 700][:b]), conditions


forward = nnx.jit(lambda m, x, t, c, d: m(x, t, c, d))


def test_shape_odd_lengths_and_zero_init():
    x, t, c = _inputs(length=125)
    fresh = forward(LatentDenoiser(CONFIG, rngs=nnx.Rngs(0)), x, t, c, None)
    assert fresh.shape == (2, 125, 4) and float(jnp.abs(fresh).max()) == 0.0
    out = forward(_model(), x, t, c, None)
    assert out.shape == (2, 125, 4) and bool(jnp.all(jnp.isfinite(out)))  # age NaN and sex -1 are handled


def test_masked_tokens_and_dropped_conditions_do_not_matter():
    model = _model()
    x, t, c = _inputs()
    base = forward(model, x, t, c, None)
    changed = c.replace(text_tokens=c.text_tokens.at[:, 5:].set(100.0))  # only masked positions
    np.testing.assert_allclose(forward(model, x, t, changed, None), base, atol=1e-5)
    other_text = c.replace(text_tokens=-c.text_tokens)
    assert float(jnp.abs(forward(model, x, t, other_text, None) - base).max()) > 1e-4  # text matters
    drop_text = jnp.array([[True, False, False]] * 2)
    np.testing.assert_allclose(forward(model, x, t, other_text, drop_text), forward(model, x, t, c, drop_text),
                               atol=1e-5)
    drop_meta = jnp.array([[False, False, True]] * 2)
    other_meta = c.replace(age=jnp.array([20.0, 80.0]), hr=jnp.array([50.0, 150.0]), sex=jnp.array([0, 1]))
    np.testing.assert_allclose(forward(model, x, t, other_meta, drop_meta), forward(model, x, t, c, drop_meta),
                               atol=1e-5)
    assert float(jnp.abs(forward(model, x, t, other_meta, None) - base).max()) > 1e-4  # metadata matters


def test_timestep_and_gradients():
    model = _model()
    x, t, c = _inputs()
    assert float(jnp.abs(forward(model, x, t + 100, c, None) - forward(model, x, t, c, None)).max()) > 1e-4
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def grads(p):
        return jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(x, t, c) ** 2))(p)

    leaves = jax.tree.leaves(grads(params))
    nonzero = sum(bool(jnp.any(g != 0)) for g in leaves)
    assert nonzero >= 0.9 * len(leaves)  # every block is on the gradient path
    emb = timestep_embedding(jnp.array([0, 1, 999]), 16)
    assert emb.shape == (3, 16) and float(jnp.abs(emb[0] - emb[1]).max()) > 0.1


def test_repa_features_come_from_the_same_forward_pass_and_reach_the_middle_block():
    """with_features returns the plain call's prediction (bit for bit) and the middle block's output through the
    projector, (batch, padded time / 4, repa_dim); the projector's gradient flows back into the down path; a
    denoiser without a projector says so."""
    import dataclasses

    import pytest

    config = dataclasses.replace(CONFIG, repa_dim=8, repa_hidden=16)
    model = LatentDenoiser(config, rngs=nnx.Rngs(0))
    model.conv_out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(9), model.conv_out.kernel[...].shape)
    x, t, c = _inputs(length=125)
    out, features = nnx.jit(lambda m, x, t, c: m.with_features(x, t, c))(model, x, t, c)
    np.testing.assert_array_equal(out, forward(model, x, t, c, None))
    assert features.shape == (2, 32, 8) and features.dtype == jnp.float32

    def alignment(m):
        return jnp.sum(m.with_features(x, t, c)[1])

    grads = nnx.jit(nnx.grad(alignment))(model)
    assert float(jnp.abs(grads.down[0].conv1.kernel[...]).max()) > 0  # reaches the first level
    assert float(jnp.abs(grads.conv_out.kernel[...]).max()) == 0  # not the output head
    with pytest.raises(ValueError, match="repa_dim > 0"):
        _model().with_features(x, t, c)


def test_amplitude_condition_starts_silent_then_steers_and_unknown_is_nan_or_none():
    """amplitude_leads=12: a model warm-started from one without (`training.warm_start.with_new_layers`: its
    weights, the new embedding freshly initialised) predicts exactly what that one did, whatever the amplitudes
    (the embedding's output layer is zero); once trained (weights perturbed) the amplitudes steer it, unknown
    (None) equals all-NaN, and one NaN lead is handled."""
    from sediff_jax.training.state import split_params
    from sediff_jax.training.warm_start import with_new_layers

    amp_config = dataclasses.replace(CONFIG, amplitude_leads=12)
    x, t, c = _inputs()
    amplitudes = jnp.array([[0.8, 1.2, 0.6, 0.9, 0.7, 0.9, 1.1, 2.0, 2.4, 1.9, 1.5, 1.2]] * 2)
    plain = _model()
    graphdef, fresh = split_params(LatentDenoiser(amp_config, rngs=nnx.Rngs(5)))
    with_amp = nnx.merge(graphdef, with_new_layers(fresh, split_params(plain)[1], "test"))
    np.testing.assert_array_equal(forward(with_amp, x, t, c.replace(amplitudes=amplitudes), None),
                                  forward(plain, x, t, c, None))
    with_amp.amplitude_embed.out.kernel[...] = 0.3 * jax.random.normal(
        jax.random.key(3), with_amp.amplitude_embed.out.kernel[...].shape)
    told = forward(with_amp, x, t, c.replace(amplitudes=amplitudes), None)
    taller = forward(with_amp, x, t, c.replace(amplitudes=2 * amplitudes), None)
    assert float(jnp.abs(taller - told).max()) > 1e-4
    unknown = forward(with_amp, x, t, c, None)
    np.testing.assert_array_equal(unknown, forward(with_amp, x, t, c.replace(amplitudes=jnp.full((2, 12), jnp.nan)),
                                                   None))
    assert float(jnp.abs(unknown - told).max()) > 1e-4
    one_missing = forward(with_amp, x, t, c.replace(amplitudes=amplitudes.at[0, 3].set(jnp.nan)), None)
    assert bool(jnp.all(jnp.isfinite(one_missing)))
    with pytest.raises(ValueError, match="amplitude_leads=8"):
        DenoiserConfig(amplitude_leads=8)


def test_the_ectopic_channel_starts_silent_when_a_scaffold_model_grows_it():
    """rhythm_channels 3 -> 4 (`warm_start.GROWABLE`): the input layer keeps the source's kernel for its channels
    and the new one starts at zero, so the grown model predicts exactly what the source did whatever the new
    channel says; once that weight moves, the channel steers it. Other shape changes stay an error."""
    from sediff_jax.checkpoints.stage import CheckpointError
    from sediff_jax.signal.phase import pad_peaks, rhythm_features
    from sediff_jax.training.state import split_params
    from sediff_jax.training.warm_start import with_new_layers

    x, t, c = _inputs()
    peaks = jnp.asarray(pad_peaks([20.0 + np.cumsum([0, 100, 100, 100, 65, 135, 100, 100]),
                                   15.0 + np.cumsum([0, 65, 135, 65, 135, 65, 135])], 16))
    scaffold = dataclasses.replace(CONFIG, rhythm_channels=3)
    source = LatentDenoiser(scaffold, rngs=nnx.Rngs(0))
    source.conv_out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(9), source.conv_out.kernel[...].shape)
    graphdef, fresh = split_params(LatentDenoiser(dataclasses.replace(CONFIG, rhythm_channels=4), rngs=nnx.Rngs(5)))
    grown = nnx.merge(graphdef, with_new_layers(fresh, split_params(source)[1], "test"))
    ectopic = rhythm_features(peaks, 125, 8, 4)
    assert float(ectopic[..., 3].sum()) > 0
    before = forward(source, x, t, c.replace(rhythm=ectopic[..., :3]), None)
    np.testing.assert_array_equal(forward(grown, x, t, c.replace(rhythm=ectopic), None), before)
    np.testing.assert_array_equal(np.asarray(grown.conv_in.kernel[...][:, :7]), np.asarray(source.conv_in.kernel[...]))
    grown.conv_in.kernel[...] = grown.conv_in.kernel[...].at[:, 7].set(0.5)
    assert float(jnp.abs(forward(grown, x, t, c.replace(rhythm=ectopic), None) - before).max()) > 1e-4
    plain = split_params(_model())[1]  # no scaffold (4 input channels) -> 8: not a growth warm starts make
    with pytest.raises(CheckpointError, match="conv_in/kernel.*has shape"):
        with_new_layers(fresh, plain, "test")
    with pytest.raises(ValueError, match="rhythm_channels=5"):
        DenoiserConfig(rhythm_channels=5)


def test_amplitude_features_are_the_log_where_known():
    from sediff_jax.models.denoiser import MIN_AMPLITUDE_MV, amplitude_features

    a = np.array([[1.0, np.e, np.nan, 0.001] + [1.0] * 8], np.float32)
    f = np.asarray(amplitude_features(jnp.asarray(a)))
    np.testing.assert_allclose(f[0, :4], [0.0, 1.0, 0.0, np.log(MIN_AMPLITUDE_MV)], rtol=1e-6)
    np.testing.assert_array_equal(f[0, 12:16], [1, 1, 0, 1])
