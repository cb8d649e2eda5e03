"""Text encoders: report text -> token embeddings + mask (for cross-attention) and a pooled sentence vector.

* `MiniLMEncoder` (default): all-MiniLM-L6-v2 (`sediff_jax.text.minilm`) with its WordPiece tokenizer
  (`tokenizers`, `tokenizer.json` from the weights package), offline.
* `HashingEncoder`: no weights; every lower-cased word maps to a fixed pseudo-random unit vector (BLAKE2 of the
  word seeds it). Only a fallback that a user chooses explicitly: `make_text_encoder` never substitutes it.

`encode_cached` encodes the distinct texts of a dataset once and keeps them in an NPZ next to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.io import atomic_path
from sediff_jax.io.outputs import replace_directory
from sediff_jax.text import compact
from sediff_jax.text.compact import WEIGHTS_FILE as COMPACT_WEIGHTS, is_compact, read_compact, token_remap
from sediff_jax.text.minilm import default_model_dir, load_minilm, mean_pool

ENCODERS = ("minilm", "hashing")


@dataclasses.dataclass(frozen=True)
class TextEncoding:
    """tokens: (batch, length, dim) float32; mask: (batch, length) bool, True for real tokens;
    pooled: (batch, dim) float32, L2-normalised sentence vectors."""

    tokens: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray

    def take(self, index: np.ndarray) -> "TextEncoding":
        return TextEncoding(self.tokens[index], self.mask[index], self.pooled[index])


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts, not one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str")
    return texts


class MiniLMEncoder:
    """all-MiniLM-L6-v2: tokens (batch, max_length, 384) and pooled vectors; jitted, `batch_size` per call."""

    name = "minilm"
    dim = 384

    def __init__(self, model_dir: str | os.PathLike | None = None, max_length: int = 64, batch_size: int = 64):
        from tokenizers import Tokenizer  # (installed with the MiniLM weights; the hashing encoder needs neither)

        if not 2 <= max_length <= 512:
            raise ValueError(f"max_length={max_length} must be in [2, 512] tokens")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        compact = is_compact(self.model_dir)  # the int8 copy with a cut vocabulary (`text.compact`)
        weights = COMPACT_WEIGHTS if compact else "model.safetensors"
        for name in (weights, "tokenizer.json", "config.json"):
            if not (self.model_dir / name).exists():
                raise FileNotFoundError(f"{self.model_dir / name}: MiniLM weights not found (need {weights}, "
                                        "tokenizer.json and config.json)")
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        self.model = load_minilm(self.model_dir)
        from flax import nnx

        graphdef, state = nnx.split(self.model)

        @jax.jit
        def forward(state, ids, mask):
            hidden = nnx.merge(graphdef, state)(ids, mask)
            return hidden, mean_pool(hidden, mask)

        self._state, self._forward = state, forward
        self._remap = None
        if compact:  # token ids onto the kept rows; the id of the encoder it was made from
            _, vocab_ids, info = read_compact(self.model_dir)
            self._remap = token_remap(vocab_ids, self.tokenizer.get_vocab_size(), self.tokenizer.token_to_id("[UNK]"))
            self.id = f"{info['source']}/len{max_length}"
        else:
            digest = hashlib.sha256((self.model_dir / "config.json").read_bytes())
            digest.update(str((self.model_dir / "model.safetensors").stat().st_size).encode())
            self.id = f"minilm-l6-v2/{digest.hexdigest()[:12]}/len{max_length}"

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids (batch, max_length) int32, mask bool); longer texts are cut, keeping the final [SEP]."""
        texts = _check_texts(texts)
        ids = np.zeros((len(texts), self.max_length), np.int32)
        mask = np.zeros((len(texts), self.max_length), bool)
        for i, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            tokens = encoding.ids
            if len(tokens) > self.max_length:
                tokens = tokens[: self.max_length - 1] + [self.sep_id]
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = True
        if self._remap is not None:
            ids = self._remap[ids]
        return ids, mask

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        ids, mask = self.tokenize(texts)
        tokens, pooled = [], []
        for start in range(0, len(ids), self.batch_size):
            chunk_ids, chunk_mask = ids[start : start + self.batch_size], mask[start : start + self.batch_size]
            pad = self.batch_size - len(chunk_ids)  # one compiled shape
            h, p = self._forward(self._state, jnp.asarray(np.pad(chunk_ids, ((0, pad), (0, 0)))),
                                 jnp.asarray(np.pad(chunk_mask, ((0, pad), (0, 0)))))
            tokens.append(np.asarray(h)[: len(chunk_ids)])
            pooled.append(np.asarray(p)[: len(chunk_ids)])
        if not tokens:
            return TextEncoding(np.zeros((0, self.max_length, self.dim), np.float32), mask,
                                np.zeros((0, self.dim), np.float32))
        tokens = np.concatenate(tokens) * mask[..., None]
        return TextEncoding(tokens.astype(np.float32), mask, np.concatenate(pooled).astype(np.float32))


