"""Diagnostic classes from report text, and PTB-XL statement labels."""

import numpy as np
import pytest

from sediff_jax.data.classes import SEDIFF_CLASSES, record_classes, sediff_classes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Sinus rhythm. Normal ECG.", {"sinus_rhythm"}),
        ("Sinus bradycardia. Left ventricular hypertrophy.", {"sinus_rhythm", "bradycardia", "left_ventricular_hypertrophy"}),
        ("Sinus tachycardia", {"sinus_rhythm", "tachycardia"}),
        ("Atrial fibrillation with rapid ventricular response", {"atrial_fibrillation"}),
        ("Ventricular tachycardia", {"ventricular_tachycardia"}),
        ("Supraventricular tachycardia", {"supraventricular_tachycardia"}),
        ("Atrial flutter with 2:1 block", {"atrial_flutter"}),
        ("Sinus rhythm with PVCs. RBBB", {"sinus_rhythm", "premature_ventricular_contraction", "right_bundle_branch_block"}),
        ("Premature atrial contractions. Left bundle branch block", {"premature_atrial_contraction", "left_bundle_branch_block"}),
        ("WPW pattern; prolonged QT", {"wolff_parkinson_white", "prolonged_qt"}),
        ("ST elevation, consider acute infarct", {"st_elevation", "infarct"}),
        ("ST-T changes: ST depression, T wave inversion, possible ischemia", {"st_depression", "t_inversion", "ischemia"}),
        ("Inferior myocardial infarction, age undetermined", {"infarct"}),
        ("Right ventricular hypertrophy", {"right_ventricular_hypertrophy"}),
        ("", set()),
    ],
)
def test_sediff_classes_from_text(text, expected):
    assert set(sediff_classes(text)) == expected
    assert list(sediff_classes(text)) == [c for c in SEDIFF_CLASSES if c in expected]  # canonical order


def test_ptbxl_labels_agree_with_statements(data_dir):
    from sediff_jax.data.ptbxl import read_ptbxl

    entries = read_ptbxl(str(data_dir / "ptb-xl"), 100)
    for entry in entries:
        labels = record_classes(entry)
        assert all(label.split("/")[0] in ("sediff", "superclass", "statement") for label in labels)
        assert {f"superclass/{s}" for s in entry.superclasses} <= set(labels)
        codes = set(entry.codes)
        # The English text names the rhythm statements it was built from.
        if "AFIB" in codes:
            assert "sediff/atrial_fibrillation" in labels, entry.text
        if codes & {"SR", "SBRAD", "STACH", "SARRH"}:
            assert "sediff/sinus_rhythm" in labels, entry.text
        if "CLBBB" in codes:
            assert "sediff/left_bundle_branch_block" in labels, entry.text
        if "PVC" in codes:
            assert "sediff/premature_ventricular_contraction" in labels, entry.text


def test_capped_by_class_keeps_rare_classes_whole_and_caps_common_ones():
    from sediff_jax.data.classes import capped_by_class

    labels = ([("sediff/sinus_rhythm", "superclass/NORM", "statement/NORM")] * 500
              + [("sediff/sinus_rhythm", "sediff/wolff_parkinson_white")] * 7 + [()] * 30)
    chosen = capped_by_class(labels, 20, seed=1)
    picked = [labels[i] for i in chosen]
    assert sum("sediff/wolff_parkinson_white" in x for x in picked) == 7  # rare: all of them
    assert sum(x == () for x in picked) == 20  # records without labels count as one class
    assert 20 <= sum("superclass/NORM" in x for x in picked) <= 20  # statements are not capped classes
    assert sum("sediff/sinus_rhythm" in x for x in picked) <= 27
    assert list(chosen) == sorted(chosen) and len(set(chosen)) == len(chosen)
    np.testing.assert_array_equal(chosen, capped_by_class(labels, 20, seed=1))
    assert not np.array_equal(chosen, capped_by_class(labels, 20, seed=2))
    with pytest.raises(ValueError, match="max_per_class"):
        capped_by_class(labels, 0)
