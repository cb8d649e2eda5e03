"""One writer per folder: an advisory lock (`fcntl.flock` on the folder itself, so no lock file is written) that
a tool holds on its output folder or training workdir until it exits or releases it. The kernel drops a killed
process's lock, so its folder is free again at once. `sediff_jax.io.outputs` takes these locks.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sediff_jax.errors import SediffError


class FolderBusyError(SediffError, ValueError):
    """Another process holds the folder's writer lock (or the folder cannot be locked)."""


_LOCKS: dict[Path, int] = {}  # folder (resolved) -> the open descriptor whose flock this process holds


def _lock_holders(folder: Path) -> list[int]:
    """PIDs holding a flock on `folder`, from /proc/locks (Linux); empty where that cannot be read."""
    try:
        inode = folder.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            if int(fields[5].rsplit(":", 1)[-1]) == inode:
                holders.append(int(fields[4]))
        except ValueError:
            continue
    return holders


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return ""


def lock_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Take this process's writer lock on the existing folder `path` (kept until exit or `release_folder`; taking
    it again is a no-op). FolderBusyError naming the holder's PID if another process has it."""
    import fcntl

    key = Path(path).resolve()
    if key in _LOCKS:
        return
    fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise FolderBusyError(f"{flag}={path}: cannot lock the folder ({e})") from None
        holders = [p for p in _lock_holders(key) if p != os.getpid()]
        who = (f"process {holders[0]}" + (f" ({_process_name(holders[0])})" if _process_name(holders[0]) else "")
               if holders else "another process")
        raise FolderBusyError(f"{flag}={path} is being written by {who}; one writer per folder: wait for it to "
                              "finish, or name another folder") from None
    _LOCKS[key] = fd


def holds_lock(path: str | os.PathLike) -> bool:
    """Whether this process holds the writer lock on `path`."""
    return Path(path).resolve() in _LOCKS


def release_folder(path: str | os.PathLike) -> None:
    """Give up this process's writer lock on `path`, if it holds one."""
    fd = _LOCKS.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # (closing the descriptor drops the flock)


def release_all_folders() -> None:
    """Give up every writer lock this process holds (a CLI's run is over)."""
    for path in list(_LOCKS):
        release_folder(path)
