"""The evaluation networks: the shipped ECG-text CLIP model on real PTB-XL records, its checkpoint format, the
feature-space metrics on its features, and the downstream classifier with its scores against references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sediff_jax.evaluation.clip import clip_loss, load_clip, retrieval_scores, train_clip
from sediff_jax.evaluation.downstream import (
    SUPERCLASSES, auroc, classification_scores, f1_score, multi_hot, train_classifier, training_set, tune_thresholds,
)
from sediff_jax.evaluation.networks import NetworkTrainConfig
from sediff_jax.models.ecg_encoder import ECGEncoderConfig, ECGTextCLIP
from sediff_jax.checkpoints import CheckpointError

TINY = ECGEncoderConfig(channels=(8, 16, 16), embed_dim=16, text_hidden=32)


@pytest.fixture(scope="module")
def test_fold(data_dir):
    from sediff_jax.data.canonical import CanonicalConfig
    from sediff_jax.data.prepare import PrepareConfig, read_entries
    from sediff_jax.evaluation.paired import real_pairs

    canonical = CanonicalConfig(fs=100.0, duration_s=10.0)
    entries = read_entries(PrepareConfig(dataset="ptbxl", out_dir="", source_dir=str(data_dir / "ptb-xl"),
                                         canonical=canonical))
    return real_pairs(entries, canonical, "test")


def test_shipped_clip_ranks_matched_pairs_above_shuffled_on_real_data(test_fold):
    """PTB-XL fold 10 was never seen in training (folds 1-8)."""
    encoder = load_clip()
    assert encoder.fs == 100 and encoder.num_samples == 1000
    scores = retrieval_scores(encoder, test_fold.ecg, test_fold.texts)
    print(scores)
    assert scores["shuffled_pairs"] > 40
    assert scores["matched_cos"] > scores["shuffled_cos"] + 0.15, scores
    assert scores["top5"] > 2 * 5 / scores["distinct_texts"], scores  # twice chance among the distinct reports
    # Per record: the matched text beats the mean shuffled text for most records.
    ecg, text = encoder.ecg_embeddings(test_fold.ecg), encoder.text_embeddings(test_fold.texts)
    sims = ecg @ text.T
    different = np.array([[a != b for b in test_fold.texts] for a in test_fold.texts])
    wins = [sims[i, i] > sims[i, different[i]].mean() for i in range(len(sims)) if different[i].any()]
    assert np.mean(wins) > 0.65, np.mean(wins)  # chance: 0.5; 49 of 66 for the shipped model


def test_feature_metrics_on_clip_features_of_real_records(test_fold):
    from sediff_jax.evaluation.runner import score

    encoder = load_clip()
    same = score(test_fold.ecg, test_fold, encoder, reference=test_fold)[0]["distribution"]
    assert same["fid"] < 1e-6 and same["rfid"] == pytest.approx(1.0) and same["rclip"] == pytest.approx(1.0)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    reference = same["reference"]  # the same records as the reference: the same numbers by another route
    assert reference["fid"] < 1e-6 and reference["rfid"] == pytest.approx(1.0)
    assert reference["clip_real"] == pytest.approx(same["clip_real"], rel=1e-6)
    noise = np.random.default_rng(0).normal(size=test_fold.ecg.shape).astype(np.float32)
    fids = [score(test_fold.ecg + s * noise, test_fold, encoder)[0]["distribution"] for s in (0.05, 0.2, 0.5)]
    print([(round(d["fid"], 3), round(d["rfid"], 3), round(d["rclip"], 3)) for d in fids])
    assert fids[0]["fid"] < fids[1]["fid"] < fids[2]["fid"]
    assert fids[0]["rfid"] > fids[1]["rfid"] > fids[2]["rfid"]
    assert fids[2]["rclip"] < 1.0


def test_vae_reference_scores_the_records_after_the_shipped_vae(test_fold):
    """The VAE reference is the records through the model's VAE, scored as if generated; with the records
    themselves in its place it must give the identity's numbers, in its own column of the report."""
    from sediff_jax.evaluation.runner import distribution_table, score, vae_reconstructions
    from sediff_jax.generation import SHIPPED_CHECKPOINT, load_model

    encoder = load_clip()
    identity = score(test_fold.ecg, test_fold, encoder, reconstructed=test_fold.ecg)[0]["distribution"]
    vae = identity["vae_reference"]
    assert vae["mae_mv"] == 0.0 and vae["fid"] < 1e-6 and vae["rfid"] == pytest.approx(1.0)
    assert vae["precision"] == 1.0 and vae["recall"] == 1.0
    reconstructed = vae_reconstructions(load_model(SHIPPED_CHECKPOINT), test_fold.ecg[:16])
    assert reconstructed.shape == (16, 1000, 12)
    mae = np.mean(np.abs(reconstructed - test_fold.ecg[:16]))
    assert 0.01 < mae < 0.08, mae  # the shipped VAE: 0.047 mV on all of fold 10
    table = distribution_table(score(reconstructed, test_fold.take(range(16)), encoder,
                                     reconstructed=reconstructed)[0]["distribution"])
    assert "| metric | generated | records through the VAE |" in table and "MAE" in table


