"""The output-directory policy (nothing deleted that a tool did not write), strict JSON, and the export swap."""

import io
import json
import os

import numpy as np
import pytest

from sediff_jax.io import jsonio
from sediff_jax.io.outputs import (LEDGER_FILE, OutputError, output_dir, replace_directory, usable_path,
                                   working_folder)

TOOL = "sample"


def test_protected_folders_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "repo" / "sub"
    work.mkdir(parents=True)
    (tmp_path / "repo" / ".git").mkdir()
    monkeypatch.chdir(work)
    for path, reason in ((".", "working directory"), ("..", "contains the working directory"),
                         (str(tmp_path), "contains the working directory"), ("/", "refusing to write there"),
                         (str(tmp_path / "repo"), "contains the working directory")):
        with pytest.raises(OutputError, match=reason):
            output_dir(path, tool=TOOL, overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="git checkout"):
        working_folder(tmp_path / "repo", "--workdir")
    with pytest.raises(OutputError, match="is empty"):
        output_dir("", tool=TOOL)
    with pytest.raises(OutputError, match="is empty"):
        usable_path("  ", "--out")


def test_a_new_folder_is_checked_but_not_created(tmp_path):
    out = output_dir(tmp_path / "a" / "b", tool=TOOL)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        output_dir(tmp_path / "file" / "b", tool=TOOL)
    with pytest.raises(OutputError, match="exists and is not a folder"):
        output_dir(tmp_path / "file", tool=TOOL)
    assert out.mkdir().is_dir()


def _write(out, name, text):
    with out.writing(name):
        path = out.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_overwrite_clears_exactly_what_the_record_lists(tmp_path):
    folder = tmp_path / "out"
    out = output_dir(folder, tool=TOOL)
    for name in ("ecg_000_00.hea", "ecg_000_00.dat", "manifest.json", "sub/beat.npz"):
        _write(out, name, "old")
    (folder / ".tmp-abc").mkdir()  # a temporary folder a killed run left behind
    (folder / ".report.md.tmp-x1.md").write_text("half")  # and a temporary file of io.atomic
    with pytest.raises(OutputError, match="not empty; pass --overwrite"):
        output_dir(folder, tool=TOOL)
    out = output_dir(folder, tool=TOOL, overwrite=True)
    assert sorted(out.clear()) == [".report.md.tmp-x1.md", ".tmp-abc", "ecg_000_00.dat", "ecg_000_00.hea",
                                   "manifest.json", "sub/beat.npz"]
    assert sorted(p.name for p in folder.iterdir()) == [LEDGER_FILE]  # the emptied sub/ went too
    assert json.loads((folder / LEDGER_FILE).read_text())["files"] == {}


def test_overwrite_refuses_foreign_changed_and_other_tools_files_and_deletes_none(tmp_path):
    """The old pattern policy deleted a user's ecg_patient1.hea (it matched ecg_*) and every *.json/*.png of a
    figures folder under fit_simulator: now any file the record does not list as this tool's refuses."""
    folder = tmp_path / "out"
    out = output_dir(folder, tool=TOOL)
    _write(out, "ecg_000_00.hea", "ours")
    (folder / "ecg_patient1.hea").write_text("a user's record")
    with pytest.raises(OutputError, match=r"holds ecg_patient1.hea, which sample did not write \(written by no "
                                          r"tool of ours\)"):
        output_dir(folder, tool=TOOL, overwrite=True)
    (folder / "ecg_patient1.hea").unlink()
    with pytest.raises(OutputError, match=r"holds ecg_000_00.hea, which fit_simulator did not write \(written by "
                                          r"sample\)"):
        output_dir(folder, tool="fit_simulator", overwrite=True)
    (folder / "ecg_000_00.hea").write_text("ours, edited by the user")
    with pytest.raises(OutputError, match="ecg_000_00.hea was changed after sample wrote it"):
        output_dir(folder, tool=TOOL, overwrite=True)
    assert (folder / "ecg_000_00.hea").read_text() == "ours, edited by the user"
    (folder / "deep").mkdir()
    (folder / "deep" / "notes.txt").write_text("mine")
    (folder / "ecg_000_00.hea").write_text("ours")
    with pytest.raises(OutputError, match="holds deep/notes.txt"):
        output_dir(folder, tool=TOOL, overwrite=True)
    # a changed file is not deleted even when the check was skipped (the folder changed after the check)
    (folder / "deep" / "notes.txt").unlink()
    out = output_dir(folder, tool=TOOL, overwrite=True)
    (folder / "ecg_000_00.hea").write_text("changed after the check")
    assert out.clear() == [] and (folder / "ecg_000_00.hea").read_text() == "changed after the check"


def test_a_folder_without_a_record_is_all_foreign_and_a_damaged_record_refuses(tmp_path):
    docs = tmp_path / "images"
    docs.mkdir()
    for name in ("fit.json", "fit.npz", "fit.png"):  # what fit_simulator's old patterns (*.json ...) claimed
        (docs / name).write_text("a README figure")
    with pytest.raises(OutputError, match="fit.json, which fit_simulator did not write.*has no "
                                          r"\.sediff_outputs\.json"):
        output_dir(docs, tool="fit_simulator", overwrite=True)
    assert sorted(p.name for p in docs.iterdir()) == ["fit.json", "fit.npz", "fit.png"]
    folder = tmp_path / "out"
    out = output_dir(folder, tool=TOOL)
    _write(out, "a.txt", "x")
    (folder / LEDGER_FILE).write_text("{not json")
    with pytest.raises(OutputError, match="record of earlier outputs is damaged"):
        output_dir(folder, tool=TOOL, overwrite=True)


