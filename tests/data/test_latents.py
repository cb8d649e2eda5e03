"""The latent cache's storage (sediff_jax.data.latents) with a stand-in encoder: what goes in comes out in the
dataset's order, the loader over it resumes exactly, bad caches are refused by name, a failed build leaves
nothing. The VAE encoding and stage 2 from a cache are tested in tests/training/test_train.py."""

import dataclasses
import json
import os

import numpy as np
import pytest

from sediff_jax.data import latents
from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.data.loader import BatchLoader
from sediff_jax.data.prepare import PrepareConfig, prepare
from sediff_jax.training.sources import eval_loader

SPLITS = ("train", "validation", "test")


def stand_in_encode(ecg):
    """(b, 1000, 12) -> (b, 125, 4): means over 8 samples of leads I-aVR (a deterministic stand-in for the VAE)."""
    ecg = np.asarray(ecg)
    return ecg[:, :, :4].reshape(ecg.shape[0], -1, 8, 4).mean(axis=2) * 3.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from sediff_jax.data.builder import open_split

    out = tmp_path_factory.mktemp("prepared")
    report = prepare(PrepareConfig(dataset="synthetic", out_dir=str(out), canonical=CanonicalConfig(fs=100.0),
                                   num_synthetic=30))
    return {split: open_split(report.path, split) for split in SPLITS}


def _info(prepared, dtype="float32", **changes):
    info = latents.LatentCacheInfo(vae_id="0123456789ab", vae_dir="/vae", dataset="/prepared", fs=100.0,
                                   num_samples=1000, latent_shape=(125, 4), downsampling=8, dtype=dtype,
                                   splits={s: len(prepared[s]) for s in SPLITS})
    return dataclasses.replace(info, **changes)


def _write(prepared, directory, dtype="float32", encode=stand_in_encode, batch_size=7):
    return latents.write_cache(str(directory), lambda split: eval_loader(prepared[split], batch_size), encode,
                               _info(prepared, dtype))


@pytest.fixture(scope="module")
def cache(prepared, tmp_path_factory):
    directory = tmp_path_factory.mktemp("caches") / "float32"
    _write(prepared, directory)
    return str(directory)


def test_every_record_is_stored_in_dataset_order_with_its_fields(prepared, cache):
    info = latents.read_info(cache)
    assert info.splits == {s: len(prepared[s]) for s in SPLITS} and info.seconds >= 0
    for split in SPLITS:
        source = latents.LatentSource(cache, split)
        assert len(source) == len(prepared[split])
        for i in range(len(source)):
            original, cached = prepared[split][i], source[i]
            np.testing.assert_array_equal(cached["latent_mean"], stand_in_encode(original["ecg"][None])[0])
            np.testing.assert_array_equal(cached["r_peaks"], original["r_peaks"])
            for name in ("hr_bpm", "age", "sex"):
                assert cached[name] == original[name]
            np.testing.assert_array_equal(cached["measurements"], original["measurements"])
            for name in latents.ID_TEXT_FIELDS:
                value = original[name]
                assert cached[name] == (value.decode() if isinstance(value, bytes) else value)


def test_a_loader_over_the_cache_gives_the_same_batches_as_over_the_ecgs_and_resumes(prepared, cache):
    source = latents.LatentSource(cache, "train")
    over_ecgs = BatchLoader(prepared["train"], 4, seed=3, process_index=0, process_count=1, prefetch=0)
    over_latents = BatchLoader(source, 4, seed=3, process_index=0, process_count=1, prefetch=0)
    assert over_latents.batches_per_epoch < 9
    for _ in range(9):  # crosses an epoch boundary
        a, b = next(over_ecgs), next(over_latents)
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["r_peaks"], b["r_peaks"])
        np.testing.assert_array_equal(b["latent_mean"], stand_in_encode(a["ecg"]))
        assert list(a["record_id"]) == list(b["record_id"]) and list(a["text"]) == list(b["text"])
        assert "ecg" not in b and b["latent_mean"].dtype == np.float32
    state = over_latents.state()
    expected = next(over_latents)
    resumed = BatchLoader(source, 4, seed=3, process_index=0, process_count=1, prefetch=0, state=state)
    np.testing.assert_array_equal(next(resumed)["latent_mean"], expected["latent_mean"])


