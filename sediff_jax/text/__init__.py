"""Report text -> embeddings for conditioning: offline MiniLM (default) or a weight-free hashing encoder."""

from sediff_jax.text.encoders import (
    ENCODERS,
    HashingEncoder,
    MiniLMEncoder,
    PrecomputedEncoder,
    TextCache,
    TextEncoding,
    encode_cached,
    encoder_from_id,
    make_text_encoder,
    save_encodings,
)
