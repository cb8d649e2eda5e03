"""The latent cache: every record of a prepared dataset encoded once by a frozen VAE, for stage 2.

Stage 2 trains on the VAE's latent means, so the usual latent-diffusion practice is to encode the dataset once
instead of at every step. A cache holds, per split, the latent means and what stage 2's batch needs besides the
ECG (R peaks, heart rate, age, sex, measurements, record and patient ids, text, codes, superclasses), in the
prepared dataset's order, so the loader's batch plan (and its resume position) is the same as over the ECGs.

Layout (one directory per VAE, written whole and then renamed into place, so it is complete or absent):
```
<cache>/manifest.json   format, version, the VAE's weights id, the prepared dataset it was made from, shapes
<cache>/<split>.npz     latent_mean (n, time / downsampling, channels) float16|float32, r_peaks (n, max) int16
                        (-1 padded), hr_bpm, age, sex, measurements, and the id and text fields as str arrays
```
A training run checks the manifest's VAE weights id and split sizes against its own VAE and prepared dataset
and refuses a cache that was made from others. This module stores and reads; the encoding itself (which needs
the VAE) is `sediff_jax.training.sources.build_latent_cache`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import zipfile
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from sediff_jax.io import jsonio
from sediff_jax.errors import SediffError

FORMAT = "sediff-latent-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("float16", "float32")
METADATA_FIELDS = ("hr_bpm", "age", "sex", "measurements")
ID_TEXT_FIELDS = ("record_id", "patient_id", "text", "codes", "superclasses")  # what stage 2 reads
LATENT = "latent_mean"


class LatentCacheError(SediffError, ValueError):
    """A latent cache that is missing, incomplete, or made from another VAE or dataset; the message names it."""


@dataclasses.dataclass(frozen=True)
class LatentCacheInfo:
    """What a cache is (`manifest.json`). vae_id: `checkpoints.weights_id` of the VAE's parameters; dataset: the
    prepared dataset's version directory; splits: split -> records; latent_shape: (time / downsampling,
    channels); downsampling: ECG samples per latent step."""

    vae_id: str
    vae_dir: str
    dataset: str
    fs: float
    num_samples: int
    latent_shape: tuple[int, int]
    downsampling: int
    dtype: str
    splits: dict[str, int]
    seconds: float = 0.0
    format: str = FORMAT
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return jsonio.dumps(dataclasses.asdict(self), indent=1)


def read_info(directory: str) -> LatentCacheInfo:
    """The manifest of the cache at `directory` (LatentCacheError if absent, unreadable or another format)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise LatentCacheError(f"{directory}: no latent cache here (no {MANIFEST}); build one with "
                               "`python -m experiments.encode_latents` or --config.diffusion.latent_cache=auto")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise LatentCacheError(f"{path}: unreadable latent cache manifest: {e}") from e
    if raw.get("format") != FORMAT or raw.get("version") != FORMAT_VERSION:
        raise LatentCacheError(f"{path}: format {raw.get('format')!r} version {raw.get('version')!r}, expected "
                               f"{FORMAT!r} version {FORMAT_VERSION}")
    names = {f.name for f in dataclasses.fields(LatentCacheInfo)}
    missing = sorted(names - set(raw) - {"seconds"})
    if missing:
        raise LatentCacheError(f"{path}: the manifest lacks {', '.join(missing)}")
    raw = {k: v for k, v in raw.items() if k in names}
    raw["latent_shape"] = tuple(raw["latent_shape"])
    return LatentCacheInfo(**raw)


def check_matches(info: LatentCacheInfo, directory: str, *, vae_id: str, splits: dict[str, int]) -> None:
    """Raise LatentCacheError unless the cache was made by the VAE `vae_id` from a dataset with these split sizes."""
    if info.vae_id != vae_id:
        raise LatentCacheError(f"{directory}: encoded by the VAE with weights {info.vae_id} ({info.vae_dir}); this "
                               f"run's VAE has weights {vae_id}. Rebuild the cache for this VAE")
    for split, count in splits.items():
        if split not in info.splits:
            raise LatentCacheError(f"{directory}: no split {split!r} in the latent cache (it has "
                                   f"{', '.join(info.splits)}). Rebuild the cache with this run's splits")
        if info.splits[split] != count:
            raise LatentCacheError(f"{directory}: split {split!r} has {info.splits.get(split)} records in the cache, "
                                   f"{count} in the prepared dataset ({info.dataset}). Rebuild the cache")


