"""ModelSpec: config.json round trip, legacy files, field checks."""

import dataclasses
import json

import pytest

from sediff_jax.checkpoints import CheckpointError
from sediff_jax.checkpoints.spec import ExperienceSpec, ModelSpec
from sediff_jax.models.denoiser import DenoiserConfig
from sediff_jax.models.vae import VAEConfig

SPEC = ModelSpec(fs=500.0, duration_s=10.0, vae=VAEConfig(beat_samples=300, beat_r_index=100),
                 denoiser=DenoiserConfig(channels=(16, 32), attention=(False, True)), schedule_kind="cosine",
                 schedule_steps=1000, prediction="v", latent_scale=1.5, text_encoder="hashing-32-8",
                 prior_classes=("all", "sediff/sinus_rhythm"),
                 experience=ExperienceSpec(used=True, max_tokens=64, records=12, retrieval={"k": 5}),
                 provenance={"training": {"step": 7}, "metrics": {"ddpm": 0.2}})


def test_to_json_and_back_is_the_same_spec():
    config = json.loads(json.dumps(SPEC.to_json()))  # through JSON types, as on disk
    assert config["format"] == "sediff_jax.model" and config["version"] == 1
    again = ModelSpec.from_json(config, "config.json")
    assert again == SPEC
    assert again.num_samples == 5000 and again.beat_r_index == 100 and again.training == {"step": 7}
    assert again.schedule.num_steps == 1000


def test_a_file_written_before_the_beat_window_moved_into_the_vae_reads_it_from_beat_before_s():
    config = SPEC.to_json()
    del config["vae"]["beat_r_index"]
    config["beat_before_s"] = 0.2
    assert ModelSpec.from_json(config, "old.json").vae.beat_r_index == 100  # 0.2 s at 500 Hz, not the default 20


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("latent_scale"), "has no 'latent_scale'"),
    (lambda c: c.update(fs=-1), "field 'fs'"),
    (lambda c: c.update(prediction="x0"), "field 'prediction'"),
    (lambda c: c["schedule"].update(num_steps=1), "schedule.num_steps"),
    (lambda c: c["vae"].update(colour="red"), "unknown settings"),
    (lambda c: c["vae"].update(beat_r_index=300), "do not build a model"),
    (lambda c: c.update(experience={"used": "yes"}), "field 'experience'"),
])
def test_bad_fields_are_refused_by_name(change, message):
    config = json.loads(json.dumps(SPEC.to_json()))
    change(config)
    with pytest.raises(CheckpointError, match=message):
        ModelSpec.from_json(config, "bad/config.json")


def test_replace_keeps_the_spec_frozen():
    changed = SPEC.replace(weights_dtype="float16")
    assert changed.weights_dtype == "float16" and SPEC.weights_dtype == "float32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.fs = 100.0
