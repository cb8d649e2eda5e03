"""Per-class simulator parameter priors: the mean and spread of fitted parameters for each diagnostic class.

SE-Diff's simulator losses evaluate the vector field with "class parameters"; its release loads them from an
unpublished pickle. Ours are built by `experiments/build_simulator_prior.py`, which fits every training record
(`sediff_jax.simulator.fitting`) and groups the fits by class (`sediff_jax.data.classes.record_classes`:
'sediff/<class>', 'superclass/<NORM|MI|...>', 'statement/<SCP code>', and 'all'). The file is small, versioned
JSON with its provenance; `load_prior()` reads the default one shipped in the package (built from the PTB-XL
records in ../shared/data), and a training config points to any other by path.

Fields (dipole model, angles and widths at 60 bpm, see `params.py`): theta, width, amplitude: (3, 6);
hr_mean, hr_std: () bpm.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from sediff_jax.io import atomic_path
from sediff_jax.simulator.params import (
    DIPOLE_CHANNELS,
    DIPOLE_WAVES,
    ECGParams,
    WaveParams,
    dipole_params,
    validate_rhythm,
)
from sediff_jax.errors import SediffError

PRIOR_FORMAT = "sediff_jax.simulator_prior"
PRIOR_VERSION = 1
WAVE_FIELDS = ("theta", "width", "amplitude")
RHYTHM_FIELDS = ("hr_mean", "hr_std")
FIELDS = WAVE_FIELDS + RHYTHM_FIELDS
FIELD_UNITS = {"theta": "rad at 60 bpm", "width": "rad at 60 bpm", "amplitude": "mV", "hr_mean": "bpm",
               "hr_std": "bpm"}
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
ALL = "all"
SHIPPED_PRIORS_DIR = Path(__file__).resolve().parent / "priors"
# 'default' (what models trained before named their prior recorded): fitted at 500 Hz on the 353 training records
# of the first 500 PTB-XL records. ptbxl100_full_train_v2: at 100 Hz on 1,466 records of all PTB-XL folds 1-8, at
# most ~100 per class (experiments/build_simulator_prior.py --max_per_class=100).
DEFAULT_PRIOR_PATH = SHIPPED_PRIORS_DIR / "ptbxl500_train_v1.json"


class PriorError(SediffError, ValueError):
    """A prior file that is missing, unreadable, of another format or version, or lacks a class."""


@dataclasses.dataclass(frozen=True)
class ClassPrior:
    """One class: `count` fits; `mean`/`std` per field (NumPy, shapes as in the module docstring);
    `quality`: distribution of the fits' median lead correlation and misfit (quantiles), converged fraction."""

    count: int
    mean: Mapping[str, np.ndarray]
    std: Mapping[str, np.ndarray]
    quality: Mapping[str, Any]

    def params(self, hr_mean: float | None = None, hr_std: float | None = None) -> ECGParams:
        """The class's mean parameters as simulator input; the heart rate defaults to the class mean."""
        hr = float(self.mean["hr_mean"]) if hr_mean is None else hr_mean
        std = float(self.mean["hr_std"]) if hr_std is None else hr_std
        validate_rhythm(hr, std)
        base = dipole_params(hr_mean=hr, hr_std=std)
        waves = WaveParams(*(jnp.asarray(self.mean[f], jnp.float32) for f in WAVE_FIELDS))
        return base._replace(waves=waves)


