"""Shared fixtures of the training tests."""

import pytest


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> str:
    """A 48-record synthetic prepared dataset at 100 Hz, shared by a module's training runs."""
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(PrepareConfig(dataset="synthetic", out_dir=str(out), canonical=CanonicalConfig(fs=100.0),
                          num_synthetic=48))
    return str(out)
