"""`pip install .` (not editable) gives the library with its shipped models and without the experiments."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest


def test_wheel_installs_the_library_with_the_shipped_models(tmp_path, repo_root):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(wheels), str(repo_root)],
                           capture_output=True, text=True, timeout=600)
    if build.returncode != 0 and "Could not find a version" in build.stderr + build.stdout:
        pytest.skip("no package index for the build backend (offline)")
    assert build.returncode == 0, build.stderr[-2000:]
    warned = [line for line in (build.stdout + build.stderr).splitlines() if "BuildBackendWarning" in line]
    assert not warned, warned  # e.g. a data folder that is not declared as a package
    (wheel,) = wheels.glob("sediff_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("experiments/") or n.startswith("checkpoints/")]
    assert "sediff_jax/shipped/sediff_ptbxl100/model.safetensors" in names
    assert "sediff_jax/simulator/priors/ptbxl500_train_v1.json" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    script = (
        "import sediff_jax, pathlib\n"
        f"assert pathlib.Path(sediff_jax.__file__).is_relative_to({str(site)!r}), sediff_jax.__file__\n"
        "from sediff_jax.generation import SHIPPED_CHECKPOINT, load_model\n"
        "from sediff_jax.evaluation.clip import SHIPPED_CLIP\n"
        "model = load_model(SHIPPED_CHECKPOINT)\n"
        "assert SHIPPED_CLIP.exists() and 'shipped' in SHIPPED_CLIP.parts\n"
        "print(model.id, SHIPPED_CHECKPOINT)\n")
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert str(site / "sediff_jax" / "shipped" / "sediff_ptbxl100") in run.stdout


def _fake_python(folder, version: str):
    """An executable `python3` in `folder` that reports `version` (sys.version_info and --version)."""
    folder.mkdir()
    major, minor = map(int, version.split("."))
    script = folder / "python3"
    script.write_text("#!/bin/sh\n"
                      f'if [ "$1" = "--version" ]; then echo "Python {version}.0"; exit 0; fi\n'
                      f"exit {int((major, minor) < (3, 11))}\n")  # (the Makefile's check: sys.version_info < 3.11)
    script.chmod(0o755)
    return script


def test_make_refuses_an_unsupported_python_in_one_line_and_picks_a_supported_one(tmp_path, repo_root):
    """Python 3.10 cannot install jax >= 0.7: the Makefile stops before making a virtualenv, naming the versions;
    with a 3.10 `python3` first on PATH it picks a supported interpreter instead."""
    fake = _fake_python(tmp_path / "bin", "3.10")
    venv = tmp_path / "venv"
    refused = subprocess.run(["make", "-C", str(repo_root), f"VENV={venv}", f"PYTHON={fake}", f"{venv}/.base"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and not venv.exists()
    assert "error: sediff_jax needs Python >= 3.11" in refused.stderr and "is Python 3.10.0" in refused.stderr
    versioned = [p for p in ("python3.12", "python3.11", "python3.13") if shutil.which(p) and subprocess.run(
        [p, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"], capture_output=True).returncode == 0]
    if not versioned:
        pytest.skip("no python3.11/3.12/3.13 on PATH besides python3 to pick")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VENV")}  # (`PYTHON=... make test` sets them)
    env["PATH"] = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    planned = subprocess.run(["make", "-n", "-C", str(repo_root), f"VENV={venv}", f"{venv}/.base"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert planned.returncode == 0, planned.stderr
    venv_line = next(line for line in planned.stdout.splitlines() if line.endswith(f"-m venv {venv}"))
    assert venv_line.split()[0] == versioned[0]
