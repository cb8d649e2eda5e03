"""Reading WFDB records with checks that turn bad files into errors naming the file.

`wfdb.rdrecord` on a truncated `.dat` fails with a reshape error, or silently returns garbage when a file
is longer than its header says. `read_record` checks the header against the data files first (sizes,
checksums, units, sampling rate) and returns physical units in mV. A PhysioNet record named
`pn://<database>/<version>/<folder>/<record>` is downloaded once into a local cache and read the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import re
from pathlib import Path

import numpy as np
import wfdb
from wfdb.io import download

from sediff_jax.errors import SediffError


class RecordError(SediffError, ValueError):
    """A record that cannot be used as it stands. The message names the file and the problem; `reason` is a
    short code that dataset builds count skipped records by."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


# Bytes per sample of each WFDB storage format (signals of one file are interleaved).
_BYTES_PER_SAMPLE = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}
# Largest |amplitude| accepted, mV: the range of 16-bit WFDB at 1 uV (PTB-XL's resolution). Real surface ECGs stay
# within a few mV; beyond this a record is mis-scaled (wrong gain or units), not an ECG to learn from or fit.
MAX_ABS_MV = 32.768
# Physical units -> factor to mV.
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "μv": 1e-3, "µv": 1e-3, "v": 1e3, "": 1.0}


@dataclasses.dataclass(frozen=True)
class RawRecord:
    """A record as stored: all its signals, in the header's order.

    signal: (time, channels) float32, mV; NaN where the file marks a sample invalid.
    """

    path: str
    signal: np.ndarray
    lead_names: tuple[str, ...]
    fs: float
    comments: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.signal.shape[0] / self.fs


