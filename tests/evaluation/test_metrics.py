"""Evaluation metrics against independent references: SciPy's matrix square root for FID, MIT-BIH's beat
annotations for R-peak detection, hand-computable cases for the signal metrics."""

import numpy as np
import pytest
import scipy.linalg

from sediff_jax.evaluation import (
    amplitude_spread, clip_score, frechet_distance, heart_rate_errors, interval_errors, knn_precision_recall,
    limb_lead_residual_mv, match_beats, paired_mae_mv, paired_nrmse, relative_clip, relative_fid, split_half_fid,
)
from sediff_jax.leads import leads_from_independent


def _scipy_fid(a, b):
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return mu @ mu + np.trace(ca + cb - 2 * root)


def _gaussian(n, dim=16, seed=0, shift=0.0):
    """n samples of one correlated Gaussian (the same for every seed)."""
    mix = np.random.default_rng(1234).normal(size=(dim, dim)) / np.sqrt(dim)
    return np.random.default_rng(seed).normal(size=(n, dim)) @ mix + shift


def test_frechet_distance_matches_scipy_and_grows_with_noise():
    a, b = _gaussian(400, seed=0), _gaussian(300, seed=1, shift=0.3)
    assert frechet_distance(a, b) == pytest.approx(_scipy_fid(a, b), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    rng = np.random.default_rng(2)
    noise = rng.normal(size=a.shape)
    fids = [frechet_distance(a, a + s * noise) for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert fids[0] < 1e-8 and np.all(np.diff(fids) > 0), fids
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 2), np.nan), a[:, :2])
    with pytest.raises(ValueError, match="dims"):
        frechet_distance(a, b[:, :3])