def test_float16_storage_halves_the_size_within_float16_rounding(prepared, cache, tmp_path):
    _write(prepared, tmp_path / "half", dtype="float16")
    full, half = latents.LatentSource(cache, "train"), latents.LatentSource(str(tmp_path / "half"), "train")
    assert half.latent_mean.dtype == np.float16 and half[0]["latent_mean"].dtype == np.float32
    np.testing.assert_allclose(half.latent_mean.astype(np.float32), full.latent_mean, rtol=1e-3, atol=1e-4)
    assert (os.path.getsize(tmp_path / "half" / "train.npz")
            < 0.7 * os.path.getsize(os.path.join(cache, "train.npz")))


def test_a_failed_build_leaves_nothing_and_an_existing_cache_is_kept(prepared, cache, tmp_path):
    calls = []

    def failing(ecg):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("killed")
        return stand_in_encode(ecg)

    with pytest.raises(RuntimeError, match="killed"):
        _write(prepared, tmp_path / "broken", encode=failing)
    assert os.listdir(tmp_path) == []  # neither the cache nor its temporary directory
    with pytest.raises(latents.LatentCacheError, match="exists"):
        _write(prepared, cache)
    assert latents.LatentSource(cache, "train")[0]["latent_mean"].shape == (125, 4)


def test_a_non_finite_latent_is_refused_with_its_record(prepared, tmp_path):
    def poisoned(ecg):
        out = stand_in_encode(ecg)
        out[1, 5, 2] = np.nan
        return out

    first_id = prepared["train"][1]["record_id"]
    first_id = first_id.decode() if isinstance(first_id, bytes) else first_id
    with pytest.raises(latents.LatentCacheError, match=f"record {first_id}.*not finite"):
        _write(prepared, tmp_path / "nan", encode=poisoned)
    assert not (tmp_path / "nan").exists()


def test_caches_of_another_vae_or_dataset_and_damaged_caches_are_refused(prepared, cache, tmp_path):
    info = latents.read_info(cache)
    sizes = {s: len(prepared[s]) for s in SPLITS}
    latents.check_matches(info, cache, vae_id=info.vae_id, splits=sizes)
    with pytest.raises(latents.LatentCacheError, match="weights 0123456789ab.*weights ffffffffffff"):
        latents.check_matches(info, cache, vae_id="ffffffffffff", splits=sizes)
    with pytest.raises(latents.LatentCacheError, match=f"split 'train' has {sizes['train']} records in the cache, 99"):
        latents.check_matches(info, cache, vae_id=info.vae_id, splits=dict(sizes, train=99))
    with pytest.raises(latents.LatentCacheError, match="no split 'extra' in the latent cache"):
        latents.check_matches(info, cache, vae_id=info.vae_id, splits=dict(sizes, extra=3))
    with pytest.raises(latents.LatentCacheError, match="no latent cache here"):
        latents.read_info(str(tmp_path))
    with pytest.raises(latents.LatentCacheError, match="no split 'nope'"):
        latents.LatentSource(cache, "nope")

    damaged = tmp_path / "damaged"
    os.makedirs(damaged)
    manifest = json.loads(open(os.path.join(cache, latents.MANIFEST)).read())
    (damaged / latents.MANIFEST).write_text(json.dumps(dict(manifest, format="something-else")))
    with pytest.raises(latents.LatentCacheError, match="format 'something-else'"):
        latents.read_info(str(damaged))
    (damaged / latents.MANIFEST).write_text(json.dumps(manifest))
    (damaged / "train.npz").write_bytes(open(os.path.join(cache, "train.npz"), "rb").read()[:1000])
    with pytest.raises(latents.LatentCacheError, match="train.npz: unreadable"):
        latents.LatentSource(str(damaged), "train")
    with pytest.raises(latents.LatentCacheError, match="dtype"):
        latents.write_cache(str(tmp_path / "x"), lambda s: [], stand_in_encode, _info(prepared, dtype="int8"))
