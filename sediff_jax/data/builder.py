"""Prepared datasets: canonical records written as a tensorflow-datasets array_record dataset (no TensorFlow).

Layout: `<out_dir>/<dataset>/<fs>hz_<duration>s/<version>/` with one array_record file set per split,
`dataset_info.json`, `features.json` and `prepare_report.json` (counts: read, written, skipped by reason).
TFDS writes into an `incomplete.*` directory and renames it at the end, so a failed build leaves nothing
half-written; `prepare` also removes the directories it created.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import glob
import io
import math
import multiprocessing
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
from absl import logging

from sediff_jax.data.canonical import CanonicalConfig, CanonicalRecord, canonicalize
from sediff_jax.data.sources import MEASUREMENT_NAMES, SEX_CODES, SPLITS, RecordEntry
from sediff_jax.data.wfdb_reader import RecordError, read_record
from sediff_jax.errors import SediffError
from sediff_jax.io import jsonio
from sediff_jax.io.atomic import atomic_path
from sediff_jax.leads import LEAD_NAMES, NUM_LEADS

if TYPE_CHECKING:  # tensorflow-datasets is imported when a dataset is built or opened, not with this module
    import tensorflow_datasets as tfds

VERSION = "1.0.0"
REPORT_FILE = "prepare_report.json"

Result = tuple[RecordEntry, "CanonicalRecord | RecordError"]


@dataclasses.dataclass
class PrepareReport:
    """What a build did. skipped: reason -> count; skipped_records: (record_id, reason, message)."""

    dataset: str
    read: int = 0
    written: dict = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
    skipped: dict = dataclasses.field(default_factory=dict)
    skipped_records: list = dataclasses.field(default_factory=list)
    repaired: int = 0
    path: str = ""

    @property
    def total_written(self) -> int:
        return sum(self.written.values())

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        written = ", ".join(f"{k} {v}" for k, v in self.written.items())
        return (f"{self.dataset}: read {self.read}, written {self.total_written} ({written}), "
                f"repaired {self.repaired}, skipped {sum(self.skipped.values())} ({skipped})")


def config_name(config: CanonicalConfig) -> str:
    """'500hz_10s': the TFDS builder-config name of a canonical form."""
    return f"{config.fs:g}hz_{config.duration_s:g}s".replace(".", "p")


def features(config: CanonicalConfig) -> "tfds.features.FeaturesDict":
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "record_id": tfds.features.Text(),
        "patient_id": tfds.features.Text(),
        # Stored as raw bytes: TFDS's default float_list encoding costs ~13 ms per 500 Hz record.
        "ecg": tfds.features.Tensor(shape=(config.num_samples, NUM_LEADS), dtype=np.float32, encoding="bytes"),
        "r_peaks": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "hr_bpm": tfds.features.Scalar(dtype=np.float32),
        "age": tfds.features.Scalar(dtype=np.float32),
        "sex": tfds.features.Scalar(dtype=np.int32),
        "text": tfds.features.Text(),
        "original_text": tfds.features.Text(),
        "codes": tfds.features.Text(),
        "superclasses": tfds.features.Text(),
        "measurements": tfds.features.Tensor(shape=(len(MEASUREMENT_NAMES),), dtype=np.float32),
        "repairs": tfds.features.Text(),
    })


def to_example(entry: RecordEntry, record: CanonicalRecord) -> dict:
    """One TFDS example (lists are '; '-joined text so every example has the same structure)."""
    return {
        "record_id": entry.record_id,
        "patient_id": entry.patient_id,
        "ecg": record.ecg.astype(np.float32),
        "r_peaks": record.r_peaks.astype(np.int32),
        "hr_bpm": np.float32(record.hr_bpm),
        "age": np.float32(entry.age),
        "sex": np.int32(SEX_CODES[entry.sex]),
        "text": entry.text,
        "original_text": entry.original_text,
        "codes": "; ".join(entry.codes),
        "superclasses": "; ".join(entry.superclasses),
        "measurements": np.array([entry.measurements.get(k, math.nan) for k in MEASUREMENT_NAMES], np.float32),
        "repairs": "; ".join(record.repairs),
    }


def load_and_canonicalize(entry: RecordEntry, config: CanonicalConfig) -> Result:
    """Read one record from disk and canonicalise it; a RecordError is returned, not raised."""
    try:
        return entry, canonicalize(read_record(entry.path, expected_fs=entry.fs), config)
    except RecordError as e:
        return entry, e


def file_results(
    entries: Iterable[RecordEntry],
    config: CanonicalConfig,
    pool: concurrent.futures.Executor | None = None,
) -> Iterator[Result]:
    """Canonicalise records in order, in `pool` (see `worker_pool`) or in this process."""
    entries = list(entries)
    if pool is None:
        for entry in entries:
            yield load_and_canonicalize(entry, config)
        return
    workers = getattr(pool, "_max_workers", 1)
    chunk = max(1, min(32, len(entries) // (4 * workers)))
    yield from pool.map(load_and_canonicalize, entries, [config] * len(entries), chunksize=chunk)


def worker_pool(num_workers: int) -> concurrent.futures.Executor | None:
    """Processes for `file_results` (None for num_workers <= 1). Spawned: the parent holds JAX threads."""
    if num_workers <= 1:
        return None
    return concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))


@functools.cache
def ecg_builder_class() -> type:
    """The TFDS builder class (made on first use: tensorflow-datasets is imported then)."""
    import tensorflow_datasets as tfds

    class EcgBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """A TFDS builder over already-canonicalised results, one iterator factory per split."""

        VERSION = tfds.core.Version(VERSION)
        # Not a TFDS catalogue dataset: no source file to look up checksums or metadata next to.
        code_path = None

        def __init__(
            self,
            *,
            dataset: str,
            config: CanonicalConfig,
            split_results: dict[str, Callable[[], Iterator[Result]]],
            report: PrepareReport,
            strict: bool,
            data_dir: str,
        ):
            self.name = dataset
            self._canonical = config
            self._split_results = split_results
            self._report = report
            self._strict = strict
            builder_config = tfds.core.BuilderConfig(name=config_name(config), description=str(config))
            super().__init__(data_dir=data_dir, config=builder_config, file_format="array_record")

        def _info(self) -> tfds.core.DatasetInfo:
            c = self._canonical
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"{self.name} in sediff_jax canonical form: 12 leads ({', '.join(LEAD_NAMES)}), mV, "
                            f"{c.fs:g} Hz, {c.duration_s:g} s",
                features=features(c),
                disable_shuffling=True,  # keep the source order; the loader shuffles per epoch
                metadata=tfds.core.MetadataDict(canonical_config=dataclasses.asdict(c), lead_names=list(LEAD_NAMES),
                                                measurement_names=list(MEASUREMENT_NAMES)),
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in self._split_results}

        def _generate_examples(self, split):
            for entry, result in self._split_results[split]():
                self._report.read += 1
                if isinstance(result, RecordError):
                    if self._strict:
                        raise result
                    self._report.skipped[result.reason] = self._report.skipped.get(result.reason, 0) + 1
                    self._report.skipped_records.append((entry.record_id, result.reason, str(result)))
                    continue
                if result.repairs:
                    self._report.repaired += 1
                self._report.written[split] += 1
                yield entry.record_id, to_example(entry, result)

    return EcgBuilder



def build(
    dataset: str,
    out_dir: str,
    config: CanonicalConfig,
    split_results: dict[str, Callable[[], Iterator[Result]]],
    *,
    strict: bool = False,
    overwrite: bool = False,
) -> PrepareReport:
    """Write a prepared dataset and its report; on any failure remove what this call created.

    Raises FileExistsError if the dataset version exists and not `overwrite`; RecordError under `strict`."""
    report = PrepareReport(dataset=dataset)
    target = os.path.join(out_dir, dataset, config_name(config), VERSION)
    if os.path.exists(target):
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite to rebuild it")
        shutil.rmtree(target)
    # TFDS builds into `incomplete.<random>_<version>` beside the target and renames it at the end: what a killed
    # build of this version left there is never renamed and goes now.
    for stale in glob.glob(os.path.join(os.path.dirname(target), f"incomplete.*_{VERSION}")):
        logging.warning("%s: removing what an interrupted build left behind", stale)
        shutil.rmtree(stale, ignore_errors=True)
    created = [p for p in (out_dir, os.path.dirname(os.path.dirname(target)), os.path.dirname(target))
               if not os.path.exists(p)]
    builder = ecg_builder_class()(dataset=dataset, config=config, split_results=split_results, report=report,
                         strict=strict, data_dir=out_dir)
    try:
        import tensorflow_datasets as tfds

        printed = io.StringIO()  # TFDS prints "Downloading and preparing dataset ..." (nothing is downloaded)
        with tempfile.TemporaryDirectory(prefix="sediff_downloads_") as downloads, \
                contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            tfds.disable_progress_bar()  # (its bars; our callers show their own progress)
            builder.download_and_prepare(download_dir=downloads)
        logging.debug("TFDS: %s", printed.getvalue().strip())
        report.path = target
        with atomic_path(os.path.join(target, REPORT_FILE)) as tmp:
            with open(tmp, "w") as f:
                f.write(jsonio.dumps(dataclasses.asdict(report), indent=1))
    except BaseException:
        if os.path.exists(target):
            shutil.rmtree(target)
        for path in reversed(created):  # deepest first; only if still empty
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        raise
    return report


class PreparedDatasetError(SediffError, FileNotFoundError):
    """A folder that is not a prepared dataset (or lacks the split asked for)."""


def open_split(path: str, split: str):
    """Random-access source of one split of a prepared dataset (`path` = the version directory).

    Returns a sequence-like ArrayRecordDataSource: len(), [i] and __getitems__ yield decoded examples."""
    import tensorflow_datasets as tfds

    if not os.path.exists(os.path.join(path, "dataset_info.json")):
        raise PreparedDatasetError(f"{path}: not a prepared dataset (no dataset_info.json; build one with "
                                   "experiments/prepare_data.py)")
    builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
        raise ValueError(f"{path}: no split {split!r}; has {', '.join(builder.info.splits)}")
    return builder.as_data_source(split=split)
