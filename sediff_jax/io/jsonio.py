"""Strict JSON for every file we write: no NaN / Infinity tokens (which strict parsers reject); a number that is
missing or not finite is written as null."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from sediff_jax.io.atomic import atomic_path


def strict(value: Any) -> Any:
    """`value` with non-finite floats as None, NumPy scalars and arrays as Python numbers and lists, tuples as
    lists (what JSON can hold)."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs) -> str:
    """json.dumps of `strict(value)`; never emits NaN or Infinity."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1, **kwargs) -> Path:
    """Write `value` as strict JSON (plus a newline) to `path`, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(value, indent=indent, **kwargs) + "\n", encoding="utf-8")
    return path
