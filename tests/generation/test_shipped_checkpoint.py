"""The shipped checkpoint (checkpoints/sediff_ptbxl100): present, within the size budget, loadable, and matching
this code's text encoder and simulator prior. (colab/quickstart.ipynb's test generates from it.)"""

import json

import numpy as np

from sediff_jax.generation import Generator, load_model, make_prompt
from sediff_jax.generation.model import (
    CONFIG_FILE, EXPERIENCE_PROFILES_FILE, MODEL_FORMAT, MODEL_VERSION, WEIGHTS_FILE,
)


def test_shipped_checkpoint_loads_with_its_text_encoder_and_prior(repo_root):
    directory = repo_root / "checkpoints" / "sediff_ptbxl100"
    assert (directory / WEIGHTS_FILE).stat().st_size <= 30 * 2**20
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["format"] == MODEL_FORMAT and config["version"] == MODEL_VERSION
    assert config["training"]["command"].startswith("python -m experiments.train")
    # a fine-tune says what it started from (the model id, its prediction target and the steps it added)
    init_from = config["training"]["init_from"]
    assert init_from["model_id"] and init_from["prediction"] in ("epsilon", "v") and init_from["step"] > 0
    model = load_model(directory)
    card = (repo_root / "checkpoints" / "README.md").read_text()
    assert model.id in card and init_from["model_id"] in card  # the model card documents this model
    assert model.fs == 100.0 and model.num_samples == 1000 and model.schedule.num_steps == 1000
    generator = Generator(model)  # raises if the MiniLM weights or the prior classes differ
    assert generator.latent_shape == (125, 4)
    # trained with experience: its PTB-XL profile corpus ships with it, so --experience=auto retrieves offline
    assert config["experience"]["used"] and (directory / EXPERIENCE_PROFILES_FILE).is_file()
    prompt = make_prompt("Atrial fibrillation. Left ventricular hypertrophy.", age=74, sex="M", hr=95)
    report, = generator.experience_reports([prompt])
    assert report.startswith("Experience from 5 similar patients") and "atrial fibrillation" in report
    # its corpus carries each training record's lead amplitudes at 100 Hz, so the default sampler draws them
    assert generator.has_retrieved_amplitudes
    drawn = generator.retrieved_amplitudes([prompt], seed=0)
    assert np.isfinite(drawn).all() and 0.1 < np.median(drawn) < 5  # mV


def test_device_burst_continues_the_shipped_model_in_its_own_prediction_target(repo_root):
    """`make device-train` fine-tunes the shipped model; a burst with another prediction target would spend its
    minutes re-learning the output instead of training."""
    from experiments.configs import device_burst

    shipped = json.loads((repo_root / device_burst.SHIPPED / CONFIG_FILE).read_text())
    config = device_burst.get_config()
    assert config.diffusion.init_from == device_burst.SHIPPED
    assert config.diffusion.loss.prediction == shipped["prediction"] == shipped["loss"]["prediction"]


def test_candidate_checkpoints_load_and_say_what_they_start_from(repo_root):
    """Models under checkpoints/candidates/ (the next shipped model while its full benchmark is pending) load with
    this code, stay within the size budget, record their training command and the model they were fine-tuned
    from, and are documented in checkpoints/README.md."""
    candidates = sorted(p for p in (repo_root / "checkpoints" / "candidates").glob("*") if p.is_dir())
    card = (repo_root / "checkpoints" / "README.md").read_text()
    for directory in candidates:
        assert (directory / WEIGHTS_FILE).stat().st_size <= 30 * 2**20
        config = json.loads((directory / CONFIG_FILE).read_text())
        assert config["training"]["command"].startswith("python -m experiments.train")
        assert config["training"]["init_from"]["model_id"], directory
        model = load_model(directory)
        assert model.fs == 100.0 and model.num_samples == 1000
        assert f"candidates/{directory.name}" in card and model.id in card
        Generator(model)  # the text encoder and prior classes match this code
