"""Files shipped with sediff_jax (the trained SE-Diff model, the evaluation CLIP model): `checkpoints/` of a
source checkout or an editable install, `sediff_jax/shipped/` of an installed wheel (setup.py maps one onto the
other), so `load_model(SHIPPED_CHECKPOINT)` works either way."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_path(name: str) -> Path:
    """The shipped file or folder `name` (e.g. 'sediff_ptbxl100'); where neither place has it, the checkout's
    path (so the error of whoever opens it names the expected location)."""
    candidates = (_PACKAGE.parent / "checkpoints" / name, _PACKAGE / "shipped" / name)
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]
