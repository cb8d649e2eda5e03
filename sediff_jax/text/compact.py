"""A compact copy of the MiniLM text encoder, for a machine that cannot be sent the full weights (a lent
accelerator takes 64 MiB per call, the repository included): the word embeddings cut to the tokens of the texts it
will encode, and every weight matrix rounded to int8 with a float16 scale per 64 entries of a row (biases and
LayerNorms stay float32). 90 MB of float32 weights become ~12 MB.

`text.encoders.write_compact_minilm(texts, out_dir)` makes it and measures it: the largest token-state and pooled-vector
difference from the full encoder on those texts, written to its `compact.json`. `MiniLMEncoder(model_dir=out_dir)`
loads it (dequantised to float32), maps token ids onto the kept rows (a token outside them becomes [UNK]) and
reports the full encoder's id, since its encodings of those texts are the full encoder's to within that error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

COMPACT_FILE = "compact.json"
WEIGHTS_FILE = "model.compact.safetensors"
VOCAB_KEY = "compact.vocab_ids"
SCALE_SUFFIX = "::scale"
GROUP = 64  # entries of a row that share one int8 scale
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def quantize_rows(matrix: np.ndarray, group: int = GROUP) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values (rows, cols), float16 scales (rows, cols / group)) of a 2-D float matrix, symmetric per group
    of `group` consecutive entries of a row (the whole row when cols is not a multiple): the entries ~ values *
    their group's scale."""
    matrix = np.asarray(matrix, np.float32)
    rows, cols = matrix.shape
    group = group if cols % group == 0 else cols
    grouped = matrix.reshape(rows, cols // group, group)
    scale = np.abs(grouped).max(axis=2) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float16)
    values = np.clip(np.round(grouped / scale.astype(np.float32)[..., None]), -127, 127).astype(np.int8)
    return values.reshape(rows, cols), scale


def dequantize_rows(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 matrix of `quantize_rows`' values and scales."""
    rows, cols = values.shape
    grouped = values.reshape(rows, scale.shape[1], cols // scale.shape[1]).astype(np.float32)
    return (grouped * scale.astype(np.float32)[..., None]).reshape(rows, cols)


def is_compact(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / COMPACT_FILE).is_file()


def read_compact(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """(float32 weights under the released tensor names, kept token ids (vocab,) int32, compact.json) of a compact
    copy; ValueError names a missing or unreadable file."""
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    path = model_dir / WEIGHTS_FILE
    try:
        info = json.loads((model_dir / COMPACT_FILE).read_text())
        stored = load_file(str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{model_dir}: not a readable compact MiniLM ({e})") from None
    except Exception as e:  # noqa: BLE001 (safetensors raises its own types for a corrupt file)
        raise ValueError(f"{path}: cannot read the weights ({e})") from None
    weights = {}
    for name, value in stored.items():
        if name == VOCAB_KEY or name.endswith(SCALE_SUFFIX):
            continue
        scale = stored.get(name + SCALE_SUFFIX)
        weights[name] = dequantize_rows(value, scale) if scale is not None else value.astype(np.float32)
    return weights, stored[VOCAB_KEY].astype(np.int32), info


def token_remap(vocab_ids: np.ndarray, vocab_size: int, unk_id: int) -> np.ndarray:
    """(vocab_size,) int32: a released token id -> its row in the compact embeddings ([UNK]'s for one cut)."""
    remap = np.full(vocab_size, int(np.searchsorted(vocab_ids, unk_id)), np.int32)
    remap[vocab_ids] = np.arange(len(vocab_ids), dtype=np.int32)
    return remap
