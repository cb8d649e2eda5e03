"""Distribution-level metrics on feature vectors (e.g. an ECG encoder's embeddings): Frechet distance, the
relative FID of SE-Diff (ICLR 2026), k-NN precision/recall (Kynkaenniemi et al. 2019), and CLIP scores.

    FID(a, b)  = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)
    rFID       = FID_split / (FID_split + FID(real, generated)), FID_split = FID of two random halves of real
                 (1 when the generated set is the real set; about 0.5 when it is an independent sample of the
                 same size as a half; towards 0 as it degrades)
    rCLIP      = mean cos(generated ECG, text) / mean cos(real ECG, text)
"""

from __future__ import annotations

import numpy as np


def _features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be (n >= 2, dim) features, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} features contain NaN or inf")
    return x


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of the Gaussians fitted to features a: (n, dim) and b: (m, dim). The matrix square root
    is taken by symmetric eigendecomposition (C_a^1/2 C_b C_a^1/2 is symmetric PSD), so no complex round-off."""
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root @ cov_b @ root)
    trace = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(np.sum((a.mean(0) - b.mean(0)) ** 2) + trace, 0.0))


def split_half_fid(real: np.ndarray, seed: int = 0) -> float:
    """FID between two random halves of the real features (the rFID reference)."""
    real = _features(real, "real")
    order = np.random.default_rng(seed).permutation(len(real))
    half = len(real) // 2
    return frechet_distance(real[order[:half]], real[order[half:2 * half]])


def relative_fid(fid_split: float, fid_real_generated: float) -> float:
    """rFID = FID_split / (FID_split + FID(real, generated)), in [0, 1]; higher is better."""
    if fid_split < 0 or fid_real_generated < 0:
        raise ValueError(f"FIDs must be >= 0, got {fid_split}, {fid_real_generated}")
    total = fid_split + fid_real_generated
    return float(fid_split / total) if total > 0 else 1.0


def _pairwise_distances(x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> np.ndarray:
    out = np.empty((len(x), len(y)))
    y2 = (y ** 2).sum(1)
    for i in range(0, len(x), chunk):
        xi = x[i:i + chunk]
        out[i:i + chunk] = np.sqrt(np.clip((xi ** 2).sum(1)[:, None] + y2[None] - 2 * xi @ y.T, 0, None))
    return out


def knn_precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall): the fraction of generated samples inside the real manifold (the union of balls
    reaching each real sample's k-th nearest real neighbour), and of real samples inside the generated one."""
    real, generated = _features(real, "real"), _features(generated, "generated")
    if min(len(real), len(generated)) <= k:
        raise ValueError(f"k = {k} needs more than k samples in each set ({len(real)} real, {len(generated)} gen)")

    def radii(x):
        d = _pairwise_distances(x, x)
        return np.partition(d, k, axis=1)[:, k]  # column 0 is the sample itself

    cross = _pairwise_distances(generated, real)
    precision = np.mean((cross <= radii(real)[None]).any(axis=1))
    recall = np.mean((cross.T <= radii(generated)[None]).any(axis=1))
    return float(precision), float(recall)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired embeddings must have the same (n, dim) shape, got {a.shape} and {b.shape}")
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(norm, 1e-12)


def clip_score(ecg_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """Mean cosine similarity of paired ECG and text embeddings (n, dim)."""
    return float(_cosine(ecg_embeddings, text_embeddings).mean())


def relative_clip(generated_embeddings: np.ndarray, real_embeddings: np.ndarray,
                  text_embeddings: np.ndarray) -> float:
    """rCLIP = mean cos(generated, text) / mean cos(real, text), rows paired by text."""
    return clip_score(generated_embeddings, text_embeddings) / clip_score(real_embeddings, text_embeddings)
