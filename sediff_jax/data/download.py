"""Checksummed, resumable downloads of PhysioNet datasets (PTB-XL by default).

PhysioNet publishes `SHA256SUMS.txt` at the root of each dataset version. `download_physionet` fetches it,
then every listed file that passes `include`, into `dest_dir`: files already present with the right hash
are kept, partial `*.part` files are resumed with HTTP Range requests, and each file is checked before it is
renamed into place. A mismatch is a `ChecksumError` naming the file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from sediff_jax.io.atomic import atomic_path
from sediff_jax.errors import SediffError

PTBXL_URL = "https://physionet.org/files/ptb-xl/1.0.3/"
SUMS_FILE = "SHA256SUMS.txt"
_CHUNK = 1 << 20


class ChecksumError(SediffError, RuntimeError):
    """A downloaded file whose SHA-256 differs from the dataset's SHA256SUMS.txt."""


class DownloadError(SediffError, RuntimeError):
    """A file that could not be fetched."""


@dataclasses.dataclass
class DownloadReport:
    listed: int = 0
    downloaded: int = 0
    resumed: int = 0
    already_present: int = 0
    bytes_fetched: int = 0


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_sums(text: str, where: str = SUMS_FILE) -> dict[str, str]:
    """{relative path: sha256 hex} from a SHA256SUMS.txt; rejects paths that leave the dataset folder."""
    sums = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DownloadError(f"{where}:{line_number}: not a 'sha256 path' line: {line!r}")
        digest, path = parts[0].lower(), parts[1].strip().lstrip("*")
        normal = posixpath.normpath(path)
        if normal.startswith("../") or normal == ".." or posixpath.isabs(normal):
            raise DownloadError(f"{where}:{line_number}: unsafe path {path!r}")
        sums[normal] = digest
    return sums


def ptbxl_files(fs: tuple[int, ...] = (100, 500)) -> Callable[[str], bool]:
    """Which PTB-XL files to fetch: the metadata plus the waveforms at the sampling rates `fs`."""
    folders = tuple(f"records{rate}/" for rate in fs)

    def include(path: str) -> bool:
        return not path.startswith("records") or path.startswith(folders)

    return include


def _open(url: str, timeout: float, start: int = 0):
    request = urllib.request.Request(url, headers={"User-Agent": "sediff_jax"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {e}") from e


def _fetch_file(base_url: str, relative: str, digest: str, dest_dir: str, timeout: float) -> tuple[str, int]:
    """Fetch one file; returns (what happened, bytes fetched)."""
    target = os.path.join(dest_dir, *relative.split("/"))
    if os.path.exists(target) and sha256_of(target) == digest:
        return "already_present", 0
    os.makedirs(os.path.dirname(target), exist_ok=True)
    part = target + ".part"
    start = os.path.getsize(part) if os.path.exists(part) else 0
    url = urllib.parse.urljoin(base_url, urllib.parse.quote(relative))
    fetched = 0
    with _open(url, timeout, start) as response:
        resumed = start > 0 and response.status == 206
        with open(part, "ab" if resumed else "wb") as f:
            for block in iter(lambda: response.read(_CHUNK), b""):
                f.write(block)
                fetched += len(block)
    actual = sha256_of(part)
    if actual != digest:
        os.remove(part)  # a later run starts this file afresh
        raise ChecksumError(f"{target}: SHA-256 {actual} does not match {SUMS_FILE} ({digest}); "
                            f"downloaded from {url}")
    os.replace(part, target)
    return ("resumed" if resumed else "downloaded"), fetched


def download_physionet(
    dest_dir: str,
    base_url: str = PTBXL_URL,
    *,
    include: Callable[[str], bool] = lambda path: True,
    num_workers: int = 8,
    timeout: float = 60.0,
    log: Callable[[str], None] = lambda message: None,
) -> DownloadReport:
    """Download (or complete) a PhysioNet dataset into `dest_dir`, verifying every file.

    Raises ChecksumError for a file whose hash differs, DownloadError for one that cannot be fetched."""
    if not base_url.endswith("/"):
        base_url += "/"
    os.makedirs(dest_dir, exist_ok=True)
    with _open(urllib.parse.urljoin(base_url, SUMS_FILE), timeout) as response:
        sums_text = response.read().decode("utf-8")
    sums = {p: d for p, d in parse_sums(sums_text, base_url + SUMS_FILE).items() if include(p)}
    with atomic_path(os.path.join(dest_dir, SUMS_FILE)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(sums_text)
    report = DownloadReport(listed=len(sums))
    log(f"{len(sums)} files listed in {base_url}{SUMS_FILE}")
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        futures = {pool.submit(_fetch_file, base_url, p, d, dest_dir, timeout): p for p, d in sorted(sums.items())}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            outcome, fetched = future.result()  # re-raises ChecksumError / DownloadError
            setattr(report, outcome, getattr(report, outcome) + 1)
            report.bytes_fetched += fetched
            if done % 1000 == 0:
                log(f"{done}/{len(sums)} files")
    return report