def record_base(path: str | os.PathLike) -> str:
    """A record path without the `.hea`/`.dat` extension."""
    path = os.fspath(path)
    for ext in (".hea", ".dat"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def read_record(
    path: str | os.PathLike,
    *,
    expected_fs: float | None = None,
    verify_checksum: bool = True,
) -> RawRecord:
    """Read a WFDB record (header + data files), validating it against its header.

    Args:
      path: record path, with or without `.hea`; or a PhysioNet record, `pn://<database>/<version>/<folder>/<name>`
        (downloaded once into a local cache by `fetch_physionet_record`, then read and checked like a local one).
      expected_fs: if given, a header with another sampling rate is an error (Hz).
      verify_checksum: compare each signal's checksum with the header's, where the header has one.

    Raises:
      RecordError: missing or unparsable header, a data file missing, shorter or longer than the header
        says, a checksum mismatch, unknown units, or the wrong sampling rate.
    """
    if is_physionet(path):
        path = fetch_physionet_record(os.fspath(path))
    base = record_base(path)
    header_path = base + ".hea"
    if not os.path.exists(header_path):
        raise RecordError(f"{header_path}: header file not found", reason="missing_file")
    try:
        header = wfdb.rdheader(base)
    except Exception as e:  # wfdb raises assorted types for malformed headers
        raise RecordError(f"{header_path}: cannot parse WFDB header ({type(e).__name__}: {e})", reason="bad_header") from e
    if getattr(header, "n_seg", None):
        raise RecordError(f"{header_path}: multi-segment records are not supported", reason="bad_header")
    if not header.n_sig:
        raise RecordError(f"{header_path}: header lists no signals", reason="bad_header")
    described = {len(getattr(header, k) or []) for k in ("file_name", "fmt", "sig_name", "adc_gain")}
    if described != {header.n_sig}:
        raise RecordError(f"{header_path}: the record line says {header.n_sig} signals but {max(described)} signal "
                          "lines follow", reason="bad_header")
    stated_fs = _stated_fs(header_path)
    if stated_fs is not None and not (math.isfinite(stated_fs) and stated_fs > 0):
        raise RecordError(f"{header_path}: invalid sampling rate {stated_fs:g} Hz in the record line",
                          reason="bad_header")
    if not header.fs or header.fs <= 0:
        raise RecordError(f"{header_path}: invalid sampling rate {header.fs!r}", reason="bad_header")
    if expected_fs is not None and not math.isclose(header.fs, expected_fs, rel_tol=1e-6):
        raise RecordError(f"{header_path}: header says {header.fs:g} Hz, expected {expected_fs:g} Hz", reason="wrong_fs")
    if not header.sig_len:
        raise RecordError(f"{header_path}: header gives no signal length", reason="bad_header")
    _check_data_files(header, os.path.dirname(base), header_path)

    if _is_plain_format16(header):
        # Fast path for the common layout (PTB-XL, MIMIC-IV-ECG, LUDB): one interleaved 16-bit file.
        digital = np.fromfile(os.path.join(os.path.dirname(base), header.file_name[0]), dtype="<i2")
        digital = digital.reshape(header.sig_len, header.n_sig)
    else:
        try:
            digital = wfdb.rdrecord(base, physical=False).d_signal
        except Exception as e:
            raise RecordError(f"{base}.dat: cannot read samples ({type(e).__name__}: {e})") from e
    if digital.shape != (header.sig_len, header.n_sig):
        raise RecordError(
            f"{base}: read {digital.shape[0]} samples x {digital.shape[1]} signals, "
            f"header says {header.sig_len} x {header.n_sig}",
            reason="length_mismatch",
        )
    if verify_checksum and header.checksum is not None:
        # A 16-bit checksum; headers write it signed or unsigned, so compare modulo 2**16.
        actual = digital.astype(np.int64).sum(axis=0) % 65536
        for k, expected in enumerate(header.checksum):
            if expected is not None and int(actual[k]) != int(expected) % 65536:
                raise RecordError(
                    f"{os.path.join(os.path.dirname(base), header.file_name[k])}: checksum mismatch in signal "
                    f"{header.sig_name[k]!r} (header {expected}, data {int(actual[k])}); the file is corrupt",
                    reason="checksum",
                )

    gain = np.array([g if g else 200.0 for g in header.adc_gain], np.float64)  # WFDB's default gain is 200
    baseline = np.array([0 if b is None else b for b in header.baseline], np.float64)
    physical = ((digital - baseline) / gain).astype(np.float32)
    physical[digital == _invalid_sample(header)] = np.nan
    scale = np.ones(header.n_sig, np.float32)
    for k, unit in enumerate(header.units or [None] * header.n_sig):
        key = (unit or "").strip().lower()
        if key not in _UNIT_TO_MV:
            raise RecordError(f"{header_path}: signal {header.sig_name[k]!r} has unknown units {unit!r}", reason="units")
        scale[k] = _UNIT_TO_MV[key]
    physical = physical * scale
    peak = np.nanmax(np.abs(physical), axis=0, initial=0.0)
    if np.any(peak > MAX_ABS_MV):
        k = int(np.argmax(peak))
        raise RecordError(f"{base}: signal {header.sig_name[k]!r} reaches {peak[k]:.4g} mV, beyond the +-{MAX_ABS_MV:g} "
                          "mV of any surface ECG (wrong gain or units in the header?)", reason="amplitude")
    return RawRecord(
        path=base,
        signal=physical,
        lead_names=tuple(str(n).strip() for n in header.sig_name),
        fs=float(header.fs),
        comments=tuple(header.comments or ()),
    )


def _stated_fs(header_path: str) -> float | None:
    """The sampling rate as written in the header's record line (None when the line gives none: WFDB's default
    250 Hz then holds). wfdb's parser drops a rate it cannot read, such as a negative one, and falls back to
    250 Hz; this reads the field itself so such a header is refused."""
    try:
        with open(header_path, encoding="latin-1") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    fields = line.split()
                    if len(fields) < 3:
                        return None
                    token = fields[2].split("/", 1)[0].split("(", 1)[0]
                    try:
                        return float(token)
                    except ValueError:
                        return math.nan
    except OSError:
        return None
    return None


def _is_plain_format16(header) -> bool:
    return (
        len(set(header.file_name)) == 1
        and all(str(f) == "16" for f in header.fmt)
        and not any(header.byte_offset or [])
        and not any(getattr(header, "skew", None) or [])
        and all(s in (None, 1) for s in (getattr(header, "samps_per_frame", None) or []))
    )


def _invalid_sample(header) -> np.ndarray:
    """(n_sig,) the digital value each signal's format reserves for 'no sample' (WFDB convention)."""
    invalid = {"8": -128, "16": -32768, "24": -(2**23), "32": -(2**31), "61": -32768, "80": -128, "160": -32768,
               "212": -2048, "310": -512, "311": -512}
    return np.array([invalid.get(str(f), np.iinfo(np.int64).min) for f in header.fmt], np.int64)


def _check_data_files(header, directory: str, header_path: str) -> None:
    """Each data file exists and holds exactly sig_len samples of each of its signals."""
    files: dict[str, list[int]] = {}
    for k, name in enumerate(header.file_name):
        files.setdefault(name, []).append(k)
    for name, signals in files.items():
        data_path = os.path.join(directory, name)
        if not os.path.exists(data_path):
            raise RecordError(f"{data_path}: data file named in {header_path} not found", reason="missing_file")
        fmt = str(header.fmt[signals[0]])
        if fmt not in _BYTES_PER_SAMPLE:
            continue  # compressed (FLAC) formats: size says nothing; the reader checks the length
        offset = (header.byte_offset[signals[0]] or 0) if header.byte_offset else 0
        expected = offset + math.ceil(header.sig_len * len(signals) * _BYTES_PER_SAMPLE[fmt])
        actual = os.path.getsize(data_path)
        if actual < expected:
            raise RecordError(
                f"{data_path}: truncated: {actual} bytes, header {Path(header_path).name} implies {expected} "
                f"({header.sig_len} samples x {len(signals)} signals, format {fmt})",
                reason="truncated",
            )
        if actual > expected:
            raise RecordError(
                f"{data_path}: header/data length mismatch: {actual} bytes, header {Path(header_path).name} "
                f"implies {expected} ({header.sig_len} samples x {len(signals)} signals, format {fmt})",
                reason="length_mismatch",
            )


# -- PhysioNet records by name --------------------------------------------------------------------------------

PHYSIONET_PREFIX = "pn://"
_VERSION = re.compile(r"^\d+(\.\d+)+$")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_physionet(spec: str | os.PathLike) -> bool:
    return os.fspath(spec).startswith(PHYSIONET_PREFIX)


def physionet_cache() -> Path:
    return Path(os.environ.get("SEDIFF_PHYSIONET_CACHE") or Path.home() / ".cache" / "sediff_jax" / "physionet")


def parse_physionet(spec: str) -> tuple[str, str]:
    """(folder as PhysioNet names it: database/version/..., record name) of a `pn://` spec; RecordError names what
    is wrong (the version is required, so a record always means the same data)."""
    parts = spec[len(PHYSIONET_PREFIX):].strip("/").split("/")
    for suffix in (".hea", ".dat"):
        parts[-1] = parts[-1].removesuffix(suffix)
    if len(parts) < 3 or not _VERSION.match(parts[1]) or not all(_PART.match(p) for p in parts):
        raise RecordError(f"{spec}: not a PhysioNet record; expected pn://<database>/<version>/<folder>/<record>, "
                          "e.g. pn://ptb-xl/1.0.3/records500/00000/00001_hr", reason="bad_header")
    return "/".join(parts[:-1]), parts[-1]


def _download(url: str, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        download.dl_full_file(url, str(tmp))
        os.replace(tmp, target)
    except Exception as e:
        raise RecordError(f"{url}: download failed ({type(e).__name__}: {e})", reason="missing_file") from e
    finally:
        tmp.unlink(missing_ok=True)


def fetch_physionet_record(spec: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local record path (without extension) of PhysioNet record `spec`. Its header, then the data files the
    header names, are downloaded unless present into `cache_dir` (default `physionet_cache()`:
    `$SEDIFF_PHYSIONET_CACHE`, else `~/.cache/sediff_jax/physionet`) by wfdb's own downloader
    (`wfdb.io.download.dl_full_file`), each file renamed into place once complete."""
    folder, name = parse_physionet(spec)
    local = Path(cache_dir or physionet_cache()) / folder
    local.mkdir(parents=True, exist_ok=True)
    url = posixpath.join(download.PN_CONTENT_URL, folder) + "/"
    header = local / f"{name}.hea"
    if not header.exists():
        _download(url + header.name, header)
    try:
        files = sorted(set(wfdb.rdheader(str(local / name)).file_name or ()))
    except Exception as e:  # wfdb raises assorted types for malformed headers
        raise RecordError(f"{header} (from {url}): cannot parse WFDB header ({type(e).__name__}: {e})",
                          reason="bad_header") from e
    for file_name in files:
        if not _PART.match(file_name):
            raise RecordError(f"{header} (from {url}): data file {file_name!r} is not a plain file name",
                              reason="bad_header")
        if not (local / file_name).exists():
            _download(url + file_name, local / file_name)
    return str(local / name)
