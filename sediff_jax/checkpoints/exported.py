"""The exported-model format in one place: a directory holding `config.json` (a `ModelSpec`), `model.safetensors`
(`denoiser/...` and `vae/...` float tensors, float32 or float16) and, for a model trained with experience,
`experience_profiles.npz` (its retrieval corpus). Read (`read_exported`, `read_exported_spec`, `exported_vae`),
detected (`is_exported`, `is_exported_model`) and written (`check_export_target`, `write_exported`) here;
`generation.model.export_model` and `load_model` build on it, and stage 2 can start from its VAE.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from sediff_jax.checkpoints.errors import CheckpointError
from sediff_jax.checkpoints.spec import MODEL_FORMAT, MODEL_VERSION, ModelSpec
from sediff_jax.checkpoints.weights import unflatten_params
from sediff_jax.io import jsonio
from sediff_jax.io.outputs import OutputError, replace_directory, working_folder
from sediff_jax.models.vae import ECGVAE
from sediff_jax.optim import abstract_split

CONFIG_FILE, WEIGHTS_FILE, EXPERIENCE_PROFILES_FILE = "config.json", "model.safetensors", "experience_profiles.npz"
EXPORTED_FILES = (CONFIG_FILE, WEIGHTS_FILE, EXPERIENCE_PROFILES_FILE)


def _config(directory: str | os.PathLike) -> tuple[dict, Path]:
    config_path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: unreadable model config ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a model config (a JSON object is expected)")
    if config.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{config_path}: not an SE-Diff model (format {config.get('format')!r})")
    if config.get("version") != MODEL_VERSION:
        raise CheckpointError(f"{config_path}: model version {config.get('version')!r}; this sediff_jax reads "
                              f"version {MODEL_VERSION}")
    return config, config_path


def read_exported_spec(directory: str | os.PathLike) -> ModelSpec:
    """The ModelSpec of an exported model from its config.json alone (no weights read), checked field by field."""
    config, config_path = _config(directory)
    return ModelSpec.from_json(config, str(config_path))


def read_exported(directory: str | os.PathLike) -> tuple[ModelSpec, dict[str, np.ndarray], Path]:
    """(spec, flat float tensors, weights path) of an exported model directory, each file checked; CheckpointError
    names the file and what is wrong."""
    spec = read_exported_spec(directory)
    weights_path = Path(directory) / WEIGHTS_FILE
    try:
        flat = load_file(str(weights_path))
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: missing (the model directory needs {WEIGHTS_FILE})") from None
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise CheckpointError(f"{weights_path}: unreadable weights ({e})") from None
    return spec, flat, weights_path


def exported_vae(directory: str, dtype: jnp.dtype = jnp.float32) -> tuple[nnx.GraphDef, Any, ModelSpec]:
    """(graphdef, params, the model's spec) of the VAE inside an exported model directory (its config.json and
    model.safetensors `vae/...` tensors): stage 2 can start from a shipped model's VAE."""
    spec, flat, weights_path = read_exported(directory)
    graphdef, template = abstract_split(lambda: ECGVAE(spec.vae, dtype=dtype, rngs=nnx.Rngs(0)))
    return graphdef, unflatten_params(template, flat, "vae", str(weights_path)), spec


def is_exported(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds an exported model's files (not a training stage directory)."""
    return (Path(directory) / CONFIG_FILE).is_file() and (Path(directory) / WEIGHTS_FILE).is_file()




def is_exported_model(directory: str | os.PathLike) -> bool:
    """Whether `directory` is an exported model directory: a config.json of our format and nothing but the
    files `export_model` writes."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        names = {e.name for e in directory.iterdir()}
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == MODEL_FORMAT and names <= set(EXPORTED_FILES)


def check_export_target(out_dir: str | os.PathLike | None, overwrite: bool = False) -> Path:
    """The export folder, checked before any work: a new folder, or with `overwrite` an existing exported model
    (never the working directory or above it, a git checkout, or a folder with other files).  Raises OutputError
    (a ValueError) or FileExistsError, naming the folder."""
    path = working_folder(out_dir, "--out")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True / --overwrite to replace the model "
                                  "exported there)")
        if not is_exported_model(path):
            foreign = sorted(e.name for e in path.iterdir() if e.name not in EXPORTED_FILES)
            raise OutputError(f"--out={path} is not an exported SE-Diff model ("
                              + (f"it holds {foreign[0]}, which export_model did not write" if foreign else
                                 f"no {CONFIG_FILE} of format {MODEL_FORMAT!r}")
                              + "); --overwrite replaces only an exported model")
    return path


def write_exported(spec: ModelSpec, flat: dict[str, np.ndarray], out_dir: str | os.PathLike,
                   profiles: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write an exported model directory atomically: the files go to a temporary sibling directory that replaces
    the target by rename-aside. flat: the `denoiser/...` and `vae/...` tensors as they are to be stored.
    profiles: the experience corpus to ship beside them (None: none). With `overwrite`, only an existing exported
    model is replaced (see `check_export_target`)."""
    from safetensors.numpy import save_file

    out_dir = Path(os.path.abspath(check_export_target(out_dir, overwrite)))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file({k: np.array(v, order="C") for k, v in flat.items()}, str(tmp / WEIGHTS_FILE))  # keeps 0-d
        (tmp / CONFIG_FILE).write_text(jsonio.dumps(spec.to_json(), indent=1, sort_keys=True) + "\n")
        if profiles is not None:  # the retrieval corpus travels with the model: --experience=auto works offline
            shutil.copyfile(profiles, tmp / EXPERIENCE_PROFILES_FILE)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        replace_directory(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
