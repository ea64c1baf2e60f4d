"""Image and text encoders behind a timm-style registry (``create_*_encoder`` by name)."""

from cxrfuse.encoders.registry import (
    ImageEncoderSpec,
    TextEncoderSpec,
    UnknownEncoderError,
    WeightsUnavailableError,
    create_image_encoder,
    create_text_encoder,
    get_image_encoder_spec,
    get_text_encoder_spec,
    list_image_encoders,
    list_text_encoders,
    register_image_encoder,
    register_text_encoder,
)

__all__ = [
    "ImageEncoderSpec",
    "TextEncoderSpec",
    "UnknownEncoderError",
    "WeightsUnavailableError",
    "create_image_encoder",
    "create_text_encoder",
    "get_image_encoder_spec",
    "get_text_encoder_spec",
    "list_image_encoders",
    "list_text_encoders",
    "register_image_encoder",
    "register_text_encoder",
]
