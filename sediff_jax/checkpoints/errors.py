"""The one error of checkpoints and model files."""

from sediff_jax.errors import SediffError


class CheckpointError(SediffError, RuntimeError):
    """A checkpoint or model file that is missing, unreadable, or does not match the model it is loaded into."""
