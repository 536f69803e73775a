"""Language space of the semantic methods: text encoders and the shared language-query field.

Imports torch only; open_clip and sentence_transformers load on first use.
"""

from .encoders import (
    CLIP_CHECKPOINT_FLAG,
    MiniLMTextEncoder,
    ModelUnavailableError,
    OpenClipTextEncoder,
    SentenceTransformerTextEncoder,
    TextEncoder,
    make_text_encoder,
)
from .query_field import (
    CANONICAL_NEGATIVES,
    LanguageQueryField,
    binary_mask,
    localize,
    mode_filter,
    palette,
    postprocess_relevancy,
    relevancy,
    segment,
    turbo,
)

__all__ = [
    "CLIP_CHECKPOINT_FLAG",
    "CANONICAL_NEGATIVES",
    "LanguageQueryField",
    "MiniLMTextEncoder",
    "ModelUnavailableError",
    "OpenClipTextEncoder",
    "SentenceTransformerTextEncoder",
    "TextEncoder",
    "binary_mask",
    "localize",
    "make_text_encoder",
    "mode_filter",
    "palette",
    "postprocess_relevancy",
    "relevancy",
    "segment",
    "turbo",
]
