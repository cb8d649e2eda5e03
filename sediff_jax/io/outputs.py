"""One output-folder policy for every writer: never delete or replace what this tool did not write.

A tool names the folder it writes (`output_dir`), and every file it writes there is entered in the folder's
ledger, `.sediff_outputs.json`: its name, the tool, its size and SHA-256. `--overwrite` decides by that record,
never by a file-name pattern:

* an empty path, the working directory or any folder above it, the filesystem root, the home folder, and a git
  checkout are refused; so is a dangling symlink;
* a folder that does not exist yet is fine (its nearest existing parent must be a writable folder);
* a folder with files in it is refused unless `overwrite`, and even then only when every file in it (at any
  depth) is in the ledger as this tool's and unchanged since it was written; the refusal names one foreign or
  changed file. `clear()` removes exactly those files, just before the new ones are written (after the compute
  has succeeded), so a failed run leaves the previous outputs in place.

Writers enter a file in the ledger before it exists (`writing(...)`, as pending) and complete the entry (size
and hash) once it is in place, so a run killed in between leaves nothing the next `--overwrite` would call
foreign. Our atomic writers' temporary files (`.tmp-*`, `.<name>.tmp-*`) are ours by name; only the folder's
writer-lock holder (`sediff_jax.io.locks`, taken once the checks pass) deletes leftover ones.

`replace_directory` swaps a complete new folder into place by rename-aside (old -> aside, new -> target, then the
aside is deleted), so a crash at any instant leaves either the old or the new folder under the target name.

Checks run before any model or data is loaded; `OutputError` names the path and what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fnmatch
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from sediff_jax.errors import SediffError
from sediff_jax.io.atomic import atomic_path
from sediff_jax.io.locks import (FolderBusyError, holds_lock, lock_folder, release_all_folders,  # noqa: F401
                                 release_folder)

# Temporary files and folders our atomic writers create next to their targets (io.atomic, export).
TEMPORARY_PATTERNS = (".tmp-*", ".*.tmp-*", ".*.aside-*")
# The record of what each tool wrote into an output folder.
LEDGER_FILE = ".sediff_outputs.json"
LEDGER_FORMAT = "sediff_jax.outputs/1"


class OutputError(SediffError, ValueError):
    """An output path that this tool must not write (or cannot): the message names the path and the reason."""


def _protected_reason(path: Path) -> str | None:
    """Why `path` (absolute, resolved) may never be a tool's output folder, or None."""
    cwd = Path.cwd().resolve()
    if path == cwd:
        return "it is the working directory"
    if path in cwd.parents:
        return "it contains the working directory"
    if path == Path(path.anchor):
        return "it is the filesystem root"
    home = Path.home().resolve()
    if path == home or path in home.parents:
        return "it is the home folder or above it"
    if (path / ".git").exists():
        return "it is a git checkout"
    return None


