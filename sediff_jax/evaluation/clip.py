"""The ECG-text CLIP model of the evaluation: training, the shipped checkpoint, and the encoder that gives the
FID / precision-recall features and the CLIP-score embeddings.

Training is CLIP's symmetric InfoNCE, with one change for report text: records whose texts are identical (many
"sinus rhythm. normal ECG.") are all positives of each other, the target of each row spread evenly over them,
instead of false negatives. The text tower is an MLP on the frozen sentence vectors of the project's text encoder
(MiniLM by default), so the CLIP space is tied to the same text model SE-Diff conditions on.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sediff_jax.assets import shipped_path
from sediff_jax.checkpoints.weights import flatten_params, weights_id
from sediff_jax.evaluation.networks import NetworkTrainConfig, batched_apply, load_network, save_network, train_network
from sediff_jax.models.ecg_encoder import ECGEncoderConfig, ECGTextCLIP
from sediff_jax.optim import split_params
from sediff_jax.text import TextCache, encoder_from_id

KIND = "sediff_jax/ecg_text_clip"
SHIPPED_CLIP = shipped_path("ecg_clip_ptbxl100.safetensors")


def clip_loss(model: ECGTextCLIP, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric multi-positive InfoNCE. batch: ecg (b, time, leads) mV, sentence (b, text_dim),
    text_id (b,) int32 (equal ids = identical texts = positives)."""
    ecg_emb, text_emb = model.embed_ecg(batch["ecg"]), model.embed_text(batch["sentence"])
    logits = model.logit_scale() * ecg_emb @ text_emb.T
    same = (batch["text_id"][:, None] == batch["text_id"][None, :]).astype(jnp.float32)
    targets = same / same.sum(axis=1, keepdims=True)  # symmetric, so it serves both directions
    loss_e2t = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1).mean()
    loss_t2e = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=0), axis=0).mean()
    top1 = jnp.take_along_axis(same, jnp.argmax(logits, axis=1)[:, None], axis=1).mean()
    return (loss_e2t + loss_t2e) / 2, {"top1": top1, "scale": model.logit_scale()}


class ClipEncoder:
    """A trained ECG-text CLIP model. fs, num_samples: the ECGs it was trained on (Hz, samples).  id: weights."""

    def __init__(self, graphdef: nnx.GraphDef, params: Any, config: dict[str, Any], weights: str,
                 source: str = "", text_encoder=None):
        self.graphdef, self.params, self.config, self.id, self.source = graphdef, params, config, weights, source
        self.fs, self.num_samples = float(config["fs"]), int(config["num_samples"])
        self._text_encoder = text_encoder
        model = nnx.merge(graphdef, params)
        self._features = jax.jit(model.features)
        self._feature_tokens = jax.jit(model.feature_tokens)
        self._embed_ecg = jax.jit(model.embed_ecg)
        self._embed_text = jax.jit(model.embed_text)

    @property
    def text_encoder(self):
        if self._text_encoder is None:

            self._text_encoder = encoder_from_id(self.config["text_encoder"])
        return self._text_encoder

    def ecg_features(self, ecg: np.ndarray) -> np.ndarray:
        """(n, time, 12) mV -> (n, feature_dim) float32: pooled ResNet features (FID, precision/recall)."""
        return batched_apply(self._features, ecg)

    def ecg_feature_tokens(self, ecg: np.ndarray) -> np.ndarray:
        """(n, time, 12) mV -> (n, ceil(time / 16), feature_dim) float32: the same features along time, before
        the average (the alignment targets of `diffusion.repa`)."""
        return batched_apply(self._feature_tokens, ecg)

    def ecg_embeddings(self, ecg: np.ndarray) -> np.ndarray:
        """(n, time, 12) mV -> (n, embed_dim) unit vectors in the CLIP space."""
        return batched_apply(self._embed_ecg, ecg)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """texts (n,) -> (n, embed_dim) unit vectors in the CLIP space."""
        pooled = sentence_vectors(self.text_encoder, texts)
        return np.asarray(self._embed_text(jnp.asarray(pooled)))

    def save(self, path: str | os.PathLike) -> Path:
        return save_network(path, self.params, self.config)


