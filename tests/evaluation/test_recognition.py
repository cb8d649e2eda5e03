"""Condition recognition (TRTS): statement labels, per-class variety, the classifier's file, the CLI on real
records."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sediff_jax.checkpoints import CheckpointError
from sediff_jax.evaluation.distribution import knn_precision_recall
from sediff_jax.evaluation.networks import NetworkTrainConfig
from sediff_jax.evaluation.recognition import (RECOGNITION_CLASSES, STATEMENTS, load_recognition_classifier,
                                               per_class_precision_recall, recognition_labels,
                                               train_recognition_classifier)
from sediff_jax.evaluation.runner import GeneratedFileError, read_generated
from sediff_jax.models.ecg_encoder import ECGEncoderConfig

TINY = ECGEncoderConfig(channels=(8, 16, 16), embed_dim=16, text_hidden=32)


def test_labels_are_superclasses_then_statements():
    labels = recognition_labels([("MI",), ("NORM",), ()],
                                [("AMI", "SR"), ("NORM", "SR"), ("STE_", "AFIB", "PVC")])
    column = {c: j for j, c in enumerate(RECOGNITION_CLASSES)}
    assert labels.shape == (3, 15) and RECOGNITION_CLASSES[:5] == ("NORM", "MI", "STTC", "CD", "HYP")
    assert labels[0, column["MI"]] == 1 and labels[0, column["AMI/STE"]] == 1 and labels[0].sum() == 2
    assert labels[1, column["NORM"]] == 1 and labels[1].sum() == 1
    assert labels[2, [column["AMI/STE"], column["AF"], column["PVC"]]].tolist() == [1, 1, 1] and labels[2].sum() == 3
    assert set(STATEMENTS) == set(RECOGNITION_CLASSES[5:])
    with pytest.raises(ValueError, match="superclass rows"):
        recognition_labels([()], [(), ()])


def test_per_class_recall_is_knn_recall_on_each_class_subset():
    rng = np.random.default_rng(0)
    real, generated = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) * 0.3
    labels = np.zeros((40, 3), np.float32)
    labels[:20, 0], labels[::2, 1], labels[:3, 2] = 1, 1, 1
    out = per_class_precision_recall(real, labels, generated, labels, ["a", "b", "c"])
    assert (out["a"]["precision"], out["a"]["recall"]) == knn_precision_recall(real[:20], generated[:20])
    assert (out["b"]["precision"], out["b"]["recall"]) == knn_precision_recall(real[::2], generated[::2])
    assert out["c"]["records"] == 3 and np.isnan(out["c"]["recall"])  # k = 3 needs more than 3 rows
    same = per_class_precision_recall(real, labels, real, labels, ["a", "b", "c"])
    assert same["a"]["precision"] == same["a"]["recall"] == 1.0
    assert out["a"]["recall"] < 0.8  # a set 0.3x as spread covers less of the real one
    with pytest.raises(ValueError, match="differ in rows"):
        per_class_precision_recall(real, labels[:5], generated, labels, ["a", "b", "c"])


def test_classifier_file_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    ecg = rng.normal(size=(24, 500, 12)).astype(np.float32) * 0.1
    labels = (rng.random((24, len(RECOGNITION_CLASSES))) < 0.3).astype(np.float32)
    classifier = train_recognition_classifier((ecg[:16], labels[:16]), (ecg[16:], labels[16:]), 100.0,
                                              NetworkTrainConfig(batch_size=8, num_steps=2, crop_s=4.0), TINY)
    path = classifier.save(tmp_path / "c.safetensors")
    loaded = load_recognition_classifier(path)
    assert loaded.id == classifier.id and len(classifier.id) == 12
    assert loaded.classes == RECOGNITION_CLASSES and (loaded.fs, loaded.num_samples) == (100.0, 500)
    np.testing.assert_array_equal(loaded.thresholds, classifier.thresholds)
    np.testing.assert_array_equal(loaded.probabilities(ecg), classifier.probabilities(ecg))
    with pytest.raises(ValueError, match="500"):
        loaded.probabilities(ecg[:, :400])
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:1000])
    for bad in (tmp_path / "cut.safetensors", tmp_path / "missing.safetensors"):
        with pytest.raises(CheckpointError, match=bad.name):
            load_recognition_classifier(bad)


def test_read_generated_round_trip_and_bad_files(tmp_path):
    from sediff_jax.io import write_npz

    ecg = np.zeros((2, 100, 12), np.float32)
    write_npz(tmp_path / "g.npz", ecg, 100.0, record_ids=np.array(["a", "b"]), texts=np.array(["x", "y"]))
    got, fs, ids, texts = read_generated(tmp_path / "g.npz")
    assert got.shape == (2, 100, 12) and fs == 100.0 and ids == ["a", "b"] and texts == ["x", "y"]
    write_npz(tmp_path / "plain.npz", ecg, 100.0)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "g.npz").read_bytes()[:300])
    for name, match in (("plain.npz", "no record_ids, texts"), ("cut.npz", "unreadable"), ("none.npz", "not found")):
        with pytest.raises(GeneratedFileError, match=match):
            read_generated(tmp_path / name)


@pytest.mark.slow  # ~1-2 min (real records, CLIP features, a classifier trained and reloaded); make test-all
def test_recognize_cli_scores_real_records_given_as_generated_like_trtr(repo_root, data_dir, tmp_path):
    """The real test records written as a 'generated' set must score exactly as TRTR, and have per-class recall 1;
    the classifier is trained once, written, and loaded (not retrained) on the next run."""
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import PrepareConfig, read_entries
    from sediff_jax.evaluation.paired import real_pairs
    from sediff_jax.evaluation.runner import write_generated

    source = data_dir / "ptb-xl"
    canonical = CanonicalConfig(fs=100.0, duration_s=10.0)
    entries = read_entries(PrepareConfig(dataset="ptbxl", out_dir="", source_dir=str(source), canonical=canonical))
    test = real_pairs(entries, canonical, "test")
    write_generated(tmp_path / "real.npz", test.ecg, 100.0, test)
    classifier = tmp_path / "classifier.safetensors"

    def run(out, *extra):
        return subprocess.run([sys.executable, "-m", "experiments.recognize", f"--source_dir={source}",
                               f"--classifier={classifier}", f"--generated=same={tmp_path / 'real.npz'}",
                               "--num_steps=2", "--batch_size=8", "--train_records=40", f"--out={out}", *extra],
                              cwd=repo_root, capture_output=True, text=True, timeout=400)

    result = run(tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training the recognition classifier on 40 records" in result.stdout and classifier.is_file()
    scores = json.loads((tmp_path / "out" / "recognition.json").read_text())
    assert scores["trts"]["same"] == scores["trtr"] and scores["records"] == len(test.record_ids)
    for name in ("NORM", "MI"):
        assert scores["per_class_precision_recall"]["same"][name]["recall"] == 1.0
    assert "| AMI/STE |" in (tmp_path / "out" / "report.md").read_text()
    again = run(tmp_path / "out2", "--encoder=")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "training the recognition classifier" not in again.stdout
    assert json.loads((tmp_path / "out2" / "recognition.json").read_text())["trtr"] == scores["trtr"]
    bad = run(tmp_path / "out3", "--generated=x")
    assert bad.returncode == 2 and "error: --generated: 'x' is not NAME=PATH" in bad.stderr
