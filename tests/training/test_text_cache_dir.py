"""Stage 2's text encodings live in `text.cache_dir` when it is set, so runs over the same texts (the ablation's
variants) encode each text once; by default they live in the workdir."""

import os

import numpy as np

from experiments.configs import tiny
from sediff_jax.training.stages import diffusion_conditions


def test_runs_share_the_encodings_of_one_cache_dir(tmp_path):
    config = tiny.get_config()
    texts = ["Sinus rhythm. Normal ECG.", "Atrial fibrillation."]
    first = diffusion_conditions(config, str(tmp_path / "default"))
    expected = first.caches[0].lookup(texts)
    first.save_caches()
    assert os.listdir(tmp_path / "default") == [f"text_cache_{config.text.encoder}.npz"]

    config.text.cache_dir = str(tmp_path / "shared")
    a = diffusion_conditions(config, str(tmp_path / "a"))
    a.caches[0].lookup(texts)
    a.save_caches()
    b = diffusion_conditions(config, str(tmp_path / "b"))
    assert len(b.caches[0]) == 2  # read back from the shared directory, not encoded again
    np.testing.assert_array_equal(b.caches[0].lookup(texts).tokens, expected.tokens)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert sorted(os.listdir(tmp_path / "shared")) == [f"text_cache_{config.text.encoder}.npz"]