def sentence_vectors(text_encoder, texts: Sequence[str]) -> np.ndarray:
    """(n, dim) pooled sentence vectors, each distinct text encoded once."""
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} is empty; CLIP embeds report text")
    return np.asarray(TextCache(text_encoder).lookup(texts).pooled, np.float32)


def train_clip(ecg: np.ndarray, texts: Sequence[str], fs: float, text_encoder,
               model_config: ECGEncoderConfig = ECGEncoderConfig(), train_config: NetworkTrainConfig = NetworkTrainConfig(),
               log: Callable[[int, dict[str, float]], None] | None = None, **provenance) -> ClipEncoder:
    """Train the ECG-text CLIP model on paired real records. ecg: (n, time, 12) mV; texts: (n,) reports."""
    ecg = np.asarray(ecg, np.float32)
    if len(ecg) != len(texts):
        raise ValueError(f"{len(ecg)} ECGs but {len(texts)} texts")
    if not np.isfinite(ecg).all():
        raise ValueError("training ECGs contain NaN or inf")
    sentence = sentence_vectors(text_encoder, texts)
    ids = {t: i for i, t in enumerate(sorted(set(texts)))}
    model_config = dataclasses.replace(model_config, num_leads=ecg.shape[2], text_dim=sentence.shape[1])
    model = ECGTextCLIP(model_config, rngs=nnx.Rngs(train_config.seed))
    arrays = {"ecg": ecg, "sentence": sentence, "text_id": np.array([ids[t] for t in texts], np.int32)}
    params = train_network(model, clip_loss, arrays, fs, train_config, log)
    config = {"kind": KIND, "model": dataclasses.asdict(model_config), "fs": float(fs),
              "num_samples": int(ecg.shape[1]), "text_encoder": text_encoder.id,
              "training": dataclasses.asdict(train_config), "num_records": len(ecg), "num_texts": len(ids),
              **provenance}
    graphdef = split_params(model)[0]
    return ClipEncoder(graphdef, params, config, weights_id(flatten_params(params, "params")),
                       text_encoder=text_encoder)


def _build(config: dict[str, Any]) -> ECGTextCLIP:
    model = config["model"]
    return ECGTextCLIP(ECGEncoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}),
                       rngs=nnx.Rngs(0))


def load_clip(path: str | os.PathLike | None = None) -> ClipEncoder:
    """The CLIP model saved at `path` (default: the shipped PTB-XL 100 Hz one)."""
    path = Path(path) if path is not None else SHIPPED_CLIP
    graphdef, params, config, weights = load_network(path, _build, KIND)
    return ClipEncoder(graphdef, params, config, weights, str(path))


def retrieval_scores(encoder: ClipEncoder, ecg: np.ndarray, texts: Sequence[str], seed: int = 0) -> dict[str, float]:
    """How well the CLIP space pairs real ECGs with their reports: mean cosine of matched pairs, of shuffled
    pairs (a permutation that moves every text to a record with a different text, where possible), and
    ECG -> text top-1 / top-5 accuracy among the distinct texts (any identical text counts)."""
    texts = list(texts)
    ecg_emb, text_emb = encoder.ecg_embeddings(ecg), encoder.text_embeddings(texts)
    matched = np.sum(ecg_emb * text_emb, axis=1)
    order = np.random.default_rng(seed).permutation(len(texts))
    shuffled = np.sum(ecg_emb * text_emb[order], axis=1)
    different = np.array([texts[i] != texts[j] for i, j in enumerate(order)])
    unique = sorted(set(texts))
    unique_emb = encoder.text_embeddings(unique)
    ranks = np.argsort(-(ecg_emb @ unique_emb.T), axis=1)
    row = {t: i for i, t in enumerate(unique)}
    truth = np.array([row[t] for t in texts])
    return {"matched_cos": float(matched.mean()), "shuffled_cos": float(shuffled[different].mean()),
            "shuffled_pairs": int(different.sum()), "top1": float(np.mean(ranks[:, 0] == truth)),
            "top5": float(np.mean((ranks[:, :5] == truth[:, None]).any(axis=1))), "distinct_texts": len(unique)}
