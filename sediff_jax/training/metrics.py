"""Metric writers: one JSON line per logged step (`metrics.jsonl`) and TensorBoard events (tensorboardX), from
process 0 only. Lines are flushed as written and TensorBoard events before every checkpoint, so a killed run keeps
everything logged up to its last checkpoint; on resume, lines for steps after the restored checkpoint are dropped
first, and TensorBoard purges its events past it (they are about to be recomputed)."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax
import numpy as np


# what the loop adds to each logged training record: training steps and examples per second since the last one
# (evaluations and checkpoint saves left out) and the share of that time spent waiting for the loader
THROUGHPUT_KEYS = ("steps_per_sec", "examples_per_sec", "loader_wait_fraction")


class MetricWriter:
    def __init__(self, directory: str, tensorboard: bool = True, resume_step: int | None = None):
        self.active = jax.process_index() == 0
        self.path = os.path.join(directory, "metrics.jsonl")
        self._tb = None
        if not self.active:
            return
        os.makedirs(directory, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step: TensorBoard hides the killed run's events past the restored step (recomputed now).
            self._tb = SummaryWriter(os.path.join(directory, "tensorboard"),
                                     purge_step=None if not resume_step else resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        keep = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError):
                    continue  # a line cut by a kill
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        if not self.active:
            return
        values = {k: float(v) for k, v in metrics.items()}
        record = {"step": int(step), "split": prefix,
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def write_images(self, step: int, images: Mapping[str, np.ndarray], prefix: str = "validation") -> None:
        """TensorBoard images (`prefix/name`), each (height, width, 3) uint8 RGB; nothing without TensorBoard."""
        if self.active and self._tb is not None:
            for name, image in images.items():
                self._tb.add_image(f"{prefix}/{name}", np.asarray(image), step, dataformats="HWC")

    def flush(self) -> None:
        """Put every event written so far on disk (before a checkpoint: a kill after it loses none of them)."""
        if self.active and self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str, split: str | None = "train", throughput: bool = False) -> list[dict]:
    """The records of a metrics.jsonl (optionally of one split), in order; the wall-clock `THROUGHPUT_KEYS` only
    with `throughput` (without them, a resumed run's records equal the uninterrupted run's)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if split is None or record.get("split") == split:
                if not throughput:
                    record = {k: v for k, v in record.items() if k not in THROUGHPUT_KEYS}
                records.append(record)
    return records