def usable_path(path: str | os.PathLike | None, flag: str) -> Path:
    """`path` as a Path, refusing an empty one, a dangling symlink, and one whose nearest existing parent is not a
    writable folder (checked before any work, so a run never fails at its last step for want of a place to
    write)."""
    if path is None or not str(path).strip():
        raise OutputError(f"{flag} is empty; name where to write")
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{flag}={path} is a symlink to {os.readlink(path)}, which does not exist")
    if path.exists():
        if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise OutputError(f"{flag}={path} is not writable")
        return path
    probe = path.absolute().parent
    while not probe.exists() and probe.parent != probe:
        if probe.is_symlink():
            raise OutputError(f"{flag}={path}: {probe} is a symlink to {os.readlink(probe)}, which does not exist")
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{flag}={path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{flag}={path}: {probe} is not writable")
    return path


def working_folder(path: str | os.PathLike | None, flag: str) -> Path:
    """A folder a tool keeps state in and may reuse (a training workdir): usable (see `usable_path`) and not one
    of the folders no tool may take over (the working directory or above it, root, home, a git checkout)."""
    if path is not None and str(path).strip() and Path(path).expanduser().is_file():
        raise OutputError(f"{flag}={path} exists and is not a folder")
    path = usable_path(path, flag)
    reason = _protected_reason(path.resolve())
    if reason:
        raise OutputError(f"{flag}={path}: refusing to write there ({reason}); name a folder of its own")
    return path


# A training workdir's marker, written when a run first takes the folder: later runs resume there.
WORKDIR_MARKER = ".sediff_workdir.json"
WORKDIR_FORMAT = "sediff_jax.workdir/1"
_EXPORTED_MODEL_FILES = ("model.safetensors",)  # (checkpoints.trained.WEIGHTS_FILE: what marks an exported model)


def _is_legacy_workdir(path: Path) -> bool:
    """A training workdir written before workdirs had a marker: a stage folder with orbax checkpoints, and no
    exported model's weights."""
    return (not any((path / f).exists() for f in _EXPORTED_MODEL_FILES)
            and any((path / stage / "checkpoints").is_dir() for stage in ("vae", "diffusion")))


def check_workdir(path: str | os.PathLike | None, flag: str = "--workdir", tool: str = "train",
                  lock: bool = True) -> Path:
    """A training workdir, checked before anything is written: a new or empty folder, or one that holds a run of
    ours (its marker, or an older run's stage checkpoints). An exported model, a folder of other files, the
    working directory or above it, home, root and a git checkout are refused (OutputError naming the folder). An
    existing workdir is locked for this process (`lock_folder`; `lock=False` on the other hosts of a multi-host
    run, which share the first host's)."""
    path = working_folder(path, flag)
    if not path.exists() or (path / WORKDIR_MARKER).is_file() or _is_legacy_workdir(path):
        if path.is_dir() and lock:
            lock_folder(path, flag)
        return path
    entries = sorted(e.name for e in path.iterdir() if not _is_temporary(e.name))
    if not entries:
        if lock:
            lock_folder(path, flag)
        return path
    if any((path / f).exists() for f in _EXPORTED_MODEL_FILES):
        raise OutputError(f"{flag}={path} is an exported model, not a training workdir; {tool} would overwrite its "
                          "files. Train into a folder of its own (a model's VAE can be reused with "
                          "--config.diffusion.vae_checkpoint)")
    raise OutputError(f"{flag}={path} is not empty and holds no {tool} run of ours (it has {entries[0]}"
                      + (f" and {len(entries) - 1} more" if len(entries) > 1 else "") + f", and no {WORKDIR_MARKER}); "
                      "name a new or empty folder, or the workdir of an earlier run to resume it")


def claim_workdir(path: str | os.PathLike, flag: str = "--workdir", tool: str = "train") -> Path:
    """`check_workdir`, then create the folder and its marker (kept if there): later runs know it as ours."""
    path = check_workdir(path, flag, tool)
    path.mkdir(parents=True, exist_ok=True)
    lock_folder(path, flag)
    marker = path / WORKDIR_MARKER
    if not marker.is_file():
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps({"format": WORKDIR_FORMAT, "created_by": tool, "created": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds")}) + "\n", encoding="utf-8")
    return path


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


def _is_temporary(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in TEMPORARY_PATTERNS)


def _files_under(folder: Path) -> list[str]:
    """Every non-folder entry under `folder` (symlinks included, not followed), as '/'-joined relative paths,
    leaving out the ledger and our temporary files and folders."""
    found = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        dirs[:] = [d for d in dirs if not _is_temporary(d) or (Path(root) / d).is_symlink()]
        for d in list(dirs):
            if (Path(root) / d).is_symlink():  # a symlinked folder is an entry of its own, never followed
                dirs.remove(d)
                found.append((rel / d).as_posix())
        for name in files:
            if (rel == Path(".") and name == LEDGER_FILE) or _is_temporary(name):
                continue
            found.append((rel / name).as_posix())
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class OutputDir:
    """A checked output folder.  path: the folder.  tool: the name this tool's files are entered under in the
    folder's ledger (`clear()` removes only those)."""

    path: Path
    tool: str

    @property
    def ledger_path(self) -> Path:
        return self.path / LEDGER_FILE

    def ledger(self) -> dict[str, dict]:
        """The folder's ledger: file name -> {"tool", "size", "sha256"} (size and hash None while pending)."""
        try:
            text = self.ledger_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise OutputError(f"{self.ledger_path}: cannot read the record of earlier outputs ({e})") from None
        try:
            data = json.loads(text)
            files = data["files"]
            if data.get("format") != LEDGER_FORMAT or not isinstance(files, dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("tool"), str) for v in files.values()):
                raise ValueError("unexpected layout")
        except (ValueError, KeyError, TypeError) as e:
            raise OutputError(f"{self.ledger_path}: the record of earlier outputs is damaged ({e}); nothing in "
                              "this folder can be told apart from your own files, so name another folder") from None
        return files

    def _write_ledger(self, files: dict[str, dict]) -> None:
        with atomic_path(self.ledger_path) as tmp:
            tmp.write_text(json.dumps({"format": LEDGER_FORMAT, "files": files}, indent=1, sort_keys=True) + "\n",
                           encoding="utf-8")

    def _relative(self, name: str | os.PathLike) -> str:
        path = Path(name)
        if path.is_absolute():
            path = path.resolve().relative_to(self.path.resolve())
        return path.as_posix()

    def reserve(self, names: Iterable[str | os.PathLike]) -> None:
        """Enter files about to be written (names relative to the folder, or paths inside it) as pending."""
        self.mkdir()
        files = self.ledger()
        for name in map(self._relative, names):
            files[name] = {"tool": self.tool, "size": None, "sha256": None}
        self._write_ledger(files)

    def record(self, names: Iterable[str | os.PathLike]) -> None:
        """Complete the entries of files now in place: their size and SHA-256."""
        files = self.ledger()
        for name in map(self._relative, names):
            size, sha = file_digest(self.path / name)
            files[name] = {"tool": self.tool, "size": size, "sha256": sha}
        self._write_ledger(files)

    @contextlib.contextmanager
    def writing(self, *names: str | os.PathLike) -> Iterator[None]:
        """Enter `names` as pending, run the block that writes them, then record the ones that exist."""
        self.reserve(names)
        try:
            yield
        finally:
            self.record([n for n in names if (self.path / self._relative(n)).is_file()])

    def install(self, files: Iterable[Path]) -> None:
        """Move complete files (from a temporary folder of ours inside this one) into place, in order, entered in
        the ledger."""
        files = list(files)
        self.reserve(f.name for f in files)
        for f in files:
            os.replace(f, self.path / f.name)
        self.record(f.name for f in files)

    def unchanged(self, name: str, entry: dict) -> bool:
        """Whether the file `name` is still what the ledger `entry` recorded (a pending entry: yes)."""
        path = self.path / name
        return entry["sha256"] is None or (not path.is_symlink() and path.is_file()
                                           and file_digest(path) == (entry["size"], entry["sha256"]))

    def check_overwritable(self, flag: str) -> list[str]:
        """The files under the folder, all this tool's and unchanged (else OutputError naming one)."""
        files = self.ledger()
        present = _files_under(self.path)
        for name in present:
            entry = files.get(name)
            if entry is None or entry["tool"] != self.tool:
                whose = ("no tool of ours" if entry is None else entry["tool"])
                hint = ("" if files else f" (this folder has no {LEDGER_FILE}, the record sediff_jax keeps of what "
                        "it wrote, so every file in it counts as yours)")
                raise OutputError(f"{flag}={self.path} holds {name}, which {self.tool} did not write (written by "
                                  f"{whose}){hint}; --overwrite replaces only {self.tool}'s own earlier outputs, so "
                                  "move that file or name another folder")
            if not self.unchanged(name, entry):
                raise OutputError(f"{flag}={self.path}: {name} was changed after {self.tool} wrote it; "
                                  "--overwrite replaces only unchanged outputs, so move it or name another folder")
        return present

    def clear(self, keep: Iterable[str | os.PathLike] = ()) -> list[str]:
        """Remove this tool's earlier outputs (entries of the ledger, and our leftover temporary files) except the
        paths in `keep` (the temporary folder holding the new outputs); returns the names removed."""
        removed: list[str] = []
        if not self.path.is_dir():
            return removed
        lock_folder(self.path)  # (only the writer lock's holder deletes temporaries: they may be another run's)
        kept = {Path(k).name for k in keep}
        for entry in sorted(self.path.iterdir()):
            if _is_temporary(entry.name) and entry.name not in kept:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry.name)
        files = self.ledger()
        for name, entry in sorted(files.items()):
            if entry["tool"] != self.tool or name in kept:
                continue
            path = self.path / name
            if path.is_file() and not path.is_symlink():
                if not self.unchanged(name, entry):
                    continue  # changed since (checked at the start, too): it is no longer ours to delete
                path.unlink()
                removed.append(name)
            del files[name]
            parent = path.parent
            while parent != self.path and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()  # a folder our files alone filled
                parent = parent.parent
        self._write_ledger(files)
        return removed

    def mkdir(self) -> Path:
        """Create the folder (if needed) and take its writer lock."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_folder(self.path)
        return self.path


def output_dir(path: str | os.PathLike | None, *, tool: str, overwrite: bool = False,
               flag: str = "--out_dir") -> OutputDir:
    """Check an output folder under the policy in the module docstring (nothing is created or deleted here)."""
    path = working_folder(path, flag)
    out = OutputDir(path, tool)
    if path.exists():
        # (what a killed run of ours left, temporary files only, does not make a folder non-empty)
        entries = _files_under(path)
        if entries and not overwrite:
            raise OutputError(f"{flag}={path} is not empty; pass --overwrite to replace {tool}'s earlier outputs "
                              "there, or name a new folder")
        out.check_overwritable(flag)
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag}={path} is not writable")
        lock_folder(path, flag)  # (after the checks: a refused run takes nothing)
    return out


def output_files(paths: Iterable[str | os.PathLike], *, tool: str, overwrite: bool = False,
                 flag: str = "--out") -> OutputDir:
    """Check files a tool writes into a folder it does not own (e.g. `gallery --out=fig.png` into the working
    directory): a path that exists is refused unless `overwrite`, and even then unless the folder's record lists
    it as this tool's and unchanged (so a user's file of the same name is never replaced). Returns the folder (an
    `OutputDir`) to enter the files in (`writing`) once written."""
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise OutputError(f"{flag}: no files to write")
    parents = {p.absolute().parent for p in paths}
    if len(parents) != 1:
        raise OutputError(f"{flag}: the files must share one folder, got {sorted(map(str, parents))}")
    for p in paths:
        usable_path(p, flag)
        if p.is_dir():
            raise OutputError(f"{flag}={p} is a folder; name a file")
    folder = OutputDir(parents.pop(), tool)
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OutputError(f"{flag}: {existing[0]} exists; pass --overwrite to replace {tool}'s earlier output, or "
                          "name another file")
    if existing:
        files = folder.ledger()
        for p in existing:
            entry = files.get(p.name)
            if entry is None or entry["tool"] != tool:
                raise OutputError(f"{flag}: {p} exists and {tool} did not write it (written by "
                                  f"{'no tool of ours' if entry is None else entry['tool']}); --overwrite replaces "
                                  f"only {tool}'s own earlier outputs, so name another file")
            if not folder.unchanged(p.name, entry):
                raise OutputError(f"{flag}: {p} was changed after {tool} wrote it; name another file")
    if folder.path.is_dir():
        lock_folder(folder.path, flag)
    return folder


def replace_directory(new: Path, target: Path) -> None:
    """Move the complete folder `new` to `target` (a sibling); an existing `target` is renamed aside first and
    deleted only after the new folder is in place."""
    aside = None
    if target.exists():
        aside = target.parent / f".{target.name}.aside-{os.getpid()}"
        os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
