"""Condition recognition (TRTS, train on real, test on synthetic): does a generated ECG carry the findings its
prompt asked for, and how much of each finding's variety does the generator cover?

A multi-label classifier is trained on real records (the downstream 1-D ResNet, `evaluation.downstream`) for the
five PTB-XL diagnostic superclasses and ten specific statements (`STATEMENTS`), its per-class thresholds tuned
for F1 on real validation records. It then scores real test records (TRTR, the ceiling) and ECGs generated from
the same records' conditions, truth being each record's own labels (TRTS). A statement whose TRTS AUROC falls
well below its TRTR AUROC is one the generator leaves out or draws too faintly.

`per_class_precision_recall` measures variety class by class: k-NN precision and recall (Kynkaanniemi et al.
2019) between the real records with a label and the ECGs generated from those records, in an encoder's feature
space; a class whose recall collapses while its precision holds is drawn from its mode.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from flax import nnx

from sediff_jax.evaluation.distribution import knn_precision_recall
from sediff_jax.evaluation.downstream import (SUPERCLASSES, Classifier, classification_scores, multi_hot,
                                              train_classifier, tune_thresholds)
from sediff_jax.checkpoints.weights import flatten_params, weights_id
from sediff_jax.evaluation.networks import NetworkTrainConfig, load_network, save_network
from sediff_jax.models.ecg_encoder import ECGClassifier, ECGEncoderConfig

KIND = "sediff_jax/recognition_classifier"

# Specific PTB-XL statements: name -> the SCP codes any of which makes a record positive.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "AF": ("AFIB",), "AFLT": ("AFLT",), "CLBBB": ("CLBBB",), "CRBBB": ("CRBBB",), "LAFB": ("LAFB",),
    "1AVB": ("1AVB",), "LVH": ("LVH",), "IMI": ("IMI",), "AMI/STE": ("AMI", "STE_"), "PVC": ("PVC",)}
RECOGNITION_CLASSES: tuple[str, ...] = SUPERCLASSES + tuple(STATEMENTS)


def recognition_labels(superclasses: Sequence[Sequence[str]], codes: Sequence[Sequence[str]]) -> np.ndarray:
    """(n, len(RECOGNITION_CLASSES)) float32 multi-hot: the superclasses, then each statement of `STATEMENTS`."""
    if len(superclasses) != len(codes):
        raise ValueError(f"{len(superclasses)} superclass rows but {len(codes)} code rows")
    statements = np.array([[any(c in set(record) for c in members) for members in STATEMENTS.values()]
                           for record in codes], np.float32).reshape(len(codes), len(STATEMENTS))
    return np.concatenate([multi_hot(superclasses, SUPERCLASSES), statements], axis=1)


@dataclasses.dataclass(frozen=True)
class RecognitionClassifier:
    """A real-data classifier of `classes` with its F1-tuned thresholds.  fs, num_samples: the ECGs it was
    trained on (Hz, samples).  config: what was saved with it (training settings, provenance).  id: weights."""

    classifier: Classifier
    thresholds: np.ndarray
    classes: tuple[str, ...]
    fs: float
    num_samples: int
    config: dict[str, Any]
    id: str = ""

    def probabilities(self, ecg: np.ndarray) -> np.ndarray:
        """(n, time, leads) mV -> (n, classes) sigmoid outputs."""
        ecg = np.asarray(ecg)
        if ecg.ndim != 3 or ecg.shape[1] != self.num_samples:
            raise ValueError(f"the classifier takes (n, {self.num_samples}, leads) ECGs at {self.fs:g} Hz, got "
                             f"shape {ecg.shape}")
        return self.classifier.probabilities(ecg)

    def scores(self, ecg: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Macro and per-class F1 / AUROC of the ECGs (n, time, leads) mV against labels (n, classes)."""
        return classification_scores(labels, self.probabilities(ecg), self.thresholds, self.classes)

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file (weights, classes, thresholds, training settings), written atomically."""
        return save_network(path, self.classifier.params, dict(self.config, thresholds=self.thresholds.tolist()))


def train_recognition_classifier(train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                                 fs: float, train_config: NetworkTrainConfig = NetworkTrainConfig(),
                                 model_config: ECGEncoderConfig = ECGEncoderConfig(),
                                 classes: Sequence[str] = RECOGNITION_CLASSES, **provenance) -> RecognitionClassifier:
    """Train on real (ecg (n, time, 12) mV, labels (n, classes)) and tune each class's threshold for F1 on
    `validation` (same shapes)."""
    ecg, labels = train
    if labels.shape[1] != len(classes) or validation[1].shape[1] != len(classes):
        raise ValueError(f"labels must have {len(classes)} columns ({', '.join(classes)})")
    model_config = dataclasses.replace(model_config, num_leads=ecg.shape[2])
    classifier = train_classifier(ecg, labels, fs, model_config, train_config)
    thresholds = tune_thresholds(validation[1], classifier.probabilities(validation[0]))
    config = {"kind": KIND, "model": dataclasses.asdict(model_config), "classes": list(classes), "fs": float(fs),
              "num_samples": int(ecg.shape[1]), "training": dataclasses.asdict(train_config),
              "train_records": int(len(ecg)), "validation_records": int(len(validation[0])),
              "train_positives": dict(zip(classes, labels.sum(0).astype(int).tolist())), **provenance}
    return RecognitionClassifier(classifier, thresholds, tuple(classes), float(fs), int(ecg.shape[1]), config,
                                 weights_id(flatten_params(classifier.params, "params")))


def _build(config: dict[str, Any]) -> ECGClassifier:
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()}
    return ECGClassifier(ECGEncoderConfig(**model), len(config["classes"]), rngs=nnx.Rngs(0))


def load_recognition_classifier(path: str | os.PathLike) -> RecognitionClassifier:
    """A `RecognitionClassifier.save` file; a missing, truncated or foreign file raises CheckpointError."""
    graphdef, params, config, weights = load_network(path, _build, KIND)
    return RecognitionClassifier(Classifier(graphdef, params), np.asarray(config["thresholds"], np.float64),
                                 tuple(config["classes"]), float(config["fs"]), int(config["num_samples"]),
                                 config, weights)


def per_class_precision_recall(real_features: np.ndarray, real_labels: np.ndarray, other_features: np.ndarray,
                               other_labels: np.ndarray, classes: Sequence[str], k: int = 3
                               ) -> dict[str, dict[str, float]]:
    """k-NN precision / recall within each class: the real rows with the label against the other rows with it
    (ECGs generated from records carry those records' labels; another split's real records, their own).
    *_features: (n, dim); *_labels: (n, classes). A class with k or fewer rows on either side gets NaN.
    Returns {class: {records, other_records, precision, recall}}."""
    if len(real_features) != len(real_labels) or len(other_features) != len(other_labels):
        raise ValueError(f"features and labels differ in rows: {len(real_features)} / {len(real_labels)} real, "
                         f"{len(other_features)} / {len(other_labels)} other")
    out = {}
    for j, name in enumerate(classes):
        real_rows, other_rows = np.flatnonzero(real_labels[:, j] > 0), np.flatnonzero(other_labels[:, j] > 0)
        precision = recall = math.nan
        if min(len(real_rows), len(other_rows)) > k:
            precision, recall = knn_precision_recall(real_features[real_rows], other_features[other_rows], k)
        out[name] = {"records": int(len(real_rows)), "other_records": int(len(other_rows)),
                     "precision": precision, "recall": recall}
    return out