def test_clip_loss_is_multi_positive_infonce():
    model = ECGTextCLIP(TINY, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    batch = {"ecg": jnp.asarray(rng.normal(size=(6, 200, 12)), jnp.float32),
             "sentence": jnp.asarray(rng.normal(size=(6, 384)), jnp.float32),
             "text_id": jnp.asarray([0, 1, 0, 2, 1, 3], jnp.int32)}
    loss, metrics = clip_loss(model, batch)
    e = np.asarray(model.embed_ecg(batch["ecg"]), np.float64)
    t = np.asarray(model.embed_text(batch["sentence"]), np.float64)
    logits = float(model.logit_scale()) * e @ t.T
    ids = np.asarray(batch["text_id"])
    same = (ids[:, None] == ids[None]).astype(float)
    target = same / same.sum(1, keepdims=True)
    log_rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    log_cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
    reference = (-(target * log_rows).sum(1).mean() - (target * log_cols).sum(0).mean()) / 2
    assert float(loss) == pytest.approx(reference, rel=1e-4)


def test_clip_checkpoint_round_trip_and_bad_files(tmp_path):
    from sediff_jax.text import make_text_encoder

    rng = np.random.default_rng(0)
    ecg = rng.normal(size=(16, 300, 12)).astype(np.float32)
    texts = [f"report {i % 4}" for i in range(16)]
    encoder = train_clip(ecg, texts, 100.0, make_text_encoder("hashing"), TINY,
                         NetworkTrainConfig(batch_size=8, num_steps=3, crop_s=2.0))
    path = encoder.save(tmp_path / "clip.safetensors")
    loaded = load_clip(path)
    assert loaded.id == encoder.id and loaded.num_samples == 300 and loaded.config["num_texts"] == 4
    np.testing.assert_array_equal(loaded.ecg_embeddings(ecg), encoder.ecg_embeddings(ecg))
    np.testing.assert_array_equal(loaded.text_embeddings(texts), encoder.text_embeddings(texts))
    with pytest.raises(ValueError, match="text 1 is empty"):
        encoder.text_embeddings(["sinus rhythm", " "])
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_clip(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_clip(tmp_path / "none.safetensors")


def test_auroc_and_f1_match_their_definitions():
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.3
    s = np.round(rng.random(60) + 0.4 * y, 1)  # many ties
    pairs = [(a, b) for a, b in itertools.product(s[y], s[~y])]
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert auroc(y, s) == pytest.approx(brute, abs=1e-12)
    assert np.isnan(auroc(np.ones(5), np.arange(5)))
    truth, predicted = np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool)
    assert f1_score(truth, predicted) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    labels = multi_hot([("NORM",), ("MI", "STTC"), ()])
    assert labels.tolist() == [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
    probabilities = np.array([[0.9, 0.1], [0.6, 0.7], [0.2, 0.8], [0.7, 0.3]])
    y2 = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], np.float32)
    thresholds = tune_thresholds(y2, probabilities)
    scores = classification_scores(y2, probabilities, thresholds, ("A", "B"))
    assert scores["macro_f1"] == 1.0 and scores["macro_auroc"] == 1.0


