"""What a machine without the data needs to train stage 2 (a lent accelerator: no network, 64 MiB carried per
call with the repository): the latent cache's training and validation splits (the frozen VAE's encodings, with
their reports, metadata and R peaks), a compact text encoder for exactly those reports and their experience
reports (`text.compact`: int8, cut vocabulary; `text.encoders.write_compact_minilm`), and the experience table of those records, compressed.

```
<bundle>/latents/       manifest.json, train.npz, validation.npz (a latent cache read alone)
<bundle>/minilm/        the compact MiniLM ($SEDIFF_MINILM_DIR on the device)
<bundle>/experience/    experience.jsonl.gz (decompressed there) and profiles.npz (the exported model's corpus)
<bundle>/bundle.json    what it holds, its size, and the encoder's measured agreement with the full one
```
`write_training_bundle` writes it; `experiments/device_train.sh` (`make device-train`) trains from it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from sediff_jax.data import latents
from sediff_jax.io import jsonio
from sediff_jax.io.outputs import OutputError, replace_directory, working_folder
from sediff_jax.text.encoders import write_compact_minilm
from sediff_jax.training.metrics import read_metrics

MIB = 1 << 20
CARRY_LIMIT_MIB = 60  # of the 64 MiB a device call carries: room for the files it adds
LATENTS, MINILM, EXPERIENCE = "latents", "minilm", "experience"


class BundleError(ValueError):
    """A training bundle that cannot be built or would not fit; the message names the file or the sizes."""


def folder_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def tracked_bytes(repo: str | os.PathLike) -> int:
    """Bytes of the files git tracks in `repo` (what a device call carries besides the bundle); 0 outside git."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    paths = (Path(repo) / name for name in names.decode().split("\0") if name)
    return sum(p.stat().st_size for p in paths if p.is_file())


def _texts(npz_path: Path) -> tuple[list[str], list[str]]:
    with np.load(npz_path) as f:
        return [str(t) for t in f["text"]], [str(r) for r in f["record_id"]]


def write_training_bundle(latent_dir: str | os.PathLike, out_dir: str | os.PathLike,
                          experience_dir: str | os.PathLike | None = None,
                          splits: Sequence[str] = ("train", "validation"), experience_tokens: int = 128,
                          minilm_dir: str | os.PathLike | None = None) -> dict:
    """Write the bundle of the latent cache at `latent_dir` (its `splits`) and, when given, the experience
    directory (`experience.jsonl`, `profiles.npz`) into `out_dir` (new, or an earlier bundle it replaces whole once
    the new one is complete: `check_bundle_target`). Returns bundle.json's content."""
    latent_dir, out_dir = Path(latent_dir), check_bundle_target(out_dir)
    info = latents.read_info(str(latent_dir))
    missing = [s for s in splits if s not in info.splits or not (latent_dir / f"{s}.npz").is_file()]
    if missing:
        raise BundleError(f"{latent_dir}: the latent cache has no {', '.join(missing)} split file")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        summary = _write_bundle(latent_dir, info, tmp, experience_dir, splits, experience_tokens, minilm_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, out_dir)  # (the old bundle is renamed aside and deleted once the new one is in place)
    return summary


def check_bundle_target(out_dir: str | os.PathLike) -> Path:
    """The bundle folder, checked before any work: new, empty, or an earlier bundle (its bundle.json), never the
    working directory or above it; OutputError (a ValueError) names the folder."""
    path = working_folder(out_dir, "--out")
    if path.exists() and any(path.iterdir()) and not (path / "bundle.json").is_file():
        shown = next(iter(sorted(e.name for e in path.iterdir())))
        raise OutputError(f"--out={path} holds {shown} and is not a training bundle (no bundle.json); name a new "
                          "folder or an earlier bundle to replace")
    return path