class HashingEncoder:
    """Weight-free: each word's vector is a fixed pseudo-random unit vector; pooled = normalised mean."""

    name = "hashing"

    def __init__(self, dim: int = 384, max_length: int = 64):
        if dim < 8 or max_length < 1:
            raise ValueError(f"dim={dim} must be >= 8 and max_length={max_length} >= 1")
        self.dim, self.max_length = dim, max_length
        self.id = f"hashing/dim{dim}/len{max_length}"
        self._cache: dict[str, np.ndarray] = {}

    def _word_vector(self, word: str) -> np.ndarray:
        if word not in self._cache:
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            self._cache[word] = v / np.linalg.norm(v)
        return self._cache[word]

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        texts = _check_texts(texts)
        tokens = np.zeros((len(texts), self.max_length, self.dim), np.float32)
        mask = np.zeros((len(texts), self.max_length), bool)
        pooled = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())[: self.max_length]
            for j, word in enumerate(words):
                tokens[i, j] = self._word_vector(word)
            mask[i, : len(words)] = True
            if words:
                mean = tokens[i, : len(words)].mean(0)
                pooled[i] = mean / max(np.linalg.norm(mean), 1e-12)
        return TextEncoding(tokens, mask, pooled)


class PrecomputedEncoder:
    """Encodings read from a `TextCache` NPZ (`save_encodings`), for a machine without the encoder's weights (an
    offline accelerator): `encode` returns the stored encodings of known texts, and a text it does not hold is
    an error naming the file, never another encoder's vectors. `id`, `dim` and `max_length` are the original
    encoder's, so a model checks it as it would the encoder itself."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with np.load(self.path) as f:
                self.id = str(f["encoder_id"])
                self._encoding = TextEncoding(f["tokens"].astype(np.float32), f["mask"], f["pooled"])
                self._index = {t: i for i, t in enumerate(f["texts"].tolist())}
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path}: text encodings not found") from None
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{self.path}: not a text-encoding file ({e})") from None
        self.name = self.id.split("-")[0].split("/")[0]
        self.max_length, self.dim = self._encoding.tokens.shape[1:]

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        texts = _check_texts(texts)
        missing = sorted({t for t in texts if t not in self._index})
        if missing:
            raise ValueError(f"{self.path}: no encoding of {len(missing)} text(s), e.g. {missing[0]!r}; encode them "
                             "where the encoder's weights are (save_encodings)")
        return self._encoding.take(np.array([self._index[t] for t in texts], np.int64))


def save_encodings(encoder, texts: Sequence[str], path: str | os.PathLike) -> None:
    """Encode the distinct `texts` with `encoder` into `path` (NPZ, atomically) for a `PrecomputedEncoder`."""
    cache = TextCache(encoder, path)
    cache.lookup(list(dict.fromkeys(_check_texts(texts))))
    cache.save()


def make_text_encoder(name: str = "minilm", **kwargs):
    """The encoder `name` ('minilm' or 'hashing'); a missing MiniLM is an error, never a silent fallback."""
    if name == "minilm":
        return MiniLMEncoder(**kwargs)
    if name == "hashing":
        return HashingEncoder(**kwargs)
    raise ValueError(f"text encoder {name!r} is unknown; expected one of {ENCODERS}")


def encoder_from_id(encoder_id: str):
    """The text encoder whose `id` is `encoder_id` (name, weights digest, length); ValueError when this machine's
    encoder of that name has other weights or the id is unreadable."""
    name = encoder_id.split("-")[0].split("/")[0]
    try:
        kwargs = {"max_length": int(encoder_id.rsplit("/len", 1)[1])}
        if name == "hashing":
            kwargs["dim"] = int(encoder_id.split("/dim")[1].split("/")[0])
    except (IndexError, ValueError):
        raise ValueError(f"unreadable text encoder id {encoder_id!r}") from None
    encoder = make_text_encoder(name, **kwargs)
    if encoder.id != encoder_id:
        raise ValueError(f"trained with text encoder {encoder_id}, this machine has {encoder.id} (other weights)")
    return encoder


def _arrays(encoding: TextEncoding) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return encoding.tokens, encoding.mask, encoding.pooled


class TextCache:
    """Encodings of distinct texts, computed on first use and kept in memory; `save()` writes them to
    `cache_path` (NPZ, atomically), which a later TextCache of the same encoder reads back (another encoder's
    or an unreadable file is ignored and rebuilt). `tokens` are stored as float16 (half the memory)."""

    def __init__(self, encoder, cache_path: str | os.PathLike | None = None):
        self.encoder, self.cache_path = encoder, (Path(cache_path) if cache_path is not None else None)
        self._index: dict[str, int] = {}
        self._store: TextEncoding | None = None  # rows [0, len) in use; grows by doubling, so appends are O(1)
        self._dirty = False
        if self.cache_path is not None and self.cache_path.exists():
            try:
                with np.load(self.cache_path) as f:
                    if str(f["encoder_id"]) == encoder.id:
                        self._store = TextEncoding(f["tokens"], f["mask"], f["pooled"])
                        self._index = {t: i for i, t in enumerate(f["texts"].tolist())}
            except (OSError, KeyError, ValueError):
                self._index, self._store = {}, None

    def __len__(self) -> int:
        return len(self._index)

    def _append(self, fresh: TextEncoding) -> None:
        used, extra = len(self._index), fresh.tokens.shape[0]
        store = self._store
        if store is None or store.tokens.shape[0] < used + extra:
            capacity = max(used + extra, 2 * (0 if store is None else store.tokens.shape[0]), 64)
            grown = TextEncoding(np.zeros((capacity, *fresh.tokens.shape[1:]), fresh.tokens.dtype),
                                 np.zeros((capacity, *fresh.mask.shape[1:]), fresh.mask.dtype),
                                 np.zeros((capacity, *fresh.pooled.shape[1:]), fresh.pooled.dtype))
            if store is not None:
                for new, old in zip(_arrays(grown), _arrays(store)):
                    new[:used] = old[:used]
            store = self._store = grown
        for new, part in zip(_arrays(store), _arrays(fresh)):
            new[used:used + extra] = part

    def _table(self) -> TextEncoding:
        used = len(self._index)
        return TextEncoding(*(x[:used] for x in _arrays(self._store)))

    def add(self, texts: Sequence[str], chunk: int = 512) -> int:
        """Encode the texts not cached yet (in chunks of `chunk`), without returning encodings; returns how many
        were new. Training calls it once for every report it will meet, so no step waits for the encoder."""
        missing = sorted({t for t in _check_texts(texts) if t not in self._index})
        start_time = time.perf_counter()
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            fresh = self.encoder.encode(part)
            self._append(TextEncoding(fresh.tokens.astype(np.float16), fresh.mask, fresh.pooled))
            self._index.update({t: len(self._index) + i for i, t in enumerate(part)})
            self._dirty = True
            if len(missing) > chunk:  # (a long encode, e.g. a new experience corpus, says how far it is)
                done, seconds = start + len(part), time.perf_counter() - start_time
                logging.info("encoded %d of %d new texts for %s (%.0f s, about %.0f s left)", done, len(missing),
                             self.cache_path, seconds, seconds / done * (len(missing) - done))
        return len(missing)

    def lookup(self, texts: Sequence[str]) -> TextEncoding:
        """Encodings of `texts` (any order, repeats allowed); tokens float32."""
        texts = _check_texts(texts)
        self.add(texts)
        if not texts:
            return self.encoder.encode([])
        table = self._table()
        rows = np.array([self._index[t] for t in texts], np.int64)
        return TextEncoding(table.tokens[rows].astype(np.float32), table.mask[rows], table.pooled[rows])

    def save(self) -> None:
        """Write the cache if anything was added since it was read or last saved."""

        if self.cache_path is None or not self._dirty or not self._index:
            return
        table = self._table()
        with atomic_path(self.cache_path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, encoder_id=np.array(self.encoder.id), texts=np.array(list(self._index), dtype=str),
                         tokens=table.tokens, mask=table.mask, pooled=table.pooled)
        self._dirty = False


def encode_cached(encoder, texts: Sequence[str], cache_path: str | os.PathLike) -> TextEncoding:
    """Encode `texts` (any order, repeats allowed) once per distinct text, reusing `cache_path` (NPZ) when it
    was written by the same encoder; the cache is (re)written atomically with every distinct text seen."""
    cache = TextCache(encoder, cache_path)
    encoding = cache.lookup(texts)
    cache.save()
    return encoding


def write_compact_minilm(texts: Sequence[str], out_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None,
                         max_length: int = 128, check_texts: int = 256) -> dict:
    """Write the compact copy (`text.compact`) of the MiniLM at `model_dir` (default: the installed weights) for `texts` into
    `out_dir` (replaced), and measure it on up to `check_texts` of them at `max_length` tokens. Returns its
    compact.json: source (the full encoder's id without its length), vocab (rows kept), bytes, and the largest
    token-state difference (`max_abs_token_error`, and `relative_rms_token_error` over real tokens) and smallest
    pooled cosine (`min_pooled_cosine`)."""
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    source_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    texts = list(dict.fromkeys(str(t) for t in texts if str(t).strip()))
    if not texts:
        raise ValueError("no texts to keep the vocabulary of")
    tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
    kept = {tokenizer.token_to_id(t) for t in compact.SPECIAL_TOKENS}
    for encoding in tokenizer.encode_batch(texts):
        kept.update(encoding.ids)
    vocab_ids = np.asarray(sorted(kept), np.int32)
    released = load_file(str(source_dir / "model.safetensors"))
    stored: dict[str, np.ndarray] = {compact.VOCAB_KEY: vocab_ids}
    for name, value in released.items():
        value = np.asarray(value, np.float32)
        if name == "embeddings.word_embeddings.weight":
            value = value[vocab_ids]
        if value.ndim == 2:
            stored[name], stored[name + compact.SCALE_SUFFIX] = compact.quantize_rows(value)
        else:
            stored[name] = value
    full = MiniLMEncoder(source_dir, max_length=max_length)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not is_compact(out_dir):
        raise ValueError(f"{out_dir}: not empty and not a compact MiniLM; name a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        save_file(stored, str(tmp / compact.WEIGHTS_FILE))
        for name in ("config.json", "tokenizer.json"):
            shutil.copyfile(source_dir / name, tmp / name)
        info = {"source": full.id.rsplit("/len", 1)[0], "vocab": int(len(vocab_ids)), "texts": len(texts),
                "quantization": f"int8, a float16 scale per {compact.GROUP} entries of a row; biases and LayerNorms float32"}
        (tmp / compact.COMPACT_FILE).write_text(json.dumps(info))
        sample = texts[:: max(1, len(texts) // check_texts)][:check_texts]
        a, b = full.encode(sample), MiniLMEncoder(tmp, max_length=max_length).encode(sample)
        cosine = np.sum(a.pooled * b.pooled, axis=1) / (np.linalg.norm(a.pooled, axis=1) * np.linalg.norm(b.pooled, axis=1))
        real = a.mask
        rms = lambda x: float(np.sqrt(np.mean(np.square(x[real]))))  # noqa: E731 (over real tokens)
        info.update(checked_texts=len(sample), max_abs_token_error=float(np.abs(a.tokens - b.tokens).max()),
                    relative_rms_token_error=rms(a.tokens - b.tokens) / rms(a.tokens),
                    max_abs_token_value=float(np.abs(a.tokens).max()), min_pooled_cosine=float(cosine.min()),
                    bytes=int(sum(f.stat().st_size for f in tmp.iterdir())) + len(json.dumps(info)))
        with atomic_path(tmp / compact.COMPACT_FILE) as path:
            path.write_text(json.dumps(info, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, out_dir)
    return info