def test_protocols_pick_their_training_sets():
    real, synthetic = np.zeros((4, 10, 12)), np.ones((3, 10, 12))
    real_y = multi_hot([("NORM",), ("MI",), ("NORM",), ("CD",)])
    synthetic_y = multi_hot([("NORM",), ("HYP",), ("NORM", "STTC")])
    assert training_set("TRTR", real, real_y, synthetic, synthetic_y)[0] is real
    assert training_set("TSTR", real, real_y, synthetic, synthetic_y)[0] is synthetic
    ecg, labels = training_set("TRTR+S", real, real_y, synthetic, synthetic_y)
    assert len(ecg) == 6 and labels[4:].tolist() == synthetic_y[1:].tolist()  # minority rows only
    with pytest.raises(ValueError, match="unknown"):
        training_set("TRTS", real, real_y, synthetic, synthetic_y)
    assert training_set("TRTR", real, real_y, None, None)[0] is real  # TRTR alone: nothing generated
    for setting in ("TSTR", "TRTR+S"):
        with pytest.raises(ValueError, match="none were given"):
            training_set(setting, real, real_y, None, None)
    assert SUPERCLASSES[0] == "NORM"


def test_classifier_learns_simulated_diagnoses():
    """Normal sinus rhythm vs wide QRS (bundle-branch block) from our simulator, held-out records."""
    from sediff_jax.simulator.presets import preset_params
    from sediff_jax.simulator.solve import SimulatorConfig, simulate_batch

    config = SimulatorConfig(fs=100.0, duration_s=5.0)
    names = ["normal_sinus", "wide_qrs"]
    rng = np.random.default_rng(0)
    params = [preset_params(names[i % 2], hr=float(rng.uniform(55, 95))) for i in range(48)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *params)
    ecg = np.asarray(simulate_batch(batch, jax.random.split(jax.random.key(1), 48), config))
    ecg = ecg + 0.03 * rng.normal(size=ecg.shape).astype(np.float32)
    labels = np.array([[1 - i % 2, i % 2] for i in range(48)], np.float32)
    classifier = train_classifier(ecg[:32], labels[:32], 100.0, TINY,
                                  NetworkTrainConfig(batch_size=16, num_steps=60, crop_s=4.0, learning_rate=3e-3))
    probabilities = classifier.probabilities(ecg[32:])
    assert auroc(labels[32:, 1], probabilities[:, 1]) > 0.95


def test_downstream_cli_trains_the_real_data_classifier_without_generating(repo_root, exported_model_dir, data_dir,
                                                                           tmp_path):
    """--protocols=TRTR is the real-data classifier alone: it writes its scores and generates no synthetic ECG."""
    import json
    import subprocess
    import sys

    out = tmp_path / "downstream"
    result = subprocess.run([sys.executable, "-m", "experiments.downstream", f"--checkpoint={exported_model_dir}",
                             f"--source_dir={data_dir / 'ptb-xl'}", "--protocols=TRTR", "--seeds=0", "--num_steps=3",
                             "--batch_size=8", f"--out={out}"], cwd=repo_root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "generating" not in result.stdout and not (out / "synthetic.npz").exists()
    scores = json.loads((out / "downstream.json").read_text())["results"]
    assert list(scores) == ["TRTR"] and scores["TRTR"]["train_records"] > 300
    assert 0.0 <= scores["TRTR"]["macro_auroc"] <= 1.0 and "| TRTR |" in (out / "report.md").read_text()


def test_downstream_cli_generates_with_the_variety_options_and_keeps_their_ecgs_apart(repo_root, exported_model_dir,
                                                                                       data_dir, tmp_path):
    """--guidance_interval (and the other variety options) reach the synthetic ECGs: a rerun with the interval does
    not reuse the plain run's cached ECGs, and its stamp names the option (the plain stamp is unchanged)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "downstream"

    def run(*extra):
        result = subprocess.run([sys.executable, "-m", "experiments.downstream", f"--checkpoint={exported_model_dir}",
                                 f"--source_dir={data_dir / 'ptb-xl'}", "--protocols=TSTR", "--seeds=0",
                                 "--num_steps=2", "--batch_size=4", "--train_records=6", "--steps=3", f"--out={out}",
                                 *extra], cwd=repo_root, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        with np.load(out / "synthetic.npz") as f:
            return "generating" in result.stdout, str(f["stamp"]), f["ecg"]

    generated, plain_stamp, plain = run()
    model_id = json.loads((out / "downstream.json").read_text())["checkpoint"]["id"]
    assert generated and plain_stamp == f"{model_id}/ddim3/g2/eta1/seed0"  # as before the options: caches stay valid
    generated, stamp, interval = run("--guidance_interval=0.3,5")
    assert generated and stamp == plain_stamp + "/guidance_interval=(0.3, 5.0)"
    assert interval.shape == plain.shape and not np.array_equal(interval, plain)
