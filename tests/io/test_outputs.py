"""The output-directory policy (nothing deleted that a tool did not write), strict JSON, and the export swap."""

import io
import json
import os

import numpy as np
import pytest

from sediff_jax.io import jsonio
from sediff_jax.io.outputs import OutputError, output_dir, replace_directory, usable_path, working_folder

OWNED = ("ecg_*.hea", "ecg_*.dat", "manifest.json")


def test_protected_folders_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "repo" / "sub"
    work.mkdir(parents=True)
    (tmp_path / "repo" / ".git").mkdir()
    monkeypatch.chdir(work)
    for path, reason in ((".", "working directory"), ("..", "contains the working directory"),
                         (str(tmp_path), "contains the working directory"), ("/", "refusing to write there"),
                         (str(tmp_path / "repo"), "contains the working directory")):
        with pytest.raises(OutputError, match=reason):
            output_dir(path, OWNED, overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="git checkout"):
        working_folder(tmp_path / "repo", "--workdir")
    with pytest.raises(OutputError, match="is empty"):
        output_dir("", OWNED)
    with pytest.raises(OutputError, match="is empty"):
        usable_path("  ", "--out")


def test_a_new_folder_is_checked_but_not_created(tmp_path):
    out = output_dir(tmp_path / "a" / "b", OWNED)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        output_dir(tmp_path / "file" / "b", OWNED)
    with pytest.raises(OutputError, match="exists and is not a folder"):
        output_dir(tmp_path / "file", OWNED)
    assert out.mkdir().is_dir()


def test_overwrite_clears_only_this_tools_outputs(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("ecg_000_00.hea", "ecg_000_00.dat", "manifest.json", ".tmp-abc"):
        (folder / name).write_text("old")
    (folder / ".tmp-abc").unlink()
    (folder / ".tmp-abc").mkdir()  # a temporary folder a killed run left behind
    with pytest.raises(OutputError, match="not empty; pass --overwrite"):
        output_dir(folder, OWNED)
    out = output_dir(folder, OWNED, overwrite=True)
    assert sorted(out.clear()) == [".tmp-abc", "ecg_000_00.dat", "ecg_000_00.hea", "manifest.json"]
    assert not any(folder.iterdir())
    (folder / "ecg_001_00.hea").write_text("old")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files t did not write \(notes.txt\)"):
        output_dir(folder, OWNED, overwrite=True, tool="t")
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "ecg_001_00.hea").exists()


def test_replace_directory_swaps_by_rename_aside(tmp_path):
    target, new = tmp_path / "model", tmp_path / ".model.tmp-1"
    target.mkdir()
    (target / "config.json").write_text("old")
    new.mkdir()
    (new / "config.json").write_text("new")
    replace_directory(new, target)
    assert (target / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no aside, no temporary folder left


def test_strict_json_writes_null_for_missing_numbers(tmp_path):
    value = {"a": float("nan"), "b": [1.0, float("inf"), np.float32(2.5)], "c": np.array([np.nan, 1.0]),
             "d": (np.int64(3), None), "e": {"f": -float("inf")}}
    text = jsonio.dumps(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON")) == {
        "a": None, "b": [1.0, None, 2.5], "c": [None, 1.0], "d": [3, None], "e": {"f": None}}
    path = jsonio.write_json(tmp_path / "x.json", value)
    assert json.loads(path.read_text()) == json.loads(text)


def test_export_replaces_an_exported_model_and_nothing_else(model, tmp_path):
    from sediff_jax.generation.model import CONFIG_FILE, export_model, load_model

    target = export_model(model, tmp_path / "model")
    first = (target / CONFIG_FILE).read_text()
    export_model(model, target, extra={"note": "second"}, overwrite=True)
    assert (target / CONFIG_FILE).read_text() != first and load_model(target).id == model.id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    shelf = tmp_path / "checkpoints"
    shelf.mkdir()
    (shelf / "README.md").write_text("model card")
    (shelf / "other.safetensors").write_bytes(b"x")
    with pytest.raises(OutputError, match="did not write"):
        export_model(model, shelf, overwrite=True)
    assert sorted(p.name for p in shelf.iterdir()) == ["README.md", "other.safetensors"]
    (target / "extra.txt").write_text("a user's note")
    with pytest.raises(OutputError, match="did not write"):
        export_model(model, target, overwrite=True)
    assert (target / "extra.txt").exists()
    (target / "extra.txt").unlink()
    with pytest.raises(FileExistsError, match="exists"):
        export_model(model, target)


def test_export_refuses_the_working_directory_and_keeps_everything(model, tmp_path, monkeypatch):
    from sediff_jax.generation.model import export_model

    (tmp_path / ".git").mkdir()
    (tmp_path / "precious.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), ".."):
        with pytest.raises(OutputError, match="refusing to write there"):
            export_model(model, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "precious.txt"]


def test_progress_prints_lines_when_output_is_not_a_terminal():
    from sediff_jax.progress import Progress

    stream = io.StringIO()
    with Progress(100, "sampling", "step", stream=stream) as progress:
        for _ in range(100):
            progress.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("sampling: 10/100 steps (10 %") and "100/100" in lines[-1]
    stream = io.StringIO()
    with Progress(100, "vae", "step", stream=stream, initial=45) as progress:  # a resumed run
        progress.set_postfix(loss="0.25")
        for _ in range(55):
            progress.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6 and lines[0].startswith("vae: 50/100 steps (50 %") and lines[0].endswith("loss=0.25)")


def test_cli_logs_keep_our_messages_and_drop_library_info(tmp_path, repo_root):
    """A CLI's stderr has no INFO lines of the libraries underneath (JAX backend probing, Orbax, TFDS)."""
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": ""}  # let JAX probe for accelerators, as on a user's machine
    done = subprocess.run([sys.executable, "-m", "experiments.simulate", f"--out={tmp_path}/a", "--duration=1",
                           "--fs=100", "--png=false"], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Unable to initialize backend" not in done.stderr and not any(
        line.startswith("I1") for line in done.stderr.splitlines()), done.stderr[-2000:]
