"""Evaluation metrics: signal fidelity, physiology (beats, intervals), and feature distributions."""

from sediff_jax.evaluation.distribution import (
    clip_score, frechet_distance, knn_precision_recall, relative_clip, relative_fid, split_half_fid,
)
from sediff_jax.evaluation.physiology import (
    BeatScores, heart_rate_errors, interval_errors, match_beats, measured_heart_rates, summarize,
)
from sediff_jax.evaluation.signal import amplitude_spread, limb_lead_residual_mv, paired_mae_mv, paired_nrmse
