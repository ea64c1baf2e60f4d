"""Building encoders from the registry (timm-style ``_builder``): weights resolution
(registry name, local file, or random init asked for by name) and the listing table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cxrfuse.encoders.hub import STATE_DICT_SUFFIXES, WeightsUnavailableError
from cxrfuse.encoders.registry import (
    ImageEncoderSpec,
    UnknownEncoderError,
    get_image_encoder_spec,
    get_text_encoder_spec,
    list_image_encoders,
    list_text_encoders,
)

if TYPE_CHECKING:
    import torch

    from cxrfuse.encoders.image import ImageEncoder
    from cxrfuse.encoders.text import TextEncoder


def create_image_encoder(
    name: str,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    input_size: int | None = None,
    fit: str = "crop",
) -> ImageEncoder:
    """Build a registered image encoder in eval mode.

    ``weights``: ``"default"`` (the registry weights), a registry weights name, a local
    state_dict file (.pt/.pth/.bin/.safetensors) or ``"none"`` (random init). ``input_size``
    overrides the spec's input size (e.g. small images in tests). ``fit`` says how a
    non-square image becomes its square input: ``crop`` (central square) or ``pad``
    (letterboxed); it is part of the store key when it is ``pad``.
    """
    from cxrfuse.data.images import check_fit

    spec = get_image_encoder_spec(name)
    if input_size is not None:
        spec = replace(spec, input_size=int(input_size))
    if fit != spec.fit:
        spec = replace(spec, fit=check_fit(fit))
    kind, value = _resolve_image_weights(spec, weights)
    with _fixed_random_init(kind == "none"):
        encoder = spec.builder(spec, value if kind == "registry" else None)
    if kind == "file":
        encoder.load_backbone_weights(Path(value))
    return encoder.to(device).eval()


def _resolve_image_weights(spec: ImageEncoderSpec, weights: str | Path | None) -> tuple[str, str]:
    """Classify ``weights`` as ("registry", name), ("file", path) or ("none", "")."""
    if weights is None:
        raise ValueError(
            "weights=None is ambiguous; use 'default', 'none' (random init) or a file path"
        )
    text = str(weights)
    if text == "default":
        return "registry", spec.default_weights
    if text == "none":
        return "none", ""
    if text in spec.weight_names():
        return "registry", text
    path = Path(text).expanduser()
    if path.is_file():
        return "file", str(path)
    if isinstance(weights, Path) or path.suffix in STATE_DICT_SUFFIXES or os.sep in text:
        raise WeightsUnavailableError(spec.name, text, f"no such file: {path}")
    options = ", ".join(("default", "none", *spec.weight_names()))
    raise UnknownEncoderError(
        f"unknown weights {text!r} for image encoder {spec.name!r}; "
        f"choose one of {options} or a local state_dict file"
    )


def create_text_encoder(
    name: str,
    weights: str | Path | None = "default",
    pooling: Literal["cls", "mean"] | None = None,
    max_length: int | None = None,
    device: str = "cpu",
    **options: Any,
) -> TextEncoder:
    """Build a registered text encoder.

    ``weights``: ``"default"`` (the registry source), a Hugging Face hub id or a local
    directory saved with ``save_pretrained``, or ``"none"`` (random init with the model's
    config). ``pooling``/``max_length`` override the spec; other ``options`` go to the builder
    (e.g. ``chunk_overlap``, or ``svd_dim`` for tf-idf).
    """
    spec = get_text_encoder_spec(name)
    if weights is None:
        raise ValueError("weights=None is ambiguous; use 'default', 'none' or a path / hub id")
    text = str(weights)
    random_init = text == "none"
    source = spec.source if text in ("default", "none") else text
    chosen = {"pooling": pooling, "max_length": max_length, "device": device, **options}
    with _fixed_random_init(random_init):
        return spec.builder(
            spec, source, random_init, **{k: v for k, v in chosen.items() if v is not None}
        )


RANDOM_INIT_SEED = 0


@contextmanager
def _fixed_random_init(active: bool) -> Iterator[None]:
    """``weights: none`` draws its random weights from a fixed seed (without touching the
    caller's RNG state), so that a run on a random encoder can be rebuilt: the store, ``predict``
    and external validation then see the same encoder the run was trained on."""
    if not active:
        yield
        return
    import torch  # here: torch stays out of the registry listing's import time

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


# ----------------------------------------------------------------------------- listing


def encoder_table(offline_only: bool = False) -> list[dict[str, Any]]:
    """One row per registered encoder (image first): name, dim, input, offline, notes."""
    rows: list[dict[str, Any]] = []
    for name in list_image_encoders(offline_only):
        spec = get_image_encoder_spec(name)
        norm = "xrv [-1024, 1024]" if spec.normalisation == "xrv" else "mean/std"
        rows.append(
            {
                "kind": "image",
                "name": name,
                "dim": spec.feature_dim,
                "input": f"{spec.input_size} px, {spec.channels} ch, {norm}",
                "offline": spec.offline,
                "family": spec.family,
                "pooling": spec.pooling,
                "default_weights": spec.default_weights,
                "notes": spec.notes,
            }
        )
    for name in list_text_encoders(offline_only):
        tspec = get_text_encoder_spec(name)
        window = f"{tspec.max_length} tokens" if tspec.max_length else "any length"
        pooling = f", {tspec.pooling} pooling" if tspec.pooling else ""
        rows.append(
            {
                "kind": "text",
                "name": name,
                "dim": tspec.dim,
                "input": f"{window}{pooling}",
                "offline": tspec.offline,
                "family": tspec.kind,
                "pooling": tspec.pooling,
                "default_weights": tspec.source,
                "notes": tspec.notes,
            }
        )
    return rows