def _write_bundle(latent_dir: Path, info, tmp: Path, experience_dir, splits, experience_tokens, minilm_dir) -> dict:
    (tmp / LATENTS).mkdir(parents=True)
    shutil.copyfile(latent_dir / "manifest.json", tmp / LATENTS / "manifest.json")
    texts, records = [], set()
    for split in splits:
        shutil.copyfile(latent_dir / f"{split}.npz", tmp / LATENTS / f"{split}.npz")
        split_texts, split_records = _texts(latent_dir / f"{split}.npz")
        texts += split_texts
        records.update(split_records)
    experience_records = 0
    if experience_dir is not None:
        experience_dir = Path(experience_dir)
        (tmp / EXPERIENCE).mkdir()
        table = experience_dir / "experience.jsonl"
        if not table.is_file():
            raise BundleError(f"{table}: experience table not found")
        with open(table, encoding="utf-8") as f, gzip.open(tmp / EXPERIENCE / "experience.jsonl.gz", "wt",
                                                           encoding="utf-8") as out:
            for line in f:
                entry = json.loads(line)
                if entry["record_id"] in records:  # the carried records' reports only
                    out.write(line)
                    texts.append(entry["report"])
                    experience_records += 1
        for name in ("profiles.npz", "manifest.json"):
            if (experience_dir / name).is_file():
                shutil.copyfile(experience_dir / name, tmp / EXPERIENCE / name)
    encoder = write_compact_minilm(texts, tmp / MINILM, model_dir=minilm_dir, max_length=experience_tokens)
    summary = {"latent_cache": str(latent_dir.resolve()), "vae_id": info.vae_id,
               "splits": {s: info.splits[s] for s in splits}, "experience_records": experience_records,
               "experience_dir": str(Path(experience_dir).resolve()) if experience_dir is not None else None,
               "text_encoder": encoder,
               "bytes": {part: folder_bytes(tmp / part) for part in (LATENTS, MINILM, EXPERIENCE)
                         if (tmp / part).exists()}}
    summary["bytes"]["total"] = sum(summary["bytes"].values())
    jsonio.write_json(str(tmp / "bundle.json"), summary)
    return summary


def check_fits(bundle_dirs: Sequence[str | os.PathLike], repo: str | os.PathLike,
               limit_mib: float = CARRY_LIMIT_MIB) -> dict[str, float]:
    """MiB of the repository's tracked files, each bundle folder and their total; BundleError when the total is
    over `limit_mib`."""
    sizes = {"repository": tracked_bytes(repo) / MIB}
    for d in bundle_dirs:
        sizes[str(d)] = folder_bytes(d) / MIB
    sizes["total"] = sum(sizes.values())
    if sizes["total"] > limit_mib:
        shown = ", ".join(f"{k} {v:.1f}" for k, v in sizes.items())
        raise BundleError(f"the device call would carry {sizes['total']:.1f} MiB ({shown} MiB); the limit is "
                          f"{limit_mib:g} MiB")
    return sizes


def burst_summary(workdir: str | os.PathLike, seconds: float) -> dict:
    """What a time-boxed stage-2 run under `workdir` did in `seconds` of wall time (compile, evaluation and
    checkpoints included): device, jax version, steps, batch, examples, examples/s and its last losses."""
    import jax

    config = json.loads((Path(workdir) / "config.json").read_text())
    metrics = Path(workdir) / "diffusion" / "metrics.jsonl"
    train, validation = read_metrics(str(metrics)), read_metrics(str(metrics), "validation")
    steps = int(train[-1]["step"]) if train else 0
    batch = int(config["diffusion"]["training"]["batch_size"])
    device = jax.devices()[0]
    return {"device": getattr(device, "device_kind", str(device)), "devices": jax.device_count(),
            "jax": jax.__version__, "steps": steps, "batch_size": batch, "examples": steps * batch,
            "seconds": seconds, "examples_per_s": steps * batch / max(seconds, 1e-9),
            "last_train": train[-1] if train else {}, "last_validation": validation[-1] if validation else {}}