def test_a_pending_entry_is_ours_and_symlinks_are_checked(tmp_path):
    """A run killed between writing a file and recording its hash leaves a pending entry: still ours. A symlink
    in the folder is foreign; a dangling symlink as the folder is refused."""
    folder = tmp_path / "out"
    out = output_dir(folder, tool=TOOL)
    out.reserve(["ecg_000_00.hea"])
    (folder / "ecg_000_00.hea").write_text("written, not yet recorded")
    assert output_dir(folder, tool=TOOL, overwrite=True).clear() == ["ecg_000_00.hea"]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "precious.txt").write_text("keep")
    (folder / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="holds link, which sample did not write"):
        output_dir(folder, tool=TOOL, overwrite=True)
    assert (tmp_path / "elsewhere" / "precious.txt").exists()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="is a symlink to .*nowhere, which does not exist"):
        output_dir(tmp_path / "dangling", tool=TOOL)
    with pytest.raises(OutputError, match="which does not exist"):
        output_dir(tmp_path / "dangling" / "sub", tool=TOOL)


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


def test_output_files_never_replace_a_file_the_tool_did_not_write(tmp_path):
    """gallery --out=fig.png replaced a user's PNG: a named output file that exists is refused unless --overwrite,
    and then only when the folder's record lists it as this tool's and unchanged."""
    from sediff_jax.io.outputs import output_files

    figure = tmp_path / "fig.png"
    figure.write_bytes(b"a user's figure")
    with pytest.raises(OutputError, match="fig.png exists; pass --overwrite"):
        output_files([figure], tool="gallery")
    with pytest.raises(OutputError, match="fig.png exists and gallery did not write it"):
        output_files([figure], tool="gallery", overwrite=True)
    assert figure.read_bytes() == b"a user's figure"
    ours = tmp_path / "ours.png"
    out = output_files([ours], tool="gallery")
    with out.writing(ours.name):
        ours.write_bytes(b"plot 1")
    out = output_files([ours], tool="gallery", overwrite=True)  # its own earlier output: fine
    with out.writing(ours.name):
        ours.write_bytes(b"plot 2")
    with pytest.raises(OutputError, match="exists and simulate did not write it"):
        output_files([ours], tool="simulate", overwrite=True)
    ours.write_bytes(b"edited")
    with pytest.raises(OutputError, match="was changed after gallery wrote it"):
        output_files([ours], tool="gallery", overwrite=True)


_HOLDER = """
import sys, time
from sediff_jax.io.outputs import output_dir
out = output_dir(sys.argv[1], tool="sample")
out.mkdir()
print("locked", flush=True)
time.sleep(60)
"""


def test_one_writer_per_folder_and_a_killed_holders_lock_is_free(tmp_path, repo_root):
    """A second process is refused by every entry point (output_dir, output_files, a workdir, writing) while the
    first holds the folder, naming its PID, and nothing is written; once the holder is killed the folder is free."""
    import signal
    import subprocess
    import sys

    from sediff_jax.io.outputs import (FolderBusyError, OutputDir, check_workdir, output_dir, output_files,
                                       release_folder)

    folder = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=repo_root, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in folder.iterdir())
        attempts = [lambda: output_dir(folder, tool="sample", overwrite=True),
                    lambda: output_files([folder / "g.png"], tool="gallery"),
                    lambda: check_workdir(folder, tool="train"),
                    lambda: OutputDir(folder, "sample").reserve(["x.npz"])]
        for attempt in attempts:
            with pytest.raises(FolderBusyError, match=rf"is being written by process {holder.pid} \(.*python"):
                attempt()
        assert sorted(p.name for p in folder.iterdir()) == before  # nothing written, nothing deleted
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    out = output_dir(folder, tool="sample", overwrite=True)  # the kernel dropped the killed holder's lock
    with out.writing("a.txt"):
        (folder / "a.txt").write_text("x")
    output_dir(folder, tool="sample", overwrite=True)  # this process holds it now: taking it again is fine
    release_folder(folder)


def test_cleanup_of_temporaries_needs_the_lock(tmp_path, repo_root):
    """clear() removes leftover temporary files only under the writer lock: while another process holds the
    folder (and may be writing them), it is refused instead."""
    import signal
    import subprocess
    import sys

    from sediff_jax.io.outputs import FolderBusyError, OutputDir

    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], cwd=repo_root, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (folder / ".ecg_0.npz.tmp-abc.npz").write_text("half written by the holder")
        with pytest.raises(FolderBusyError):
            OutputDir(folder, "sample").clear()
        assert (folder / ".ecg_0.npz.tmp-abc.npz").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert OutputDir(folder, "sample").clear() == [".ecg_0.npz.tmp-abc.npz"]
