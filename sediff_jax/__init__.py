"""sediff_jax: SE-Diff (simulator- and experience-enhanced ECG diffusion) in JAX/Flax."""

__version__ = "0.1.0"
