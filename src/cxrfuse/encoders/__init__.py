"""Image and text encoders: a timm-style registry of specs (:mod:`~cxrfuse.encoders.registry`),
weight fetching (:mod:`~cxrfuse.encoders.hub`), building (:mod:`~cxrfuse.encoders.factory`)
and the encoder modules (:mod:`~cxrfuse.encoders.image`, :mod:`~cxrfuse.encoders.text`).

Importing this package registers the built-in encoders. Computing and storing embeddings is
the next stage, :mod:`cxrfuse.store`.
"""

from cxrfuse.encoders import image, text, tfidf  # noqa: F401  (their decorators fill the registry)
from cxrfuse.encoders.factory import create_image_encoder, create_text_encoder, encoder_table
from cxrfuse.encoders.hub import WeightsUnavailableError, is_offline
from cxrfuse.encoders.image import ImageEncoder, ViTEncoder, to_model_input
from cxrfuse.encoders.registry import (
    ImageEncoderSpec,
    TextEncoderSpec,
    UnknownEncoderError,
    get_image_encoder_spec,
    get_text_encoder_spec,
    list_image_encoders,
    list_text_encoders,
    register_image_encoder,
    register_text_encoder,
)
from cxrfuse.encoders.text import TextEncoder
from cxrfuse.encoders.tfidf import TfidfEncoder

__all__ = [
    "ImageEncoder",
    "ImageEncoderSpec",
    "TextEncoder",
    "TextEncoderSpec",
    "TfidfEncoder",
    "UnknownEncoderError",
    "ViTEncoder",
    "WeightsUnavailableError",
    "create_image_encoder",
    "create_text_encoder",
    "encoder_table",
    "get_image_encoder_spec",
    "get_text_encoder_spec",
    "is_offline",
    "list_image_encoders",
    "list_text_encoders",
    "register_image_encoder",
    "register_text_encoder",
    "to_model_input",
]
