"""Report text -> embeddings for conditioning: offline MiniLM (default) or a weight-free hashing encoder."""

from sediff_jax.text.encoders import (
    ENCODERS,
    HashingEncoder,
    MiniLMEncoder,
    TextCache,
    TextEncoding,
    encode_cached,
    make_text_encoder,
)
