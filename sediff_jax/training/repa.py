"""REPA's alignment targets (Yu et al. 2024, "Representation alignment for generation"): a frozen ECG encoder's
features along time of each clean record, for L_REPA (`diffusion.losses.alignment_loss`).

The teacher is an ECG-text CLIP model (`evaluation.clip`, trained by experiments/train_clip.py); its ResNet
features before the time average, (ceil(time / 16), feature_dim) per record (63 x 128 for 10 s at 100 Hz, which
L_REPA resamples to the denoiser's middle level, 32 steps), are computed once per split from the prepared dataset
and kept as `<directory>/<teacher id>_<split>.npz` (record_id, float16 features; written
atomically, reused by a resumed run). Stage 2 looks each batch's records up by record_id, so the targets follow
any loader (latent cache or not, shuffled, padded).
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

import numpy as np

from sediff_jax.data.loader import BatchLoader, as_text
from sediff_jax.evaluation.clip import ClipEncoder
from sediff_jax.io import atomic_path


class AlignmentTargets:
    """record_id -> the teacher's features (T, d) float16, for the splits added; `lookup` gives a batch's."""

    def __init__(self, teacher: ClipEncoder, directory: str | os.PathLike):
        self.teacher, self.directory = teacher, str(directory)
        self._rows: dict[str, int] = {}
        self._table: np.ndarray | None = None  # (records of every split added, T, d) float16

    @property
    def feature_dim(self) -> int:
        return int(self.teacher.config["model"]["channels"][-1])

    def path(self, split: str) -> str:
        return os.path.join(self.directory, f"{self.teacher.id}_{split}.npz")

    def add_split(self, source, split: str, batch_size: int = 256) -> None:
        """The teacher's features of every record of `source` (a prepared split with `ecg`, mV): read from
        `path(split)` when it holds this split's records, else computed and written there."""
        path = self.path(split)
        ids, features = self._read(path, len(source))
        if features is None:
            ids, features = self._compute(source, split, batch_size)
            with atomic_path(path, suffix=".npz") as tmp:
                np.savez(tmp, record_id=np.array(ids, dtype=str), features=features)
            logging.info("REPA targets of %d %s records (%s) -> %s", len(ids), split, features.shape[1:], path)
        self._add(ids, features)

    def _read(self, path: str, count: int) -> tuple[Sequence[str], np.ndarray | None]:
        if not os.path.exists(path):
            return [], None
        try:
            with np.load(path) as f:
                ids, features = [str(r) for r in f["record_id"]], f["features"]
        except (OSError, ValueError, KeyError) as e:
            logging.warning("%s unreadable (%s); recomputing the REPA targets", path, e)
            return [], None
        if len(ids) != count or features.shape[0] != count:
            logging.warning("%s has %d records, the split %d; recomputing", path, len(ids), count)
            return [], None
        return ids, features

    def _compute(self, source, split: str, batch_size: int) -> tuple[list[str], np.ndarray]:
        loader = BatchLoader(source, batch_size, shuffle=False, drop_remainder=False, num_epochs=1, prefetch=1,
                             process_index=0, process_count=1)
        ids, parts = [], []
        try:
            for batch in loader:
                mask = np.asarray(batch["mask"], bool)
                ecg = np.asarray(batch["ecg"], np.float32)[mask]
                if ecg.shape[1] != self.teacher.num_samples:
                    raise ValueError(f"diffusion.repa_teacher {self.teacher.source}: takes "
                                     f"{self.teacher.num_samples} samples at {self.teacher.fs:g} Hz, the {split} "
                                     f"records have {ecg.shape[1]}; train it at the run's data.fs and duration_s")
                ids += [as_text(r) for r in np.asarray(batch["record_id"])[mask]]
                parts.append(self.teacher.ecg_feature_tokens(ecg).astype(np.float16))
        finally:
            loader.close()
        return ids, np.concatenate(parts)

    def _add(self, ids: Iterable[str], features: np.ndarray) -> None:
        offset = 0 if self._table is None else self._table.shape[0]
        for i, record in enumerate(ids):
            self._rows.setdefault(record, offset + i)
        self._table = features if self._table is None else np.concatenate([self._table, features])

    def lookup(self, record_ids: Sequence[str]) -> np.ndarray:
        """(batch, T, d) float32 features of `record_ids`; an unknown record is an error naming it."""
        try:
            rows = np.array([self._rows[as_text(r)] for r in record_ids], np.int64)
        except KeyError as e:
            raise KeyError(f"record {e.args[0]!r} has no REPA target (its split was not added)") from None
        return self._table[rows].astype(np.float32)
