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


# --- the schema's values: type and range of every key (issue: overrides validated before any work) ----------------

def _leaf_keys(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_key_has_a_rule_and_every_named_config_passes():
    import importlib

    from sediff_jax.training.config import RULES

    assert set(_leaf_keys(base_config())) == set(RULES)
    for name in ("tiny", "synthetic", "ptbxl100", "ptbxl100_full", "ptbxl500", "mimic", "pod"):
        module = importlib.import_module(f"experiments.configs.{name}")
        for variant in VARIANTS:
            resolve(module.get_config(variant))


BAD_VALUES = [
    ("precision", "garbage", "precision='garbage' must be one of float32, bfloat16"),
    ("precision", "float16", "must be one of float32, bfloat16"),
    ("data.loader_workers", -1, r"data.loader_workers=-1 must be >= 0"),
    ("data.loader_workers", 1000, r"data.loader_workers=1000 must be <= "),
    ("diffusion.training.batch_size", 0, "diffusion.training.batch_size=0 must be >= 1"),
    ("vae.training.batch_size", True, "must be an integer"),
    ("vae.training.num_steps", 2.5, "must be an integer"),
    ("diffusion.training.eval_every", 0, "must be >= 1"),
    ("data.fs", 10000.0, "data.fs=10000.0 must be <= 2000"),
    ("data.duration_s", 3600.0, "data.duration_s=3600.0 must be <= 60"),
    ("diffusion.optimizer.learning_rate", float("nan"), "learning_rate=nan must be finite"),
    ("diffusion.optimizer.learning_rate", 0.0, "must be > 0"),
    ("vae.optimizer.ema_decay", 1.0, "must be <= "),
    ("diffusion.condition_dropout", (0.1, 0.1), "must have 3 entries"),
    ("diffusion.condition_dropout", (0.1, 0.1, 2.0), "entry 2.0 must be <= 1"),
    ("diffusion.model.channels", (64, 0, 128), "entry 0 must be >= 1"),
    ("diffusion.model.channels", (64, 100000, 128), "entry 100000 must be <= 2048"),
    ("diffusion.model.attention", (False, True), "attention has 2 entries but diffusion.model.channels has 3"),
    ("diffusion.model.num_heads", 3, "128 is not divisible by diffusion.model.num_heads=3"),
    ("diffusion.schedule.kind", "sigmoid", "must be one of cosine, linear"),
    ("diffusion.loss.ddpm_weighting", "p2", "must be one of uniform, min_snr"),
    ("diffusion.loss.repa_weight", 0.5, "repa_weight > 0 needs diffusion.model.repa_dim > 0"),
    ("diffusion.loss.repa_weight", -1.0, "must be >= 0"),
    ("diffusion.model.repa_dim", -1, "must be >= 0"),
    ("diffusion.loss.sim_solver", "rk4", "must be one of heun"),
    ("data.dataset", "imagenet", "must be one of ptbxl"),
    ("text.encoder", "gpt", "must be one of minilm, hashing"),
    ("seed", -1, "seed=-1 must be >= 0"),
    ("data.highpass_hz", 0.0, "must be > 0"),
    ("stage", "all", "stage='all' must be one of vae, diffusion, both"),
    ("variant", "best", "variant='best' must be one of full"),
    ("diffusion.latent_cache_dtype", "int8", "must be one of float16, float32"),
]


def _override(key: str, value):
    """The schema's defaults with `key` (dotted) set to `value`, type unchecked (as a --config.* override)."""
    config = base_config()
    *groups, name = key.split(".")
    target = config
    for group in groups:
        target = target[group]
    with target.ignore_type():
        target[name] = value
    return config


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_the_key(key, value, message):
    from sediff_jax.errors import SediffError
    from sediff_jax.training.config import ConfigError

    with pytest.raises(ConfigError, match=message) as caught:
        resolve(_override(key, value))
    assert isinstance(caught.value, SediffError) and isinstance(caught.value, ValueError)


def _fuzz_overrides(examples: int) -> None:
    """Random values of random types at random keys: resolve either accepts the config or raises ConfigError
    naming that key; never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sediff_jax.training.config import RULES, ConfigError

    keys = sorted(RULES)
    values = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True),
                       st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 5000), st.floats(-2, 2),
                                                                st.booleans()), max_size=5).map(tuple))

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(key=st.sampled_from(keys), value=values)
    def check(key, value):
        try:
            resolve(_override(key, value))
        except ConfigError as e:
            assert key.rsplit(".", 1)[-1] in str(e) or "diffusion.model" in str(e), str(e)

    check()


def test_fuzzed_overrides_are_accepted_or_refused_by_name():
    _fuzz_overrides(300)


@pytest.mark.slow
def test_fuzzed_overrides_many():
    _fuzz_overrides(2000)


def test_a_checkpoint_written_before_a_setting_existed_resumes_at_its_default_and_not_otherwise():
    """A recipe key added to the schema later (e.g. diffusion.loss.repa_weight) ran at its default in an older
    checkpoint: a run that keeps the default resumes; one that changes it is refused naming it."""
    from sediff_jax.checkpoints.stage import CheckpointError
    from sediff_jax.training.stages import check_recipe, recipe

    config = resolve(base_config())
    now = recipe(config, "diffusion")
    older = {k: v for k, v in now.items() if not k.startswith(("diffusion.loss.repa", "diffusion.model.repa"))}
    assert len(older) < len(now)
    check_recipe({"recipe": older}, now, "old_run", 1000)  # the defaults: resumes
    config.diffusion.loss.repa_weight = 0.5
    with pytest.raises(CheckpointError, match=r"diffusion.loss.repa_weight: 0.0 there, 0.5 now"):
        check_recipe({"recipe": older}, recipe(config, "diffusion"), "old_run", 1000)
    config = resolve(base_config())
    config.diffusion.loss.euler_weight = 0.1  # a key the checkpoint has: compared as before
    with pytest.raises(CheckpointError, match=r"diffusion.loss.euler_weight: 0.05 there, 0.1 now"):
        check_recipe({"recipe": now}, recipe(config, "diffusion"), "old_run", 1000)
