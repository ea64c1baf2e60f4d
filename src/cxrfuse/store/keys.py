"""What an embedding depends on, as a key: the store folder of a set of vectors is named by a
digest of its inputs (images and their file stamps, encoder, weights digest, preprocessing,
precision, dtype; or the prepared texts, text configuration, task and encoder fingerprint).
Bump :data:`STORE_VERSION` when the vectors a key names would change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cxrfuse.data.images import DECODE_VERSION, LEGACY_FIT
from cxrfuse.data.manifest import Manifest
from cxrfuse.files import file_stamp, sha256_json

if TYPE_CHECKING:
    from cxrfuse.encoders.image import ImageEncoder
    from cxrfuse.encoders.text import TextEncoder
    from cxrfuse.text import TextConfig

STORE_VERSION = 2  # 2: images go through cxrfuse.data.images (uint8 resize, PIL)

KEY_LENGTH = 16


@dataclass(frozen=True)


class ImageRecord:
    study_id: str
    image_id: str
    path: str
    view: str


def image_records(manifest: Manifest) -> list[ImageRecord]:
    """Every view with a path, in manifest order."""
    return [
        ImageRecord(str(sid), str(v["image_id"]), str(v["path"]), str(v["view"]))
        for sid, views in zip(manifest.df["study_id"], manifest.df["views"])
        for v in views
        if v.get("path")
    ]


def weights_fingerprint(encoder: torch.nn.Module) -> str:
    """sha256 of every state_dict tensor (names, dtypes, shapes, bytes); cached on the module."""
    cached = getattr(encoder, "_cxrfuse_weights_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    object.__setattr__(encoder, "_cxrfuse_weights_fingerprint", value)
    return value


def preprocessing_spec(encoder: ImageEncoder) -> dict[str, Any]:
    """What the encoder's preprocessing depends on."""
    spec = encoder.spec
    out = {
        "input_size": spec.input_size,
        "channels": spec.channels,
        "normalisation": spec.normalisation,
        "grayscale_to_rgb": spec.grayscale_to_rgb,
        "decode_version": DECODE_VERSION,
    }
    fit = getattr(spec, "fit", LEGACY_FIT)
    if fit != LEGACY_FIT:  # a crop store keeps the key it had before the option existed
        out["fit"] = fit
    return out


def image_store_key(
    manifest: Manifest,
    encoder: ImageEncoder,
    dtype: str = "float32",
    precision: str = "float32",
) -> tuple[str, dict[str, Any]]:
    """The store key (16 hex) and the inputs it digests."""
    records = image_records(manifest)
    return image_key(records, [file_stamp(r.path) for r in records], encoder, dtype, precision)


def image_key(
    records: Sequence[ImageRecord],
    stamps: Sequence[tuple[int | None, int | None]],
    encoder: ImageEncoder,
    dtype: str,
    precision: str,
) -> tuple[str, dict[str, Any]]:
    images = sorted((r.study_id, r.image_id, r.path, *s) for r, s in zip(records, stamps))
    inputs = {
        "store_version": STORE_VERSION,
        "kind": "images",
        "images_sha256": sha256_json(images),
        "n_images": len(images),
        "encoder": encoder.spec.name,
        "weights": str(getattr(encoder, "weights", "")),
        "weights_sha256": weights_fingerprint(encoder),
        "preprocessing": preprocessing_spec(encoder),
        "precision": precision,
        "dtype": dtype,
    }
    return sha256_json(inputs)[:KEY_LENGTH], inputs


def text_key(
    study_ids: Sequence[str],
    texts: Sequence[str],
    encoder: TextEncoder,
    text_config: TextConfig,
    task: str | None,
) -> tuple[str, dict[str, Any]]:
    """The text store key (16 hex) and the inputs it digests."""
    inputs = {
        "store_version": STORE_VERSION,
        "kind": "texts",
        "texts_sha256": sha256_json([list(study_ids), list(texts)]),
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "fingerprint": encoder.fingerprint(),
        "text_config": text_config.model_dump(),
        "task": task,
    }
    return sha256_json(inputs)[:KEY_LENGTH], inputs
