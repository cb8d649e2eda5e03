"""Text-to-ECG generation with a trained SE-Diff model: loading and exporting models, prompts, rhythms, the
generator."""

from sediff_jax.generation.amplitudes import AmplitudeError, amplitudes_from_record
from sediff_jax.generation.generator import Generator, text_encoder_for
from sediff_jax.generation.model import SHIPPED_CHECKPOINT, SEDiffModel, export_model, load_model
from sediff_jax.generation.prompts import Prompt, PromptError, make_prompt, read_prompts, with_rhythm_records
from sediff_jax.generation.rhythm import (
    RhythmError,
    RhythmPlan,
    rhythm_from_record,
    rhythm_from_rr,
    simulated_rhythm,
)

__all__ = ["AmplitudeError", "Generator", "Prompt", "PromptError", "RhythmError", "RhythmPlan", "SEDiffModel", "SHIPPED_CHECKPOINT",
           "amplitudes_from_record", "export_model", "load_model", "make_prompt", "read_prompts", "rhythm_from_record", "rhythm_from_rr",
           "simulated_rhythm", "text_encoder_for", "with_rhythm_records"]
