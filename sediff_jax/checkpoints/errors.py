"""The one error of checkpoints and model files."""


class CheckpointError(RuntimeError):
    """A checkpoint or model file that is missing, unreadable, or does not match the model it is loaded into."""
