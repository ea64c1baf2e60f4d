"""Phantom files: their names under the output folder and the PNG writer."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cxrfuse.data.manifest import LABEL_PREFIX, label_column
from cxrfuse.data.phantoms._cases import stable_seed
from cxrfuse.data.phantoms._render import _view_name
from cxrfuse.files import atomic_path

Array = np.ndarray


def file_stem(study_id: str) -> str:
    """A file-name-safe form of a study id (a hash suffix keeps altered ids distinct)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", study_id)
    return stem if stem == study_id else f"{stem}-{stable_seed(study_id) % 16**6:06x}"


def image_path(out_dir: Path, study_id: str, view: str) -> Path:
    """``out_dir/images/{study}_{frontal|lateral}.png``."""
    return Path(out_dir) / "images" / f"{file_stem(study_id)}_{_view_name(view)}.png"


def mask_path(out_dir: Path, study_id: str, view: str, label: str) -> Path:
    """``out_dir/masks/{study}_{frontal|lateral}_{label slug}.png`` (binary PNG)."""
    slug = label_column(label)[len(LABEL_PREFIX) :]
    return Path(out_dir) / "masks" / f"{file_stem(study_id)}_{_view_name(view)}_{slug}.png"


def encode_png(image: Array, level: int = 1) -> bytes:
    """8-bit greyscale PNG ('Up' filter, run-length deflate): ~3x faster than Pillow's."""
    h, w = image.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 2
    rows[0, 1:] = image[0]
    rows[1:, 1:] = image[1:] - image[:-1]  # uint8 arithmetic wraps, as PNG expects

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    # run-length deflate: on noisy radiographs as small as the default strategy, twice as fast
    packer = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", packer.compress(rows.tobytes()) + packer.flush())
        + chunk(b"IEND", b"")
    )


def write_png(array: Array, path: Path, level: int) -> None:
    """Write atomically (:func:`cxrfuse.files.atomic_path`) so an interrupted run leaves no
    stubs. Images go through :func:`encode_png`; boolean masks are written as 1-bit PNGs.
    """
    with atomic_path(path) as tmp:
        if array.dtype == np.bool_:
            Image.fromarray(array).save(tmp, format="PNG", compress_level=max(level, 1))
        else:
            tmp.write_bytes(encode_png(array, level))
