"""Fixed-shape NumPy batches from a prepared dataset: seeded shuffling, exact resume, per-host sharding.

The order of epoch `e` is a permutation drawn from `(seed, e)`; global batch `k` is the k-th run of
`global_batch_size` examples of it, and process `p` of `P` reads the p-th of its P equal slices. So the hosts
read disjoint shards that together cover the split, every host yields the same number of batches (SPMD steps
stay in lockstep), and the global batch (examples and their order) does not depend on the number of hosts. The position is (epoch, batch index): `state()` after any batch and
`BatchLoader(..., state=...)` continue with exactly the next batch; the loop saves it in every orbax
checkpoint. Turn a host's batch into global arrays with `sediff_jax.parallel.host_local_to_global`.

Batches are read and assembled ahead of the training step by `prefetch` threads, or, with `workers > 0`, by
`grain` worker processes (`IterDataset.mp_prefetch` over a `MapDataset` of batch positions): the same
batches in the same order (the plan of which examples form a batch is a pure function of the position, so the
position alone is the iterator's state), with decoding and stacking off the training process, for hosts whose
input pipeline would otherwise bound the step. Each worker watches the process that started it
(`exit_with_parent`) and exits within a second of its death, SIGKILL included, so no worker outlives a killed
trainer holding its memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import sys
import threading
import time
from typing import Any, Iterator, Sequence

import numpy as np

from sediff_jax.data import sampling as sampling_lib
from sediff_jax.data.sources import MEASUREMENT_NAMES

STRING_FIELDS = ("record_id", "patient_id", "text", "original_text", "codes", "superclasses", "repairs")
NUMERIC_FIELDS = ("ecg", "hr_bpm", "age", "sex", "measurements")
# The per-record signal arrays a source may carry: the ECG (prepared datasets) or its VAE latent means (a latent
# cache, `sediff_jax.data.latents`); a batch stacks those its examples have, and the string fields they have.
SIGNAL_FIELDS = ("ecg", "latent_mean")


@dataclasses.dataclass(frozen=True)
class LoaderState:
    """Where a loader is: the next batch is batch `batch` of epoch `epoch`. Plus what must not change."""

    epoch: int
    batch: int
    seed: int
    num_examples: int
    process_index: int
    process_count: int
    global_batch_size: int
    sampling: str = sampling_lib.UNIFORM  # `sampling.weights_id` of the epoch's draw

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "LoaderState":
        return cls(**json.loads(text))


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which examples form each local batch: a pure function of (epoch, batch), the same on every host.

    Epoch e's order is a permutation drawn from (seed, e) (or the dataset order without shuffling); global batch
    k is its k-th run of `global_batch_size`; this process reads the `process_index`-th slice of it. With
    `weights` (expected draws per epoch of each example, `data.sampling`), epoch e first draws
    `sampling.epoch_length(weights)` examples, each floor or ceil of its share, then shuffles them."""

    num_examples: int
    global_batch_size: int
    local_batch_size: int
    process_index: int
    seed: int
    shuffle: bool
    weights: np.ndarray | None = dataclasses.field(default=None, compare=False)

    @property
    def epoch_length(self) -> int:
        return self.num_examples if self.weights is None else sampling_lib.epoch_length(self.weights)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self.weights is not None:
            rng = np.random.default_rng([self.seed, epoch])
            drawn = sampling_lib.systematic_draw(self.weights, rng)
            return rng.permutation(drawn) if self.shuffle else drawn
        if self.shuffle:
            return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return np.arange(self.num_examples)

    def batch_indices(self, epoch: int, batch: int, order: np.ndarray | None = None) -> np.ndarray:
        """Indices of one local batch; -1 marks padding (only past the end of an epoch)."""
        order = self.epoch_order(epoch) if order is None else order
        start = batch * self.global_batch_size + self.process_index * self.local_batch_size
        chunk = order[start : min(start + self.local_batch_size, (batch + 1) * self.global_batch_size)]
        if len(chunk) < self.local_batch_size:
            chunk = np.concatenate([chunk, np.full(self.local_batch_size - len(chunk), -1, np.int64)])
        return chunk.astype(np.int64)


WATCHDOG_PERIOD_S = 0.5


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True  # (no /proc: os.kill's answer)


