"""Text-to-ECG generation with a trained SE-Diff model: loading and exporting models, prompts, the generator."""

from sediff_jax.generation.generator import Generator, text_encoder_for
from sediff_jax.generation.model import SHIPPED_CHECKPOINT, SEDiffModel, export_model, load_model
from sediff_jax.generation.prompts import Prompt, PromptError, make_prompt, read_prompts
