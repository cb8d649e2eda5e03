"""Test set-up: 8 fake CPU devices for sharding tests and a persistent XLA compilation cache.

Both must be configured before JAX initialises its backend, hence at import time.
"""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
_CACHE_DIR = Path(os.environ.get("SEDIFF_JAX_CACHE", Path.home() / ".cache" / "sediff_jax" / "xla"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

_REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("SEDIFF_DATA_DIR", _REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the real PhysioNet records (`SEDIFF_DATA_DIR`, default ../shared/data); skips when absent."""
    path = _data_dir()
    if not (path / "ptb-xl").is_dir():
        pytest.skip(f"real ECG data not found at {path} (set SEDIFF_DATA_DIR to the folder with ptb-xl/, ludb/)")
    return path


@pytest.fixture(scope="session")
def ptbxl_full_dir() -> Path:
    """All of PTB-XL at 100 Hz, extracted to `SEDIFF_DATA_DIR/ptb-xl-full` (../shared/data/ptb-xl-full/README.md);
    skips when only the recipe is there."""
    path = _data_dir() / "ptb-xl-full"
    if not (path / "records100").is_dir():
        pytest.skip(f"the full PTB-XL is not extracted at {path} (fetch the snapshot and run extract.sh there, or "
                    "point SEDIFF_DATA_DIR at a folder whose ptb-xl-full/ holds records100/)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return _REPO


@pytest.fixture(scope="session")
def exported_model_dir(tmp_path_factory) -> Path:
    """A small random-weight SE-Diff model exported as a model directory (tests/generation/small_model.py)."""
    from sediff_jax.generation.model import export_model
    from tests.generation.small_model import small_model

    return export_model(small_model(), tmp_path_factory.mktemp("model") / "small")


@pytest.fixture(scope="session")
def model(exported_model_dir):
    from sediff_jax.generation.model import load_model

    return load_model(exported_model_dir)


# The longest test files, started first: `make test` runs files on two workers (pytest-xdist, --dist loadfile), so
# the suite ends when its longest file does; started last, these leave one worker idle for minutes.
_LONGEST_FIRST = ("training/test_train.py", "training/test_steps.py", "experiments/test_bad_inputs.py",
                  "test_colab.py", "evaluation/test_paired.py", "generation/test_generation.py",
                  "experiments/test_sample_cli.py", "simulator/test_sharding.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = str(item.path).replace(os.sep, "/")
        return next((k for k, name in enumerate(_LONGEST_FIRST) if path.endswith("tests/" + name)),
                    len(_LONGEST_FIRST))

    items.sort(key=rank)  # (stable: each file keeps its own order)
