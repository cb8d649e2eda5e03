"""canonicalize: lead order by name, repairs that are safe, errors that name the file, rate changes."""

import numpy as np
import pytest

from sediff_jax.data.canonical import CanonicalConfig, canonicalize
from sediff_jax.signal.filters import resample
from sediff_jax.signal.rpeaks import detect_r_peaks, dominant_lead
from sediff_jax.data.wfdb_reader import RawRecord, RecordError, read_record
from sediff_jax.leads import LEAD_NAMES, limb_lead_residuals
from tests.data.wfdb_fixtures import simulated_ecg

MIMIC_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")


def raw(signal, names=LEAD_NAMES, fs=500.0):
    return RawRecord(path="/data/rec42", signal=signal.astype(np.float32), lead_names=tuple(names), fs=fs)


def test_leads_are_reordered_by_name():
    ecg = simulated_ecg()
    order = [LEAD_NAMES.index(n) for n in MIMIC_ORDER]
    shuffled = raw(ecg[:, order], [n.upper() for n in MIMIC_ORDER])
    out = canonicalize(shuffled)
    np.testing.assert_array_equal(out.ecg, canonicalize(raw(ecg)).ecg)
    np.testing.assert_allclose(out.ecg, ecg, atol=1e-6)
    assert out.repairs == ()


def test_unknown_and_missing_leads_are_errors_naming_the_file():
    ecg = simulated_ecg()
    with pytest.raises(RecordError, match=r"/data/rec42: unknown lead name 'V7'") as e:
        canonicalize(raw(ecg, LEAD_NAMES[:-1] + ("V7",)))
    assert e.value.reason == "unknown_lead"
    with pytest.raises(RecordError, match=r"/data/rec42: missing leads V6") as e:
        canonicalize(raw(ecg[:, :11], LEAD_NAMES[:11]))
    assert e.value.reason == "missing_lead"
    with pytest.raises(RecordError, match="appears twice"):
        canonicalize(raw(ecg, LEAD_NAMES[:-1] + ("v1",)))


def test_missing_augmented_leads_are_derived_from_i_and_ii():
    ecg = simulated_ecg()
    keep = [0, 1] + list(range(6, 12))
    out = canonicalize(raw(ecg[:, keep], [LEAD_NAMES[k] for k in keep]))
    np.testing.assert_allclose(out.ecg, ecg, atol=1e-5)
    assert "derived III from the other limb leads" in out.repairs
    with pytest.raises(RecordError, match="missing leads"):
        canonicalize(raw(ecg[:, keep], [LEAD_NAMES[k] for k in keep]), CanonicalConfig(derive_limb_leads=False))


def test_all_nan_limb_lead_is_rebuilt_and_chest_lead_is_skipped():
    ecg = simulated_ecg()
    broken = ecg.copy()
    broken[:, LEAD_NAMES.index("II")] = np.nan
    out = canonicalize(raw(broken))
    np.testing.assert_allclose(out.ecg, ecg, atol=1e-5)
    assert np.abs(limb_lead_residuals(out.ecg)).max() < 1e-5
    assert "derived II from the other limb leads" in out.repairs

    broken = ecg.copy()
    broken[:, LEAD_NAMES.index("V3")] = np.nan
    with pytest.raises(RecordError, match=r"/data/rec42: lead V3 is NaN over more than") as e:
        canonicalize(raw(broken))
    assert e.value.reason == "nan_lead"


def test_short_nan_gaps_are_interpolated_long_ones_are_not():
    ecg = simulated_ecg()
    broken = ecg.copy()
    broken[2000:2020, 8] = np.nan  # 40 ms
    out = canonicalize(raw(broken))
    assert not np.isnan(out.ecg).any()
    assert "interpolated 20 NaN samples in V3" in out.repairs
    assert np.abs(out.ecg[2000:2020, 8] - ecg[2000:2020, 8]).max() < 0.3
    broken[2000:2200, 8] = np.nan  # 400 ms
    with pytest.raises(RecordError, match="V3 is NaN"):
        canonicalize(raw(broken))


def test_flat_lead_is_skipped():
    ecg = simulated_ecg()
    ecg[:, LEAD_NAMES.index("V5")] = 0.25
    with pytest.raises(RecordError, match="lead V5 is flat") as e:
        canonicalize(raw(ecg))
    assert e.value.reason == "flat_lead"


