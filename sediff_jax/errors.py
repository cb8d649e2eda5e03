"""The project's error base class: every error we raise about the user's input, files or environment is a
`SediffError` (and keeps its builtin base, e.g. ValueError, for callers that catch that). The CLIs turn any of them
into one line, `error: ...`, with exit status 2 (`experiments/cli.py`); anything else is a bug and keeps its
traceback."""


class SediffError(Exception):
    """An error sediff_jax reports about its input: the message names the problem and the file or flag."""