@dataclasses.dataclass(frozen=True)
class SimulatorPrior:
    """All classes of one prior file, plus where it came from (`provenance`: data, fit config, commit, date)."""

    classes: Mapping[str, ClassPrior]
    provenance: Mapping[str, Any]

    def __getitem__(self, name: str) -> ClassPrior:
        if name not in self.classes:
            raise PriorError(f"class {name!r} is not in this prior; it has {len(self.classes)} classes, e.g. "
                             f"{', '.join(sorted(self.classes)[:8])}")
        return self.classes[name]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def params(self, name: str, hr_mean: float | None = None, hr_std: float | None = None) -> ECGParams:
        return self[name].params(hr_mean, hr_std)

    def wave_table(self, names: Sequence[str]) -> WaveParams:
        """Mean waves of `names` stacked: leaves (len(names), 3, 6), for lookups by class index inside jit."""
        return WaveParams(*(jnp.asarray(np.stack([self[n].mean[f] for n in names]), jnp.float32)
                            for f in WAVE_FIELDS))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PRIOR_FORMAT,
            "version": PRIOR_VERSION,
            "fields": {f: {"units": FIELD_UNITS[f], "shape": list(np.shape(_first(self)[f]))} for f in FIELDS},
            "channels": list(DIPOLE_CHANNELS),
            "waves": list(DIPOLE_WAVES),
            "provenance": dict(self.provenance),
            "classes": {
                name: {
                    "count": c.count,
                    "mean": {f: np.asarray(c.mean[f], np.float64).round(5).tolist() for f in FIELDS},
                    "std": {f: np.asarray(c.std[f], np.float64).round(5).tolist() for f in FIELDS},
                    "quality": c.quality,
                }
                for name, c in self.classes.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "prior") -> "SimulatorPrior":
        if data.get("format") != PRIOR_FORMAT:
            raise PriorError(f"{where}: not a simulator prior (format {data.get('format')!r}, expected {PRIOR_FORMAT!r})")
        if data.get("version") != PRIOR_VERSION:
            raise PriorError(f"{where}: prior version {data.get('version')!r}; this sediff_jax reads version "
                             f"{PRIOR_VERSION}")
        try:
            classes = {
                name: ClassPrior(
                    count=int(c["count"]),
                    mean={f: np.asarray(c["mean"][f], np.float32) for f in FIELDS},
                    std={f: np.asarray(c["std"][f], np.float32) for f in FIELDS},
                    quality=c["quality"],
                )
                for name, c in data["classes"].items()
            }
        except (KeyError, TypeError, ValueError) as e:
            raise PriorError(f"{where}: malformed class entry ({e!r})") from None
        for name, c in classes.items():
            if c.mean["theta"].shape != (len(DIPOLE_CHANNELS), len(DIPOLE_WAVES)):
                raise PriorError(f"{where}: class {name!r} has theta of shape {c.mean['theta'].shape}, expected "
                                 f"{(len(DIPOLE_CHANNELS), len(DIPOLE_WAVES))}")
        return cls(classes=classes, provenance=data.get("provenance", {}))


def _first(prior: SimulatorPrior) -> Mapping[str, np.ndarray]:
    return next(iter(prior.classes.values())).mean