def test_relative_fid_is_one_for_the_real_set_a_half_for_a_fresh_sample_and_falls_as_it_degrades():
    real = _gaussian(1000, seed=3)
    split = split_half_fid(real)
    assert relative_fid(split, frechet_distance(real, real)) == pytest.approx(1.0, abs=1e-9)
    # an independent sample the size of a half: FID(real half, fresh) ~ FID_split, so rFID ~ 0.5 on average
    halves = []
    for seed in range(8):
        order = np.random.default_rng(seed).permutation(1000)
        fresh = _gaussian(500, seed=100 + seed)
        halves.append(relative_fid(split_half_fid(real, seed), frechet_distance(real[order[:500]], fresh)))
    assert 0.4 < np.mean(halves) < 0.6, halves
    fresh = _gaussian(500, seed=50)
    rng = np.random.default_rng(4)
    scores = [relative_fid(split, frechet_distance(real, fresh + s * rng.normal(size=fresh.shape)))
              for s in (0.0, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(scores) < 0), scores


def test_knn_precision_and_recall_separate_fidelity_from_coverage():
    real = _gaussian(400, dim=4, seed=5)
    same = _gaussian(400, dim=4, seed=6)
    precision, recall = knn_precision_recall(real, same)
    assert precision > 0.85 and recall > 0.85
    collapsed = real[:1] + 0.05 * np.random.default_rng(7).normal(size=(100, 4))  # one mode: faithful, no diversity
    precision, recall = knn_precision_recall(real, collapsed)
    assert precision > 0.95 and recall < 0.3
    far = _gaussian(400, dim=4, seed=8, shift=10.0)
    assert knn_precision_recall(real, far) == (0.0, 0.0)


def test_clip_scores_rank_matched_pairs_above_shuffled_ones():
    rng = np.random.default_rng(9)
    text = rng.normal(size=(200, 32))
    real = text + 0.5 * rng.normal(size=text.shape)
    generated = text + 1.0 * rng.normal(size=text.shape)
    shuffled = clip_score(real[rng.permutation(200)], text)
    assert clip_score(real, text) > clip_score(generated, text) > shuffled + 0.3
    assert relative_clip(real, real, text) == pytest.approx(1.0)
    assert 0 < relative_clip(generated, real, text) < 1


def test_paired_signal_metrics_on_hand_computable_cases():
    t = np.linspace(0, 2 * np.pi, 500)
    real = np.tile((1.5 * np.sin(t))[None, :, None], (2, 1, 12))
    generated = real + np.array([0.0, 0.2])[:, None, None]
    np.testing.assert_allclose(paired_mae_mv(generated, real), [0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(paired_nrmse(generated, real), [0.0, 0.2 / (real[0, :, 0].max() - real[0, :, 0].min())])
    real[1, :, 3] = 0.0  # a flat real lead is left out of the NRMSE average, not divided by zero
    assert np.isfinite(paired_nrmse(generated, real)).all()
    with pytest.raises(ValueError, match="batch, time, leads"):
        paired_mae_mv(generated[:, :10], real)


def test_limb_lead_residual_is_zero_for_consistent_leads_and_measures_a_broken_one():
    rng = np.random.default_rng(10)
    independent = rng.normal(size=(3, 400, 8))
    ecg = np.asarray(leads_from_independent(independent))
    np.testing.assert_allclose(limb_lead_residual_mv(ecg), 0.0, atol=1e-12)
    broken = ecg.copy()
    broken[:, :, 2] += 0.4  # lead III off by 0.4 mV: residuals 0.4, 0, 0.2, -0.2 -> RMS sqrt(0.24 / 4)
    np.testing.assert_allclose(limb_lead_residual_mv(broken), np.sqrt(0.24 / 4), rtol=1e-9)


def test_beat_matching_counts_misses_and_extras_within_150_ms():
    reference = np.array([100, 400, 700, 1000])
    scores = match_beats(np.array([110, 395, 760, 1000, 1200]), reference, fs=360.0)  # 760 is 60 samples (167 ms) off
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (3, 1, 2)
    scores = match_beats(np.array([110, 1000]), reference, fs=100.0)  # 150 ms = 15 samples
    assert (scores.true_positives, scores.false_negatives, scores.false_positives) == (2, 2, 0)
    assert scores.sensitivity == 0.5 and scores.positive_predictive_value == 1.0


def test_r_peaks_on_mit_bih_100_reach_99_percent_sensitivity_and_ppv(data_dir):
    import wfdb

    from sediff_jax.signal.rpeaks import detect_r_peaks

    path = str(data_dir / "wfdb-samples" / "100")
    record, annotation = wfdb.rdrecord(path), wfdb.rdann(path, "atr")
    beats = [s for s, sym in zip(annotation.sample, annotation.symbol) if sym in "NLRBAaJSVrFejnE/fQ"]
    scores = match_beats(detect_r_peaks(record.p_signal, record.fs), np.array(beats), record.fs)
    assert len(beats) == 2273
    assert scores.sensitivity >= 0.99 and scores.positive_predictive_value >= 0.99, scores


def test_heart_rate_and_interval_errors():
    import jax

    from sediff_jax.simulator import SimulatorConfig, preset_params, simulate

    config = SimulatorConfig(model="dipole", duration_s=10.0, fs=100.0)
    ecg = np.stack([np.asarray(simulate(preset_params("normal_sinus", hr=hr), jax.random.key(0), config))
                    for hr in (60.0, 90.0)])
    errors, unmeasurable = heart_rate_errors(np.concatenate([ecg, np.zeros_like(ecg[:1])]), 100.0, [60, 90, 70])
    assert unmeasurable == 1 and errors.shape == (2,) and np.all(errors < 0.05), errors
    table = interval_errors([{"pr_ms": 160.0, "qt_ms": float("nan")}, {"pr_ms": 150.0, "qt_ms": 400.0}],
                            [{"pr_ms": 150.0, "qt_ms": 390.0}, {"pr_ms": 170.0, "qt_ms": 380.0}],
                            names=("pr_ms", "qt_ms"))
    assert table["pr_ms"] == {"median": 15.0, "mean": 15.0, "sem": pytest.approx(5.0), "n": 2}  # |10|, |-20|
    assert table["qt_ms"]["mean"] == 20.0 and table["qt_ms"]["n"] == 1 and np.isnan(table["qt_ms"]["sem"])


def test_amplitude_spread_is_the_ratio_of_peak_to_peak_stds_and_one_for_the_real_set():
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    amplitudes = np.array([0.5, 1.0, 1.5, 2.0])                       # peak-to-peak 2a mV, in every lead
    real = amplitudes[:, None, None] * np.sin(t)[None, :, None] * np.ones((1, 1, 3))
    squeezed = 1.0 + 0.5 * (amplitudes - amplitudes.mean())            # half the spread, mean 1.0 (real 1.25)
    generated = squeezed[:, None, None] * np.sin(t)[None, :, None] * np.ones((1, 1, 3))
    same = amplitude_spread(real, real)
    assert same["spread_ratio"] == pytest.approx(1.0) and same["mean_ratio"] == pytest.approx(1.0)
    half = amplitude_spread(generated, real)
    ptp = 2 * amplitudes
    assert half["std_real_mv"] == pytest.approx(ptp.std(), rel=1e-3)
    assert half["spread_ratio"] == pytest.approx(0.5, rel=1e-3)
    assert half["mean_ratio"] == pytest.approx(squeezed.mean() / amplitudes.mean(), rel=1e-3)
    np.testing.assert_allclose(half["spread_ratio_per_lead"], 0.5, rtol=1e-3)
    with pytest.raises(ValueError, match="at least 2 records"):
        amplitude_spread(real[:1], real[:1])
    with pytest.raises(ValueError, match="NaN"):
        amplitude_spread(np.where(real > 1.9, np.nan, real), real)


def _beats_ecg(peaks, shapes, n=1000, fs=100.0):
    """(n, 12) mV: at each R peak (samples) a QRS of the given shape, (width s, amplitude per lead (12,))."""
    t = np.arange(n) / fs
    ecg = np.zeros((n, 12))
    for peak, (width, amplitude) in zip(peaks, shapes):
        ecg += np.exp(-0.5 * ((t - peak / fs) / width) ** 2)[:, None] * amplitude[None, :]
    return ecg


def _difference_by_hand(ecg, peaks, premature, fs=100.0):
    """The ectopic-beat difference written out: band-pass, windows of 8 + 12 samples, median template."""
    from scipy.signal import butter, sosfiltfilt

    x = sosfiltfilt(butter(2, [0.5, 40.0], btype="bandpass", fs=fs, output="sos"), ecg, axis=0)
    windows = {p: x[p - 8:p + 12] for p in peaks if p - 8 >= 0 and p + 12 <= len(x)}
    template = np.median([w for p, w in windows.items() if p not in premature], axis=0)
    return np.median([np.linalg.norm(windows[p] - template) / np.linalg.norm(template) for p in premature])


def test_ectopic_beat_difference_is_zero_for_an_early_normal_beat_and_large_for_a_wide_inverted_one():
    from sediff_jax.evaluation.physiology import ectopic_beat_difference, ectopy_scores

    lead = np.linspace(0.4, 1.6, 12)
    normal = (0.012, lead)
    peaks = np.array([50, 150, 250, 310, 450, 550, 650, 750, 850, 950])  # 310: 60 % of the RR, then a pause
    premature = {310}
    same = _beats_ecg(peaks, [normal] * len(peaks))
    ectopic = _beats_ecg(peaks, [(0.035, -1.3 * lead[::-1]) if p in premature else normal for p in peaks])
    assert ectopic_beat_difference(same, 100.0, peaks) < 0.05  # only where the early beat's neighbours fall
    value = ectopic_beat_difference(ectopic, 100.0, peaks)
    assert value > 1.0 and value == pytest.approx(_difference_by_hand(ectopic, peaks, premature), rel=1e-9)
    assert ectopic_beat_difference(ectopic, 100.0) > 1.0  # peaks detected (the inverted beat's placed off centre)
    regular = np.arange(50, 1000, 100)
    assert np.isnan(ectopic_beat_difference(_beats_ecg(regular, [normal] * len(regular)), 100.0, regular))
    scores = ectopy_scores(np.stack([ectopic, same]), np.stack([ectopic, ectopic]), 100.0, [("PVC", "SR"), ("NORM",)],
                           [peaks, peaks], [peaks, peaks])
    assert list(scores) == ["PVC"] and scores["PVC"]["records"] == 1
    assert scores["PVC"]["generated_difference"] == pytest.approx(value) == scores["PVC"]["real_difference"]
    assert scores["PVC"]["generated_with_premature_beat"] == 1.0


def test_ectopic_beat_difference_separates_ventricular_from_atrial_premature_beats_on_ptbxl(data_dir):
    """PTB-XL's own statements as the reference: records coding PVC have early beats unlike their dominant beat,
    those coding PAC early beats like it, and normal records seldom an early beat at all."""
    import csv

    import wfdb

    from sediff_jax.evaluation.physiology import ectopic_beat_difference

    root = data_dir / "ptb-xl"
    with open(root / "ptbxl_database.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    values = {}
    for code, limit in (("PVC", 16), ("PAC", 6), ("NORM", 30)):
        chosen = [r["filename_lr"] for r in rows if f"'{code}'" in r["scp_codes"]][:limit]
        values[code] = np.array([ectopic_beat_difference(wfdb.rdsamp(str(root / name))[0], 100.0) for name in chosen])
    pvc, pac, norm = values["PVC"], values["PAC"], values["NORM"]
    assert np.isfinite(pvc).mean() >= 0.8 and np.isfinite(pac).all() and np.isfinite(norm).mean() <= 0.2
    assert np.nanmedian(pvc) > 1.0 > 0.5 > np.nanmedian(pac), (pvc, pac)