def exit_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 0) -> None:
    """Run in a worker process (grain's `worker_init_fn`): a daemon thread ends the worker (`os._exit`) once the
    process `parent_pid` has died or the worker has been re-parented, SIGKILL of the parent included."""
    del worker_index, worker_count
    started_by = os.getppid()  # (the trainer, or the forkserver that spawned this worker for it)

    def watch():
        while _alive(parent_pid) and os.getppid() == started_by:
            time.sleep(WATCHDOG_PERIOD_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@dataclasses.dataclass(frozen=True)
class _BatchAt:
    """Flat position (epoch * batches_per_epoch + batch) -> the local batch: what a grain worker runs."""

    plan: BatchPlan
    source: Any
    batches_per_epoch: int
    max_r_peaks: int

    def __call__(self, position: int) -> dict[str, Any]:
        epoch, batch = divmod(int(position), self.batches_per_epoch)
        return make_batch(self.source, self.plan.batch_indices(epoch, batch), self.max_r_peaks)


def make_batch(source, indices: np.ndarray, max_r_peaks: int = 51) -> dict[str, Any]:
    """Read and stack the examples of `source` at `indices` (-1: a padding slot, filled with a real example and
    masked out; a host whose whole slice of the last eval batch is padding reads example 0 as filler)."""
    mask = indices >= 0
    real = indices[mask]
    examples = source.__getitems__([int(i) for i in real]) if real.size else []
    filler = examples[0] if real.size else source.__getitems__([0])[0]
    fill = [filler] * int((~mask).sum())
    examples = list(examples) + fill
    batch: dict[str, Any] = {name: np.stack([e[name] for e in examples]).astype(np.float32, copy=False)
                             for name in SIGNAL_FIELDS if name in examples[0]}
    batch.update({
        "hr_bpm": np.array([e["hr_bpm"] for e in examples], np.float32),
        "age": np.array([e["age"] for e in examples], np.float32),
        "sex": np.array([e["sex"] for e in examples], np.int32),
        "measurements": np.stack([np.asarray(e["measurements"], np.float32) for e in examples]).reshape(
            len(examples), len(MEASUREMENT_NAMES)),
    })
    peaks = np.full((len(examples), max_r_peaks), -1, np.int32)
    counts = np.zeros(len(examples), np.int32)
    for k, e in enumerate(examples):
        p = np.asarray(e["r_peaks"], np.int32)[:max_r_peaks]
        peaks[k, : len(p)], counts[k] = p, len(p)
    batch["r_peaks"], batch["num_r_peaks"] = peaks, counts
    for name in (name for name in STRING_FIELDS if name in examples[0]):
        batch[name] = np.array([as_text(e[name]) for e in examples], dtype=object)
    batch["index"] = np.concatenate([real, np.full(int((~mask).sum()), -1)]).astype(np.int64)
    batch["mask"] = np.concatenate([np.ones(real.size, bool), np.zeros(int((~mask).sum()), bool)])
    return batch


class BatchLoader:
    """Iterates batches of one split for this process.

    Args:
      source: random-access examples (`builder.open_split(...)`): len() and __getitems__(indices).
      global_batch_size: examples per step over all processes (divisible by process_count).
      seed: shuffling seed.  shuffle: draw a new order every epoch (False: dataset order).
      drop_remainder: True (training) drops the examples that do not fill a batch in an epoch; False (eval)
        pads the last batch, and `mask` marks real examples.
      num_epochs: stop after this many epochs (None: forever).
      process_index, process_count: this host and the number of hosts (default: from jax).
      max_r_peaks: width of the padded `r_peaks` array (padding -1).
      prefetch: batches decoded ahead (threads; with `workers`, per worker process).
      workers: grain worker processes that read and assemble batches (0: threads in this process).
      state: a LoaderState to resume from.
      weights: (len(source),) expected draws per epoch of each example (`data.sampling.rare_code_weights`);
        None draws every example once.

    Each batch is a dict: ecg (b, time, 12) float32 mV (or latent_mean (b, time / 8, C) from a latent cache), r_peaks (b, max_r_peaks) int32, num_r_peaks (b,),
    hr_bpm, age (b,) float32 (NaN unknown), sex (b,) int32 (0 male, 1 female, -1 unknown), measurements
    (b, 9) float32, index (b,) int64 (position in the split), mask (b,) bool, and the text fields as (b,)
    arrays of str. b = global_batch_size / process_count.
    """

    def __init__(
        self,
        source: Sequence,
        global_batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        num_epochs: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        max_r_peaks: int = 51,
        prefetch: int = 2,
        workers: int = 0,
        state: LoaderState | None = None,
        weights: np.ndarray | None = None,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the "
                             f"{process_count} processes")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.source = source
        self.num_examples = len(source)
        if self.num_examples == 0:
            raise ValueError("the split is empty")
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
        self.num_epochs = num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.max_r_peaks = max_r_peaks
        self.prefetch = max(0, prefetch)
        if workers < 0:
            raise ValueError(f"workers={workers} must be >= 0")
        self.workers = workers
        weights = None if weights is None else sampling_lib.check_weights(weights, self.num_examples)
        self.sampling = sampling_lib.weights_id(weights)
        self.plan = BatchPlan(self.num_examples, global_batch_size, self.local_batch_size, process_index, seed,
                              shuffle, weights)
        length = self.plan.epoch_length
        if drop_remainder:
            self.batches_per_epoch = length // global_batch_size
            if self.batches_per_epoch == 0:
                raise ValueError(f"{length} examples make no full batch of {global_batch_size}")
        else:
            self.batches_per_epoch = math.ceil(length / global_batch_size)
        self._epoch, self._batch = 0, 0
        if state is not None:
            self._restore(state)
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._grain_iter = None
        self._pool = (concurrent.futures.ThreadPoolExecutor(max(1, self.prefetch))
                      if self.prefetch and not workers else None)
        self._pending: collections.deque = collections.deque()

    # -- position ----------------------------------------------------------------------------------------
    def state(self) -> LoaderState:
        """The position of the next batch (batches fetched ahead but not yet returned do not count)."""
        return LoaderState(self._epoch, self._batch, self.seed, self.num_examples, self.process_index,
                           self.process_count, self.global_batch_size, self.sampling)

    def _restore(self, state: LoaderState) -> None:
        expected = dict(seed=self.seed, num_examples=self.num_examples, process_index=self.process_index,
                        process_count=self.process_count, global_batch_size=self.global_batch_size,
                        sampling=self.sampling)
        for key, value in expected.items():
            if getattr(state, key) != value:
                raise ValueError(f"saved loader state has {key}={getattr(state, key)}, this loader {value}")
        if not 0 <= state.batch <= self.batches_per_epoch:
            raise ValueError(f"saved batch {state.batch} outside the epoch's {self.batches_per_epoch} batches")
        self._epoch, self._batch = state.epoch, state.batch

    # -- order -------------------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        """All example indices of `epoch` in the order all processes agree on."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, self.plan.epoch_order(epoch))
        return self._order_cache[1]

    def host_indices(self, epoch: int) -> np.ndarray:
        """This process's share of `epoch`, in the order its batches read it (-1: padding)."""
        return np.concatenate([self.batch_indices(epoch, b) for b in range(self.batches_per_epoch)])

    def batch_indices(self, epoch: int, batch: int) -> np.ndarray:
        """Indices of one local batch: this process's slice of global batch `batch`; -1 marks padding (only
        without drop_remainder)."""
        return self.plan.batch_indices(epoch, batch, self.epoch_order(epoch))

    # -- batches -----------------------------------------------------------------------------------------
    def _positions(self) -> Iterator[tuple[int, int]]:
        epoch, batch = self._epoch, self._batch
        while self.num_epochs is None or epoch < self.num_epochs:
            if batch >= self.batches_per_epoch:
                epoch, batch = epoch + 1, 0
                continue
            yield epoch, batch
            batch += 1

    def make_batch(self, indices: np.ndarray) -> dict[str, Any]:
        """The local batch of the examples at `indices` (`make_batch`)."""
        return make_batch(self.source, indices, self.max_r_peaks)

    def _grain_iterator(self):
        """Batches from the current position on, assembled by `workers` grain processes."""
        import grain
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app they keep their defaults
            flags.FLAGS.mark_as_parsed()
        start = self._epoch * self.batches_per_epoch + self._batch
        stop = sys.maxsize if self.num_epochs is None else self.num_epochs * self.batches_per_epoch
        batches = grain.MapDataset.range(start, stop).map(
            _BatchAt(self.plan, self.source, self.batches_per_epoch, self.max_r_peaks))
        options = grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=max(1, self.prefetch))
        return iter(batches.to_iter_dataset().mp_prefetch(
            options, worker_init_fn=functools.partial(exit_with_parent, os.getpid())))

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if self.workers:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                raise StopIteration
            if self._grain_iter is None:
                self._grain_iter = self._grain_iterator()
            batch = next(self._grain_iter)
            position = divmod(self._epoch * self.batches_per_epoch + self._batch, self.batches_per_epoch)
        elif self._pool is None:
            position = next(iter(self._positions()), None)
            if position is None:
                raise StopIteration
            batch = self.make_batch(self.batch_indices(*position))
        else:
            if not self._pending:
                self._positions_iter = self._positions()
            while len(self._pending) < self.prefetch + 1:
                position = next(self._positions_iter, None)
                if position is None:
                    break
                self._pending.append(
                    (position, self._pool.submit(self.make_batch, self.batch_indices(*position))))
            if not self._pending:
                raise StopIteration
            position, future = self._pending.popleft()
            batch = future.result()
        epoch, index = position
        self._epoch, self._batch = epoch, index + 1
        return batch

    def close(self) -> None:
        if self._grain_iter is not None:
            close = getattr(self._grain_iter, "close", None)  # stops the worker processes
            if close is not None:
                close()
            self._grain_iter = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def as_text(value) -> str:
    """A string field of an example (bytes as the dataset stores them, or str) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