def _quantiles(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    return {f"p{int(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES}


@dataclasses.dataclass(frozen=True)
class RecordFit:
    """What the prior needs from one fit (see `FitResult`): fields as in the module docstring, plus quality."""

    values: Mapping[str, np.ndarray]
    median_correlation: float
    loss: float
    converged: bool

    @classmethod
    def from_result(cls, result) -> "RecordFit":
        waves, rhythm = result.params.waves, result.params.rhythm
        values = {f: np.asarray(getattr(waves, f), np.float32) for f in WAVE_FIELDS}
        values.update(hr_mean=np.float32(rhythm.hr_mean), hr_std=np.float32(rhythm.hr_std))
        return cls(values, float(np.median(result.lead_correlation)), float(result.loss), bool(result.converged))


def build_prior(
    fits: Sequence[RecordFit],
    labels: Sequence[Sequence[str]],
    provenance: Mapping[str, Any],
    min_count: int = 3,
    min_correlation: float = 0.8,
) -> SimulatorPrior:
    """Group fits by label and summarise each class with at least `min_count` usable fits.

    A fit is usable when its median lead correlation is at least `min_correlation`; the others count only in
    the quality distribution (`quality['excluded']`). Every fit also belongs to the class 'all'.
    """
    if len(fits) != len(labels):
        raise ValueError(f"{len(fits)} fits but {len(labels)} label sets")
    members: dict[str, list[int]] = {ALL: list(range(len(fits)))}
    for k, record_labels in enumerate(labels):
        for label in record_labels:
            members.setdefault(label, []).append(k)
    classes = {}
    for name in sorted(members, key=lambda n: (n != ALL, n)):
        group = [fits[k] for k in members[name]]
        usable = [f for f in group if f.median_correlation >= min_correlation]
        if len(usable) < min_count:
            continue
        stacked = {f: np.stack([u.values[f] for u in usable]).astype(np.float64) for f in FIELDS}
        classes[name] = ClassPrior(
            count=len(usable),
            mean={f: stacked[f].mean(0).astype(np.float32) for f in FIELDS},
            std={f: stacked[f].std(0).astype(np.float32) for f in FIELDS},
            quality={
                "median_correlation": _quantiles([f.median_correlation for f in group]),
                "loss": _quantiles([f.loss for f in group]),
                "converged_fraction": float(np.mean([f.converged for f in group])),
                "excluded": len(group) - len(usable),
            },
        )
    if ALL not in classes:
        raise ValueError(f"fewer than {min_count} usable fits (median correlation >= {min_correlation}); no prior")
    return SimulatorPrior(classes=classes, provenance=dict(provenance))


def save_fits(path: str | os.PathLike, record_ids: Sequence[str], labels: Sequence[Sequence[str]],
              fits: Sequence[RecordFit], provenance: Mapping[str, Any]) -> Path:
    """The per-record fits a prior is built from, as one .npz (atomically): record_id, labels ('|'-joined),
    median_correlation, loss, converged, provenance (JSON) and one (records, ...) array per field of FIELDS."""
    arrays = {f: np.stack([fit.values[f] for fit in fits]) for f in FIELDS}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, record_id=np.array(list(record_ids)), labels=np.array(["|".join(x) for x in labels]),
                     median_correlation=np.array([x.median_correlation for x in fits], np.float32),
                     loss=np.array([x.loss for x in fits], np.float32),
                     converged=np.array([x.converged for x in fits]), provenance=np.array(json.dumps(provenance)),
                     **arrays)
    return Path(path)


def load_fits(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, ...]], list[RecordFit], dict]:
    """(record ids, labels, fits, provenance) of a `save_fits` file; PriorError names the file otherwise."""
    try:
        data = np.load(path)
        labels = [tuple(x for x in s.split("|") if x) for s in data["labels"].tolist()]
        fits = [RecordFit({f: data[f][k] for f in FIELDS}, float(data["median_correlation"][k]),
                          float(data["loss"][k]), bool(data["converged"][k])) for k in range(len(labels))]
        provenance = json.loads(str(data["provenance"]))
        return data["record_id"].tolist(), labels, fits, provenance
    except (OSError, KeyError, ValueError) as e:
        raise PriorError(f"{path}: not a per-record fits file (save_fits / --fits_out): {e}") from None


def save_prior(prior: SimulatorPrior, path: str | os.PathLike) -> Path:
    """Write the prior as JSON, atomically."""

    data = prior.to_json()
    classes = data.pop("classes")
    # Readable and diff-friendly: the header indented, one line per class.
    text = json.dumps(data, indent=1)[:-2] + ',\n "classes": {\n'
    text += ",\n".join(f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in classes.items())
    text += "\n }\n}\n"
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def shipped_priors() -> tuple[str, ...]:
    """Names of the priors shipped in the package (`load_prior` takes them as well as paths)."""
    return tuple(sorted(p.stem for p in SHIPPED_PRIORS_DIR.glob("*.json")))


def prior_path(prior: str | os.PathLike | None) -> Path:
    """The file of `prior`: None, '' or 'default' -> `DEFAULT_PRIOR_PATH`; a shipped prior's name (e.g.
    'ptbxl100_full_train_v2', so a trained model's record of its prior works on any machine) -> its file in the
    package; anything else is a path."""
    if prior is None or str(prior) in ("", "default"):
        return DEFAULT_PRIOR_PATH
    text = str(prior)
    if os.sep not in text and "/" not in text and not text.endswith(".json"):
        shipped = SHIPPED_PRIORS_DIR / f"{text}.json"
        if not shipped.exists():
            raise PriorError(f"{text!r}: no such shipped prior (shipped: {', '.join(shipped_priors())}) and not a "
                             "path to a prior file")
        return shipped
    return Path(prior)


def load_prior(path: str | os.PathLike | None = None) -> SimulatorPrior:
    """Read a prior: a file, a shipped prior's name, or None / 'default' for `DEFAULT_PRIOR_PATH` (`prior_path`)."""
    path = prior_path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PriorError(f"{path}: prior file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise PriorError(f"{path}: cannot read the prior ({e})") from None
    return SimulatorPrior.from_json(data, where=str(path))
