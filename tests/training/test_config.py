"""The training config schema: every key has its default in one place; unknown keys are refused by name."""

import ml_collections
import pytest

from sediff_jax.training.config import VARIANTS, apply_variant, base_config, resolve, resolve_training


def test_resolve_fills_what_a_config_leaves_out():
    partial = ml_collections.ConfigDict({"seed": 3, "data": {"fs": 500.0}, "diffusion": {"loss": {"sim_weight": 0.0}}})
    config = resolve(partial)
    assert config.seed == 3 and config.data.fs == 500.0 and config.diffusion.loss.sim_weight == 0.0
    base = base_config()
    assert config.data.duration_s == base.data.duration_s and config.diffusion.loss.sim_solver == "heun"
    assert config.vae.training.to_dict() == base.vae.training.to_dict()
    assert resolve(base).to_dict() == base.to_dict()


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(ValueError, match="'diffusion.loss.sim_wieght' is unknown"):
        resolve(ml_collections.ConfigDict({"diffusion": {"loss": {"sim_wieght": 0.0}}}))
    with pytest.raises(ValueError, match="'data' must be a group"):
        resolve(ml_collections.ConfigDict({"data": 3}))


def test_optional_values_may_change_type():
    assert resolve(ml_collections.ConfigDict({"data": {"highpass_hz": 0.5}})).data.highpass_hz == 0.5


def test_resolve_training_and_variants():
    group = resolve_training(ml_collections.ConfigDict({"batch_size": 4, "num_steps": 6, "log_every": 1}))
    assert group.halt_at_step == 0 and group.max_to_keep == 3 and group.log_every == 1
    for variant, changes in VARIANTS.items():
        config = apply_variant(base_config(), variant)
        for key, value in changes.items():
            assert (config[key] if "." in key else config.diffusion.loss[key]) == value
    assert apply_variant(base_config(), "scaffold").diffusion.model.rhythm_channels == 3
    with pytest.raises(ValueError, match="variant 'nope' is unknown"):
        apply_variant(base_config(), "nope")
