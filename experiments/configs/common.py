"""Where the named configs find real data, and the training schema they start from.

The schema (`base_config`), its ablation variants (`VARIANTS`, `apply_variant`) and `resolve` live in the library,
`sediff_jax.training.config`; this module adds the data locations of this checkout.
"""

from __future__ import annotations

import os

from sediff_jax.training.config import VARIANTS, apply_variant, base_config, optimizer, training

__all__ = ["VARIANTS", "apply_variant", "base_config", "data_dir", "dataset_dir", "optimizer", "training"]


def data_dir() -> str:
    """Real PhysioNet records: $SEDIFF_DATA_DIR, else ../shared/data next to the repository."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("SEDIFF_DATA_DIR", os.path.join(here, "..", "..", "..", "shared", "data"))


DATASET_FOLDERS = {"ptbxl": "ptb-xl", "ludb": "ludb", "mimic": "mimic-iv-ecg"}


def dataset_dir(dataset: str) -> str:
    """The default root of a dataset layout under `data_dir()` (ptbxl -> ptb-xl, ...)."""
    return os.path.join(data_dir(), DATASET_FOLDERS.get(dataset, dataset))
