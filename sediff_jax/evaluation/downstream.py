"""Downstream value of synthetic ECGs: a 1-D ResNet multi-label classifier (PTB-XL diagnostic superclasses)
trained on real, real + synthetic, or synthetic records and tested on real ones; macro F1 and macro AUROC.

Protocols (`SETTINGS`): TRTR trains on the real training split; TRTR+S adds synthetic ECGs generated from the
conditions of the training records that carry a minority class (anything but NORM alone), the paper's
augmentation; TSTR trains on synthetic ECGs only (one per training record's conditions). Every protocol picks
per-class decision thresholds on the real validation split (maximising F1) and is scored on the real test split.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
import optax
from flax import nnx

from sediff_jax.evaluation.networks import NetworkTrainConfig, batched_apply, train_network
from sediff_jax.models.ecg_encoder import ECGClassifier, ECGEncoderConfig
from sediff_jax.optim import split_params

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
SETTINGS = ("TRTR", "TRTR+S", "TSTR")


def multi_hot(labels: Sequence[Sequence[str]], classes: Sequence[str] = SUPERCLASSES) -> np.ndarray:
    """(n, len(classes)) float32: 1 where record i has class j."""
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), np.float32)
    for i, names in enumerate(labels):
        for name in names:
            if name in index:
                out[i, index[name]] = 1.0
    return out


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney statistic (ties count 1/2); NaN when one class is absent."""
    y_true, score = np.asarray(y_true, bool), np.asarray(score, np.float64)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    start = 0
    while start < len(score):  # average ranks over ties
        end = start
        while end + 1 < len(score) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[y_true].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def f1_score(y_true: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of one class: 2 TP / (2 TP + FP + FN); 0 when there are no positives and no predictions."""
    y_true, predicted = np.asarray(y_true, bool), np.asarray(predicted, bool)
    tp = np.sum(y_true & predicted)
    denominator = 2 * tp + np.sum(~y_true & predicted) + np.sum(y_true & ~predicted)
    return float(2 * tp / denominator) if denominator else 0.0


def tune_thresholds(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-class threshold maximising F1 on (y_true, probabilities) (n, classes); 0.5 for a class with no
    positives."""
    thresholds = np.full(y_true.shape[1], 0.5)
    for j in range(y_true.shape[1]):
        if not y_true[:, j].any():
            continue
        candidates = np.unique(probabilities[:, j])
        scores = [f1_score(y_true[:, j], probabilities[:, j] >= t) for t in candidates]
        thresholds[j] = candidates[int(np.argmax(scores))]
    return thresholds


def classification_scores(y_true: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray,
                          classes: Sequence[str] = SUPERCLASSES) -> dict[str, Any]:
    """Macro F1 (over all classes) and macro AUROC (over classes with positives and negatives), per class too."""
    f1 = [f1_score(y_true[:, j], probabilities[:, j] >= thresholds[j]) for j in range(len(classes))]
    areas = [auroc(y_true[:, j], probabilities[:, j]) for j in range(len(classes))]
    defined = [a for a in areas if np.isfinite(a)]
    return {"macro_f1": float(np.mean(f1)), "macro_auroc": float(np.mean(defined)) if defined else float("nan"),
            "f1": dict(zip(classes, f1)), "auroc": dict(zip(classes, areas)),
            "positives": dict(zip(classes, y_true.sum(0).astype(int).tolist()))}


def classifier_loss(model: ECGClassifier, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict]:
    """Mean sigmoid cross-entropy. batch: ecg (b, time, leads) mV, labels (b, classes) in {0, 1}."""
    loss = optax.sigmoid_binary_cross_entropy(model(batch["ecg"]), batch["labels"]).mean()
    return loss, {}


@dataclasses.dataclass(frozen=True)
class Classifier:
    graphdef: nnx.GraphDef
    params: Any

    def probabilities(self, ecg: np.ndarray) -> np.ndarray:
        """(n, time, leads) mV -> (n, classes) sigmoid outputs."""
        model = nnx.merge(self.graphdef, self.params)
        return batched_apply(jax.jit(lambda x: jax.nn.sigmoid(model(x))), ecg)


def train_classifier(ecg: np.ndarray, labels: np.ndarray, fs: float,
                     model_config: ECGEncoderConfig = ECGEncoderConfig(),
                     train_config: NetworkTrainConfig = NetworkTrainConfig()) -> Classifier:
    """ecg: (n, time, leads) mV; labels: (n, classes) multi-hot."""
    model = ECGClassifier(dataclasses.replace(model_config, num_leads=ecg.shape[2]), labels.shape[1],
                          rngs=nnx.Rngs(train_config.seed))
    params = train_network(model, classifier_loss, {"ecg": np.asarray(ecg, np.float32),
                                                    "labels": np.asarray(labels, np.float32)}, fs, train_config)
    return Classifier(split_params(model)[0], params)


def training_set(setting: str, real_ecg: np.ndarray, real_labels: np.ndarray, synthetic_ecg: np.ndarray | None,
                 synthetic_labels: np.ndarray | None, majority: str = "NORM",
                 classes: Sequence[str] = SUPERCLASSES) -> tuple[np.ndarray, np.ndarray]:
    """The (ecg, labels) a protocol trains on. Synthetic rows carry the labels of the record they were generated
    from; TRTR+S adds the synthetic rows with any class other than `majority`. The synthetic arrays may be None
    when only TRTR runs."""
    if setting == "TRTR":
        return real_ecg, real_labels
    if setting in ("TSTR", "TRTR+S") and synthetic_ecg is None:
        raise ValueError(f"protocol {setting} trains on synthetic ECGs, but none were given")
    if setting == "TSTR":
        return synthetic_ecg, synthetic_labels
    if setting == "TRTR+S":
        others = np.array([c != majority for c in classes])
        minority = (synthetic_labels[:, others] > 0).any(axis=1)
        return (np.concatenate([real_ecg, synthetic_ecg[minority]]),
                np.concatenate([real_labels, synthetic_labels[minority]]))
    raise ValueError(f"protocol {setting!r} is unknown; expected one of {SETTINGS}")


def downstream_experiment(train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                          test: tuple[np.ndarray, np.ndarray], synthetic: tuple[np.ndarray, np.ndarray] | None,
                          fs: float,
                          settings: Sequence[str] = SETTINGS, seeds: Sequence[int] = (0, 1, 2),
                          train_config: NetworkTrainConfig = NetworkTrainConfig(batch_size=32, num_steps=500),
                          model_config: ECGEncoderConfig = ECGEncoderConfig(),
                          log=None) -> dict[str, Any]:
    """Each protocol trained once per seed; (ecg (n, time, 12) mV, labels (n, classes)) for every part
    (`synthetic` None when only TRTR runs).
    Returns {setting: {"runs": [per-seed scores], "macro_f1": mean, "macro_f1_std", "macro_auroc", ...}}."""
    results = {}
    for setting in settings:
        ecg, labels = training_set(setting, *train, *(synthetic or (None, None)))
        runs = []
        for seed in seeds:
            config = dataclasses.replace(train_config, seed=seed, batch_size=min(train_config.batch_size, len(ecg)))
            classifier = train_classifier(ecg, labels, fs, model_config, config)
            thresholds = tune_thresholds(validation[1], classifier.probabilities(validation[0]))
            runs.append(dict(classification_scores(test[1], classifier.probabilities(test[0]), thresholds),
                             seed=seed, thresholds=thresholds.tolist()))
            if log is not None:
                log(setting, seed, runs[-1])
        results[setting] = {"train_records": int(len(ecg)), "runs": runs,
                            **{f"{m}{s}": float(f(np.array([r[m] for r in runs])))
                               for m in ("macro_f1", "macro_auroc") for s, f in (("", np.mean), ("_std", np.std))}}
    return results
