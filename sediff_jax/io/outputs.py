"""One output-directory policy for every writer: never delete what this tool did not write.

A tool names the folder it writes and the glob patterns of the files it writes there (`OutputDir`):

* an empty path, the working directory or any folder above it, the filesystem root, the home folder, and a git
  checkout are refused;
* a folder that does not exist yet is fine (its nearest existing parent must be a writable folder);
* a folder with files in it is refused unless `overwrite`, and even then only when every entry is one of this
  tool's own outputs; `clear()` removes exactly those, just before the new files are written (after the compute
  has succeeded), so a failed run leaves the previous outputs in place.

`replace_directory` swaps a complete new folder into place by rename-aside (old -> aside, new -> target, then the
aside is deleted), so a crash at any instant leaves either the old or the new folder under the target name.

Checks run before any model or data is loaded; `OutputError` names the path and what is wrong.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
from pathlib import Path
from typing import Iterable

# Temporary files and folders our atomic writers create next to their targets (io.atomic, export).
TEMPORARY_PATTERNS = (".tmp-*", ".*.tmp-*", ".*.aside-*")


class OutputError(ValueError):
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
    """`path` as a Path, refusing an empty one and one whose nearest existing parent is not a writable folder
    (checked before any work, so a run never fails at its last step for want of a place to write)."""
    if path is None or not str(path).strip():
        raise OutputError(f"{flag} is empty; name where to write")
    path = Path(path).expanduser()
    if path.exists():
        if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise OutputError(f"{flag}={path} is not writable")
        return path
    probe = path.absolute().parent
    while not probe.exists() and probe.parent != probe:
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


@dataclasses.dataclass(frozen=True)
class OutputDir:
    """A checked output folder.  path: the folder.  owned: glob patterns (file names, no slashes) of what this
    tool writes there; `clear()` removes only entries matching them."""

    path: Path
    owned: tuple[str, ...]

    def owns(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in (*self.owned, *TEMPORARY_PATTERNS))

    def clear(self, keep: Iterable[str | os.PathLike] = ()) -> list[str]:
        """Remove this tool's earlier outputs (and its leftover temporary files) except the paths in `keep` (the
        temporary folder holding the new outputs); returns the names removed."""
        removed = []
        if not self.path.is_dir():
            return removed
        kept = {Path(k).name for k in keep}
        for entry in sorted(self.path.iterdir()):
            if self.owns(entry.name) and entry.name not in kept:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry.name)
        return removed

    def mkdir(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path


def output_dir(path: str | os.PathLike | None, owned: Iterable[str], *, overwrite: bool = False,
               flag: str = "--out_dir", tool: str = "this tool") -> OutputDir:
    """Check an output folder under the policy in the module docstring (nothing is created or deleted here)."""
    path = working_folder(path, flag)
    out = OutputDir(path, tuple(owned))
    if path.exists():
        # (what a killed run of ours left, temporary files only, does not make a folder non-empty)
        entries = sorted(e.name for e in path.iterdir()
                         if not any(fnmatch.fnmatch(e.name, p) for p in TEMPORARY_PATTERNS))
        if entries and not overwrite:
            raise OutputError(f"{flag}={path} is not empty; pass --overwrite to replace {tool}'s earlier outputs "
                              "there, or name a new folder")
        foreign = [e for e in entries if not out.owns(e)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"{flag}={path} holds files {tool} did not write ({shown}); --overwrite replaces "
                              "only its own outputs, so name another folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag}={path} is not writable")
    return out


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
