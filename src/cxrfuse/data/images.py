"""Image files to the store's model input: 8-bit gray, central square, resized (PIL, uint8).

The embedding store feeds every encoder through this one step, cached or not, so vectors do
not depend on whether the decoded-image cache was used. JPEGs are decoded at reduced scale
with PIL's ``draft`` (DCT-domain downscaling) when the target size allows it; 16-bit PNGs
are scaled to 8 bits (PIL's own conversion would clip them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cxrfuse.problems import DataError

DECODE_VERSION = 1  # bump when the decoded pixels change (it is part of the cache key)
RESAMPLE = Image.Resampling.BILINEAR  # antialiased when downscaling, like torch antialias=True
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
MAX_PIXELS = 50_000_000
"""Largest image decoded (width x height): chest radiographs are at most ~4,300 x 3,500 (15 MP);
a larger file is refused with a DataError before its pixels are read (Pillow's own check only
warns from 89 MP and refuses from 179 MP)."""


def gray8(img: Image.Image) -> Image.Image:
    """An 8-bit gray ("L") version of ``img``; 16-bit pixels are scaled by 1/257, not clipped."""
    if img.mode == "L":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((wide + 128) // 257).astype(np.uint8), mode="L")
    return img.convert("L")


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """The central square of ``img`` resized to ``size`` x ``size``, as a uint8 array."""
    img = gray8(img)
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    out = img.crop(box) if (width, height) != (side, side) else img
    if side != size:  # crop first, so the filter never reaches pixels outside the square
        out = out.resize((size, size), RESAMPLE)
    return np.array(out, dtype=np.uint8)  # a writable copy


def decode_resized(path: str | Path, size: int) -> np.ndarray:
    """Decode an image file to a (size, size) uint8 gray array (central square, resized).

    An image over :data:`MAX_PIXELS` raises :class:`DataError` naming the file and its size."""
    try:
        with warnings.catch_warnings():  # the size is checked below, against MAX_PIXELS
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image too large to decode ({err}); the limit is "
                        f"{MAX_PIXELS:,} pixels") from err
    with opened as img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise DataError(f"{path}: image of {width} x {height} = {width * height:,} pixels is "
                            f"over the limit of {MAX_PIXELS:,} pixels (data.images.MAX_PIXELS)")
        if img.format == "JPEG":
            img.draft("L", (size, size))  # decode at the smallest DCT scale still >= size
        img.load()
        return resize_square(img, size)