def write_cache(
    directory: str,
    batches: Callable[[str], Iterable[dict[str, Any]]],
    encode: Callable[[np.ndarray], np.ndarray],
    info: LatentCacheInfo,
) -> LatentCacheInfo:
    """Encode every split of `info.splits` and write the cache at `directory` (which must not exist).

    batches(split): the split's loader batches in dataset order (`mask` marks real rows; `ecg`, `r_peaks`,
    `num_r_peaks` and the fields of METADATA_FIELDS / ID_TEXT_FIELDS). encode(ecg (b, time, 12) mV) -> latent
    means (b, *info.latent_shape). A non-finite latent is an error naming the record. Written into a temporary
    directory beside `directory` and renamed when complete. Returns the info with the time it took."""
    if info.dtype not in DTYPES:
        raise LatentCacheError(f"latent cache dtype {info.dtype!r}; expected one of {DTYPES}")
    if os.path.exists(directory):
        raise LatentCacheError(f"{directory} exists; remove it to rebuild the latent cache")
    start = time.perf_counter()
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    try:
        for split, expected in info.splits.items():
            arrays = _encode_split(split, batches(split), encode, info)
            if len(arrays[LATENT]) != expected:
                raise LatentCacheError(f"split {split!r}: encoded {len(arrays[LATENT])} records, expected {expected}")
            with open(os.path.join(tmp, f"{split}.npz"), "wb") as f:
                np.savez_compressed(f, **arrays)  # the fixed-width str arrays are mostly padding
        info = dataclasses.replace(info, seconds=round(time.perf_counter() - start, 1))
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            f.write(info.to_json())
        os.chmod(tmp, 0o755)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _encode_split(split: str, batches: Iterable[dict[str, Any]], encode: Callable, info: LatentCacheInfo
                  ) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {name: [] for name in (LATENT, "r_peaks", *METADATA_FIELDS, *ID_TEXT_FIELDS)}
    for batch in batches:
        real = np.asarray(batch["mask"], bool)
        latent = np.asarray(encode(batch["ecg"]))[real]
        if latent.shape[1:] != tuple(info.latent_shape):
            raise LatentCacheError(f"split {split!r}: latents of shape {latent.shape[1:]}, expected {info.latent_shape}")
        bad = ~np.isfinite(latent).all(axis=(1, 2))
        if bad.any():
            record = np.asarray(batch["record_id"])[real][bad][0]
            raise LatentCacheError(f"split {split!r}, record {record}: the VAE's latent is not finite")
        parts[LATENT].append(latent.astype(info.dtype))
        peaks = np.asarray(batch["r_peaks"])[real]
        parts["r_peaks"].append([p[p >= 0] for p in peaks])
        for name in (*METADATA_FIELDS, *ID_TEXT_FIELDS):
            parts[name].append(np.asarray(batch[name])[real])
    out = {LATENT: np.concatenate(parts[LATENT]) if parts[LATENT] else
           np.zeros((0, *info.latent_shape), info.dtype)}
    peaks = [p for chunk in parts["r_peaks"] for p in chunk]
    width = max((len(p) for p in peaks), default=0)
    padded = np.full((len(peaks), max(width, 1)), -1, np.int16)
    for k, p in enumerate(peaks):
        padded[k, : len(p)] = p
    out["r_peaks"] = padded
    for name in METADATA_FIELDS:
        out[name] = np.concatenate(parts[name]) if parts[name] else np.zeros(0)
    for name in ID_TEXT_FIELDS:
        out[name] = np.array([str(s) for chunk in parts[name] for s in chunk], dtype=str)
    return out


class LatentSource:
    """One split of a latent cache as a random-access source for `data.loader.BatchLoader` (len, [i] and
    __getitems__ give example dicts: latent_mean (time / downsampling, channels) float32, r_peaks int32, the
    numeric and string fields). The split is read into memory (21,797 PTB-XL records at 100 Hz: ~22 MB)."""

    def __init__(self, directory: str, split: str, info: LatentCacheInfo | None = None):
        self.info = read_info(directory) if info is None else info
        path = os.path.join(directory, f"{split}.npz")
        if split not in self.info.splits or not os.path.exists(path):
            raise LatentCacheError(f"{directory}: no split {split!r} in the latent cache (has "
                                   f"{', '.join(self.info.splits)})")
        try:
            with np.load(path) as f:
                self._arrays = {name: f[name] for name in (LATENT, "r_peaks", *METADATA_FIELDS, *ID_TEXT_FIELDS)}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise LatentCacheError(f"{path}: unreadable latent cache split: {e}") from e
        n = len(self._arrays[LATENT])
        if n != self.info.splits[split] or any(len(a) != n for a in self._arrays.values()):
            raise LatentCacheError(f"{path}: {n} latents for {self.info.splits[split]} records in the manifest, or "
                                   "fields of unequal length; the cache is damaged, rebuild it")
        if self._arrays[LATENT].shape[1:] != tuple(self.info.latent_shape):
            raise LatentCacheError(f"{path}: latents of shape {self._arrays[LATENT].shape[1:]}, the manifest says "
                                   f"{tuple(self.info.latent_shape)}")

    def __len__(self) -> int:
        return len(self._arrays[LATENT])

    @property
    def latent_mean(self) -> np.ndarray:
        """(n, time / downsampling, channels) as stored."""
        return self._arrays[LATENT]

    @property
    def codes(self) -> np.ndarray:
        """(n,) each record's diagnostic codes as text ('NORM; SR'), for `data.sampling.source_codes`."""
        return self._arrays["codes"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        a = self._arrays
        peaks = a["r_peaks"][index]
        example = {LATENT: a[LATENT][index].astype(np.float32), "r_peaks": peaks[peaks >= 0].astype(np.int32)}
        example.update({name: a[name][index] for name in (*METADATA_FIELDS, *ID_TEXT_FIELDS)})
        return example

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[int(i)] for i in indices]