def test_too_short_record_is_skipped():
    with pytest.raises(RecordError, match=r"rec42: 5.00 s long, need 10 s") as e:
        canonicalize(raw(simulated_ecg(duration_s=5.0)))
    assert e.value.reason == "too_short"


def test_long_record_is_cropped_at_the_offset(data_dir):
    record = read_record(data_dir / "wfdb-samples" / "s0010_re")  # 38.4 s at 1000 Hz, 15 channels
    out = canonicalize(record, CanonicalConfig(fs=500, offset_s=5.0))
    assert out.ecg.shape == (5000, 12)
    reference = record.signal[5000:15000:2, :12]
    # Resampled, not decimated: the anti-alias filter moves samples by far less than the QRS amplitude.
    assert np.corrcoef(out.ecg[:, 1], reference[:, 1])[0, 1] > 0.99
    assert 60 < out.hr_bpm < 100


def _check_r_peaks_survive_resampling(paths):
    """R peaks found at 500 Hz vs found again, on the same lead and polarity, after resampling to 100 / 250 Hz."""
    checked = 0
    for path in paths:
        record = read_record(path, expected_fs=500)
        native = canonicalize(record, CanonicalConfig(fs=500))
        lead, polarity = dominant_lead(native.ecg, 500)
        for fs in (100, 250):
            low = canonicalize(record, CanonicalConfig(fs=fs))
            found = detect_r_peaks(low.ecg, fs, lead=lead, polarity=polarity)
            expected = native.r_peaks * fs / 500
            assert len(found) == len(expected), path
            np.testing.assert_array_less(np.abs(found - expected), 1.0, err_msg=str(path))
            checked += len(found)
    return checked


def test_resampling_preserves_r_peak_times_within_one_sample(data_dir):
    paths = sorted((data_dir / "ptb-xl" / "records500").glob("*/*.hea"))
    assert _check_r_peaks_survive_resampling(paths[::5]) > 1000


@pytest.mark.slow
def test_resampling_preserves_r_peak_times_on_all_500_records(data_dir):
    paths = sorted((data_dir / "ptb-xl" / "records500").glob("*/*.hea"))
    assert len(paths) == 500
    assert _check_r_peaks_survive_resampling(paths) > 5000


def test_resample_is_a_round_trip_for_band_limited_signals():
    t = np.arange(5000) / 500.0
    x = np.stack([np.sin(2 * np.pi * 3 * t), np.cos(2 * np.pi * 7 * t)], axis=1)
    y = resample(resample(x, 500, 100), 100, 500)
    np.testing.assert_allclose(y[100:-100], x[100:-100], atol=2e-3)
    with pytest.raises(ValueError, match="rational"):
        resample(x, 500, 500 * np.pi)


def test_detected_heart_rate_matches_the_simulator():
    for hr in (45.0, 75.0, 150.0):
        out = canonicalize(raw(simulated_ecg(hr=hr)))
        assert abs(out.hr_bpm - hr) < 1.5, (hr, out.hr_bpm)
        assert len(detect_r_peaks(out.ecg, 500)) == len(out.r_peaks)


def test_projection_to_the_lead_space_is_exact_least_squares_and_keeps_consistent_ecgs():
    """The projected limb leads obey Einthoven/Goldberger to float rounding, are the least-squares nearest such
    leads (checked against a direct lstsq over (I, II)), and a consistent ECG comes back unchanged."""
    import numpy as np

    from sediff_jax.leads import leads_from_independent, limb_lead_residuals, project_to_lead_space

    rng = np.random.default_rng(0)
    clean = leads_from_independent(rng.normal(size=(3, 50, 8)))
    np.testing.assert_allclose(project_to_lead_space(clean), clean, atol=1e-12)
    noisy = clean + 0.05 * rng.normal(size=clean.shape)
    projected = project_to_lead_space(noisy)
    assert np.abs(limb_lead_residuals(projected)).max() < 1e-12 < np.abs(limb_lead_residuals(noisy)).max()
    np.testing.assert_array_equal(projected[..., 6:], noisy[..., 6:])
    a = np.array([[1, 0], [0, 1], [-1, 1], [-0.5, -0.5], [1, -0.5], [-0.5, 1]])
    coef = np.linalg.lstsq(a, noisy[1, 7, :6], rcond=None)[0]
    np.testing.assert_allclose(projected[1, 7, :6], a @ coef, atol=1e-12)
