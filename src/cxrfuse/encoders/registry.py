"""Registries of image and text encoders (timm-style ``_registry``): specs only.

Encoders are registered by name with a frozen spec that says what they need (input size,
channels, normalisation) and what they give (feature size). This module imports no model
code: the encoder modules (:mod:`cxrfuse.encoders.image`, :mod:`cxrfuse.encoders.text`)
register themselves with the decorators below when :mod:`cxrfuse.encoders` is imported, which
Python always does before any of its modules. Building an encoder is
:mod:`cxrfuse.encoders.factory`; fetching weights is :mod:`cxrfuse.encoders.hub`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from cxrfuse.problems import CxrfuseError

Normalisation = Literal["xrv"] | tuple[tuple[float, ...], tuple[float, ...]]
"""``"xrv"`` (torchxrayvision's [-1024, 1024] range) or ``(mean, std)`` per channel on [0, 1]."""

IMAGENET_MEAN_STD: Normalisation = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class UnknownEncoderError(CxrfuseError, ValueError):
    """An encoder (or weights) name that is not registered; the message lists the known ones."""


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)


class ImageEncoderSpec:
    """What an image encoder needs and gives.

    ``builder(spec, weights)`` builds the encoder with the registry weights named ``weights``
    (``None``: random init). ``input_size`` is the square side after preprocessing;
    ``channels`` 1 (gray) or 3; ``grayscale_to_rgb`` says how a gray X-ray fills 3 channels
    ("replicate") or "not-needed" for 1-channel models (RGB input is averaged to gray there).
    """

    name: str
    builder: Callable[[ImageEncoderSpec, str | None], Any] = field(
        repr=False, compare=False
    )
    arch: str
    family: str
    feature_dim: int
    input_size: int
    channels: Literal[1, 3]
    normalisation: Normalisation
    grayscale_to_rgb: Literal["replicate", "not-needed"]
    pooling: str
    default_weights: str
    available_weights: tuple[str, ...] = ()
    offline: bool = False
    notes: str = ""
    fit: str = "crop"
    """How a non-square image becomes the square input (:data:`cxrfuse.data.images.FITS`):
    ``crop`` (central square, the registry default and every store before the option) or
    ``pad`` (letterboxed); set by :func:`cxrfuse.encoders.create_image_encoder`."""

    def weight_names(self) -> tuple[str, ...]:
        """All registry weight names of this encoder (default first)."""
        rest = tuple(w for w in self.available_weights if w != self.default_weights)
        return (self.default_weights, *rest)


@dataclass(frozen=True)


class TextEncoderSpec:
    """What a text encoder is and where its weights come from.

    ``builder(spec, source, random_init, **options)`` builds it; ``source`` is a hub id or a
    local directory (empty for tf-idf). ``dim`` is ``None`` when it depends on fitting.
    """

    name: str
    builder: Callable[..., Any] = field(repr=False, compare=False)
    kind: Literal["hf", "sentence-transformers", "tfidf"]
    source: str
    dim: int | None
    max_length: int | None
    pooling: Literal["cls", "mean"] | None
    offline: bool = False
    notes: str = ""


_IMAGE_REGISTRY: dict[str, ImageEncoderSpec] = {}
_TEXT_REGISTRY: dict[str, TextEncoderSpec] = {}
F = TypeVar("F", bound=Callable[..., Any])


def register_image_encoder(name: str, **fields: Any) -> Callable[[F], F]:
    """Decorator: register ``builder`` under ``name`` with the given spec fields."""
    def decorate(builder: F) -> F:
        _IMAGE_REGISTRY[name] = ImageEncoderSpec(name=name, builder=builder, **fields)
        return builder

    return decorate


def register_text_encoder(name: str, **fields: Any) -> Callable[[F], F]:
    """Decorator: register a text encoder ``builder`` under ``name`` with the given spec fields."""
    def decorate(builder: F) -> F:
        _TEXT_REGISTRY[name] = TextEncoderSpec(name=name, builder=builder, **fields)
        return builder

    return decorate


def list_image_encoders(offline_only: bool = False) -> list[str]:
    """Registered image encoder names (only those with offline weights if asked)."""
    return sorted(n for n, s in _IMAGE_REGISTRY.items() if s.offline or not offline_only)


def list_text_encoders(offline_only: bool = False) -> list[str]:
    """Registered text encoder names (only those usable offline if asked)."""
    return sorted(n for n, s in _TEXT_REGISTRY.items() if s.offline or not offline_only)


def get_image_encoder_spec(name: str) -> ImageEncoderSpec:
    """The spec of a registered image encoder; unknown names list the known ones."""
    if name not in _IMAGE_REGISTRY:
        known = ", ".join(sorted(_IMAGE_REGISTRY))
        raise UnknownEncoderError(f"unknown image encoder {name!r}; known: {known}")
    return _IMAGE_REGISTRY[name]


def get_text_encoder_spec(name: str) -> TextEncoderSpec:
    """The spec of a registered text encoder, or of a Hugging Face id (``org/model``) or a
    local model folder (a transformers encoder with CLS pooling, dim read from the model);
    other unknown names list the known ones."""
    if name in _TEXT_REGISTRY:
        return _TEXT_REGISTRY[name]
    template = next((s for s in _TEXT_REGISTRY.values() if s.kind == "hf"), None)
    if template is not None and (_HUB_ID.fullmatch(name) or Path(name).is_dir()):
        return replace(template, name=name, source=name, dim=None,
                       notes="a Hugging Face id or local folder given by name")
    known = ", ".join(sorted(_TEXT_REGISTRY))
    raise UnknownEncoderError(f"unknown text encoder {name!r}; known: {known}, or a Hugging Face "
                              "id (org/model) or a local model folder")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hugging Face hub id: ``organisation/model``."""
