"""Rare-finding oversampling: the weights, the fixed-length weighted epoch, and a loader that resumes through it."""

import collections

import numpy as np
import pytest

from sediff_jax.data import sampling
from sediff_jax.data.loader import BatchLoader, LoaderState
from sediff_jax.data.sources import MEASUREMENT_NAMES
from sediff_jax.training import config as config_lib
from sediff_jax.training.sources import sampling_weights


class CodedSource:
    """A random-access split of `len(codes)` tiny examples whose `codes` field is given (read by __getitems__
    only: no `codes` attribute, so `source_codes` takes the generic path)."""

    def __init__(self, codes: list[str]):
        self._codes = codes

    def __len__(self):
        return len(self._codes)

    def __getitems__(self, indices):
        return [dict(latent_mean=np.full((4, 2), i, np.float32), r_peaks=np.array([10, 110], np.int32),
                     hr_bpm=60.0, age=50.0, sex=0, measurements=np.zeros(len(MEASUREMENT_NAMES), np.float32),
                     record_id=f"r{i}".encode(), codes=self._codes[i].encode()) for i in indices]


# 40 records: 30 NORM, 8 AFIB, 2 AFLT (one of them also NORM)
CODES = ["NORM; SR"] * 29 + ["NORM; AFLT"] + ["AFIB"] * 8 + ["AFLT"] + [""]


def test_parse_codes_and_weights_by_the_rarest_code():
    assert sampling.parse_codes("NORM; SR") == ("NORM", "SR")
    assert sampling.parse_codes(b"AFLT;") == ("AFLT",) and sampling.parse_codes("") == ()
    codes = [sampling.parse_codes(c) for c in CODES]
    weights = sampling.rare_code_weights(codes, power=1.0, reference_count=8, max_weight=3.0)
    # NORM 30 records, SR 29 -> 8/29 < 1 -> 1; AFIB 8 -> 1; AFLT 2 -> 4, clipped to 3; no codes -> 1
    np.testing.assert_allclose(weights, [1.0] * 29 + [3.0] + [1.0] * 8 + [3.0] + [1.0])
    half = sampling.rare_code_weights(codes, power=0.5, reference_count=8, max_weight=3.0)
    np.testing.assert_allclose(half[29], 2.0)  # sqrt(8 / 2)
    np.testing.assert_array_equal(sampling.rare_code_weights(codes, power=0.0), np.ones(len(codes)))
    for bad in (dict(power=-1.0), dict(power=1.0, reference_count=0), dict(power=1.0, max_weight=0.5)):
        with pytest.raises(ValueError, match="oversampling"):
            sampling.rare_code_weights(codes, **bad)


def test_oversampling_only_named_codes_leaves_the_other_rare_ones_alone():
    codes = [sampling.parse_codes(c) for c in CODES]
    # only AFIB (8 records -> 16 / 8 = 2): the AFLT records keep weight 1, the NORM+AFLT record too
    weights = sampling.rare_code_weights(codes, power=1.0, reference_count=16, max_weight=3.0, only=("AFIB",))
    np.testing.assert_allclose(weights, [1.0] * 30 + [2.0] * 8 + [1.0, 1.0])
    # a record with several named codes takes the rarest of them; counts are over all records
    both = sampling.rare_code_weights(codes, power=1.0, reference_count=16, max_weight=8.0, only=("AFIB", "AFLT"))
    np.testing.assert_allclose(both, [1.0] * 29 + [8.0] + [2.0] * 8 + [8.0, 1.0])
    with pytest.raises(ValueError, match="oversampling codes STE_: no training record carries them"):
        sampling.rare_code_weights(codes, power=1.0, only=("AFIB", "STE_"))
    config = config_lib.resolve(config_lib.apply_variant(config_lib.base_config(), "oversample_rare"))
    config.diffusion.training.update(oversample_codes="AFLT", oversample_reference=8, oversample_power=1.0)
    np.testing.assert_allclose(sampling_weights(config.diffusion, CodedSource(CODES)),
                               [1.0] * 29 + [4.0] + [1.0] * 8 + [4.0, 1.0])  # AFLT 2 records: 8 / 2


