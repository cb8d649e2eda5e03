"""One call from a dataset's source files (or the simulator) to a prepared array_record dataset."""

from __future__ import annotations

import dataclasses

from sediff_jax.data import builder
from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.data.ludb import read_ludb
from sediff_jax.data.mimic import read_mimic
from sediff_jax.data.ptbxl import read_ptbxl
from sediff_jax.data.sources import DATASETS, SPLITS, RecordEntry
from sediff_jax.data.synthetic import synthetic_records



@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """dataset: one of DATASETS.  source_dir: the dataset's root folder (unused for 'synthetic').
    out_dir: where prepared datasets go.  canonical: the canonical form.  strict: the first bad record is an
    error (default: skip it and count the reason).  num_workers: processes reading records.
    num_synthetic: synthetic records (split 80/10/10).  seed: synthetic seed.
    mimic_patients_csv: MIMIC-IV `hosp/patients.csv` for age and sex (optional).
    """

    dataset: str
    out_dir: str
    source_dir: str = ""
    canonical: CanonicalConfig = CanonicalConfig()
    strict: bool = False
    overwrite: bool = False
    num_workers: int = 1
    num_synthetic: int = 1000
    seed: int = 0
    mimic_patients_csv: str | None = None


def dataset_entries(dataset: str, source_dir: str, fs: float = 100.0,
                    mimic_patients_csv: str | None = None) -> list[RecordEntry]:
    """The record list of a dataset laid out under `source_dir` ('ptbxl', 'mimic' or 'ludb'), each record at the
    native rate closest to `fs` Hz; no prepared dataset is needed (evaluation, retrieval and CLIP read this)."""
    if dataset == "ptbxl":
        return read_ptbxl(source_dir, 100 if fs <= 100 else 500)
    if dataset == "mimic":
        return read_mimic(source_dir, mimic_patients_csv)
    if dataset == "ludb":
        return read_ludb(source_dir)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def read_entries(config: PrepareConfig) -> list[RecordEntry]:
    """The record list `config` prepares (`dataset_entries` at its canonical rate)."""
    return dataset_entries(config.dataset, config.source_dir, config.canonical.fs, config.mimic_patients_csv)


def prepare(config: PrepareConfig) -> builder.PrepareReport:
    """Build the prepared dataset `config` describes and return its report (see builder.build)."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; expected one of {', '.join(DATASETS)}")
    canonical = config.canonical
    if config.dataset == "synthetic":
        if config.num_synthetic < len(SPLITS):
            raise ValueError(f"num_synthetic must be at least {len(SPLITS)}, got {config.num_synthetic}")
        counts = {"validation": max(1, config.num_synthetic // 10), "test": max(1, config.num_synthetic // 10)}
        counts["train"] = config.num_synthetic - counts["validation"] - counts["test"]
        split_results = {
            split: (lambda split=split: synthetic_records(counts[split], canonical, split=split, seed=config.seed))
            for split in SPLITS
        }
    else:
        entries = read_entries(config)
        if not entries:
            raise ValueError(f"{config.source_dir}: no records found for dataset {config.dataset}")
        by_split = {s: [e for e in entries if e.split == s] for s in SPLITS}
        pool = builder.worker_pool(config.num_workers)
        split_results = {
            split: (lambda split=split: builder.file_results(by_split[split], canonical, pool))
            for split in SPLITS
            if by_split[split]
        }
        try:
            return builder.build(config.dataset, config.out_dir, canonical, split_results, strict=config.strict,
                                 overwrite=config.overwrite)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return builder.build(config.dataset, config.out_dir, canonical, split_results, strict=config.strict,
                         overwrite=config.overwrite)
