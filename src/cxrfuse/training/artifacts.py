"""What a run directory stores besides tables: head weights, the JSON sidecar, and the fitted
state of a text encoder that is fitted on the training split (tf-idf), all without pickles.

The tf-idf state is the vectorizer's parameters and vocabulary (JSON) plus its idf vector and
SVD basis (safetensors); :func:`load_text_state` rebuilds an encoder that gives the same
vectors as the one that filled the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from cxrfuse.fusion.heads import FusionHead, build_head
from cxrfuse.problems import CxrfuseError

SIDECAR_FORMAT = "cxrfuse-head/1"
WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
TEXT_STATE_JSON = "text_encoder.json"
TEXT_STATE_TENSORS = "text_encoder.safetensors"


def save_head(head: torch.nn.Module, run_dir: Path, sidecar: dict[str, Any]) -> None:
    """``model.safetensors`` (head weights) and ``model.json`` (how to rebuild it)."""
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(run_dir / WEIGHTS_FILE), metadata={"format": SIDECAR_FORMAT})
    (run_dir / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, default=str))


def read_sidecar(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SIDECAR_FILE
    if not path.is_file():
        raise CxrfuseError(f"{run_dir}: no {SIDECAR_FILE}; is this a finished cxrfuse run directory?")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CxrfuseError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        sidecar = sidecar if isinstance(sidecar, dict) else {}
        raise CxrfuseError(f"{path}: format {sidecar.get('format')!r}, expected {SIDECAR_FORMAT!r}")
    return sidecar


def load_head(run_dir: Path, sidecar: dict[str, Any] | None = None) -> FusionHead:
    """The trained head of a run directory, in eval mode on the CPU."""
    sidecar = sidecar or read_sidecar(run_dir)
    where = Path(run_dir) / SIDECAR_FILE
    try:
        spec = sidecar["head"]
        kwargs = {k: v for k, v in spec["kwargs"].items() if k != "kind"}
        head = build_head(spec["kind"], **kwargs)
    except (KeyError, TypeError, ValueError) as err:
        raise CxrfuseError(f"{where}: field 'head' cannot rebuild a fusion head ({err})") from err
    weights = Path(run_dir) / WEIGHTS_FILE
    try:
        head.load_state_dict(load_file(str(weights), device="cpu"))
    except (OSError, RuntimeError) as err:
        raise CxrfuseError(f"{weights}: does not hold the weights of {where} ({err})") from err
    return head.eval()


# ----------------------------------------------------------------------------- text state


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, type):  # dtype=np.float32
            out[key] = {"dtype": np.dtype(value).name}
        elif isinstance(value, tuple):
            out[key] = list(value)
        elif value is None or isinstance(value, (str, int, float, bool, list)):
            out[key] = value
        else:
            raise CxrfuseError(f"cannot store text encoder parameter {key}={value!r} as JSON")
    return out


def _python_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and set(value) == {"dtype"}:
            out[key] = np.dtype(value["dtype"]).type
        elif key == "ngram_range" and isinstance(value, list):
            out[key] = tuple(value)
        else:
            out[key] = value
    return out


def save_text_state(encoder: Any, run_dir: Path) -> dict[str, str] | None:
    """Store a fitted tf-idf encoder's state; None for pretrained encoders (nothing to store)."""
    if not getattr(encoder, "requires_fit", False):
        return None
    vectorizer = getattr(encoder, "vectorizer", None)
    if vectorizer is None or not hasattr(vectorizer, "vocabulary_"):
        raise CxrfuseError(
            f"text encoder {getattr(encoder, 'name', '?')!r} is fitted on the training split but "
            "has no tf-idf vectorizer state cxrfuse knows how to store; predict cannot rebuild it"
        )
    settings = {
        "svd_dim": encoder.svd_dim,
        "max_features": encoder.max_features,
        "min_df": encoder.min_df,
        "ngram_range": list(encoder.ngram_range),
        "random_state": encoder.random_state,
    }
    state = {
        "encoder": encoder.name,
        "settings": settings,
        "vectorizer_params": _json_params(vectorizer.get_params()),
        "vocabulary": {term: int(i) for term, i in vectorizer.vocabulary_.items()},
    }
    arrays = {"idf": np.ascontiguousarray(vectorizer.idf_)}
    if encoder.svd is not None:
        arrays["svd_components"] = np.ascontiguousarray(encoder.svd.components_)
    (run_dir / TEXT_STATE_JSON).write_text(json.dumps(state))
    save_numpy(arrays, str(run_dir / TEXT_STATE_TENSORS))
    return {"json": TEXT_STATE_JSON, "tensors": TEXT_STATE_TENSORS}


def load_text_state(run_dir: Path, files: dict[str, str]) -> Any:
    """A fitted :class:`~cxrfuse.encoders.text.TfidfEncoder` from :func:`save_text_state` files."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from cxrfuse.encoders.text import TfidfEncoder

    state = json.loads((Path(run_dir) / files["json"]).read_text())
    arrays = load_numpy(str(Path(run_dir) / files["tensors"]))
    settings = dict(state["settings"], ngram_range=tuple(state["settings"]["ngram_range"]))
    encoder = TfidfEncoder(name=state["encoder"], **settings)
    vectorizer = TfidfVectorizer(**_python_params(state["vectorizer_params"]))
    vectorizer.vocabulary_ = dict(state["vocabulary"])
    vectorizer.idf_ = arrays["idf"]
    svd = None
    if "svd_components" in arrays:
        svd = TruncatedSVD(n_components=arrays["svd_components"].shape[0])
        svd.components_ = arrays["svd_components"]
        svd.n_features_in_ = arrays["svd_components"].shape[1]
    encoder.vectorizer, encoder.svd = vectorizer, svd
    return encoder