def test_systematic_draw_gives_each_record_floor_or_ceil_of_its_share():
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.2, 4.0, 500)
    length = sampling.epoch_length(weights)
    share = weights * length / weights.sum()
    totals = np.zeros(len(weights))
    for epoch in range(200):
        drawn = sampling.systematic_draw(weights, np.random.default_rng([1, epoch]))
        assert drawn.shape == (length,)
        counts = np.bincount(drawn, minlength=len(weights))
        assert np.all(counts >= np.floor(share) - 1e-9) and np.all(counts <= np.ceil(share) + 1e-9)
        totals += counts
    np.testing.assert_allclose(totals / 200, share, atol=0.08)  # unbiased: the mean count is the share
    with pytest.raises(ValueError, match="finite"):
        sampling.check_weights(np.array([1.0, np.nan]), 2)
    with pytest.raises(ValueError, match="shape"):
        sampling.check_weights(np.ones(3), 2)
    with pytest.raises(ValueError, match="no example"):
        sampling.check_weights(np.full(4, 0.1), 4)


def test_weighted_loader_draws_rare_records_more_and_resumes_exactly():
    source = CodedSource(CODES)
    weights = sampling.rare_code_weights(sampling.source_codes(source), power=1.0, reference_count=8,
                                         max_weight=3.0)  # sum 44: 5 batches of 8 per epoch
    loader = BatchLoader(source, 8, seed=2, process_index=0, process_count=1, weights=weights, num_epochs=3)
    assert loader.batches_per_epoch == 5
    batches = list(loader)
    assert len(batches) == 15
    epochs = [np.concatenate([b["index"] for b in batches[5 * e: 5 * e + 5]]) for e in range(3)]
    for e in range(3):  # each epoch draws the AFLT records 3 times and the others once, then drops the remainder
        order = loader.plan.epoch_order(e)
        np.testing.assert_array_equal(np.bincount(order, minlength=40), weights.astype(int))
        np.testing.assert_array_equal(epochs[e], order[:40])
    assert epochs[0].tolist() != epochs[1].tolist()
    counts = collections.Counter(int(i) for b in batches for i in b["index"])
    assert counts[29] + counts[38] > 4 * (counts[0] + counts[1]) / 2  # rare records come far more often
    # resume in the second epoch: the same batches as the uninterrupted loader
    first = BatchLoader(source, 8, seed=2, process_index=0, process_count=1, weights=weights, num_epochs=3)
    for _ in range(7):
        next(first)
    saved = LoaderState.from_json(first.state().to_json())
    assert saved.sampling == sampling.weights_id(weights) != sampling.UNIFORM
    resumed = BatchLoader(source, 8, seed=2, process_index=0, process_count=1, weights=weights, num_epochs=3,
                          state=saved)
    for k, batch in enumerate(resumed, start=7):
        np.testing.assert_array_equal(batch["index"], batches[k]["index"])
    # other weights, or none, refuse the saved position instead of drawing another epoch
    with pytest.raises(ValueError, match="sampling"):
        BatchLoader(source, 8, seed=2, process_index=0, process_count=1, state=saved)
    with pytest.raises(ValueError, match="sampling"):
        BatchLoader(source, 8, seed=2, process_index=0, process_count=1, weights=weights * 1.5, state=saved)
    # two hosts read the halves of each weighted global batch
    hosts = [list(BatchLoader(source, 8, seed=2, process_index=p, process_count=2, weights=weights, num_epochs=1))
             for p in range(2)]
    for k in range(5):
        np.testing.assert_array_equal(np.concatenate([hosts[0][k]["index"], hosts[1][k]["index"]]),
                                      batches[k]["index"])


def test_uniform_loader_state_from_before_sampling_existed_still_restores():
    source = CodedSource(CODES)
    old = '{"epoch": 1, "batch": 2, "seed": 0, "num_examples": 40, "process_index": 0, "process_count": 1, ' \
          '"global_batch_size": 8}'
    loader = BatchLoader(source, 8, seed=0, process_index=0, process_count=1, state=LoaderState.from_json(old))
    reference = BatchLoader(source, 8, seed=0, process_index=0, process_count=1)
    for _ in range(8):  # 5 batches an epoch: epoch 1, batch 2 is the 8th
        expected = next(reference)
    np.testing.assert_array_equal(next(loader)["index"], expected["index"])


def test_config_switches_oversampling_and_checks_its_values():
    source = CodedSource(CODES)
    config = config_lib.resolve(config_lib.base_config())
    assert sampling_weights(config.diffusion, source) is None  # off by default
    variant = config_lib.resolve(config_lib.apply_variant(config_lib.base_config(), "oversample_rare"))
    weights = sampling_weights(variant.diffusion, source)
    # every code here is rarer than the variant's 2,000 records: all at the cap but the record with no codes
    np.testing.assert_allclose(weights, [4.0] * 39 + [1.0])
    bad = config_lib.base_config()
    bad.diffusion.training.oversample_power = -0.5
    with pytest.raises(config_lib.ConfigError, match="oversample_power"):
        config_lib.resolve(bad)
