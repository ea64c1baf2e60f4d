"""Image files to the store's model input: 8-bit gray, fitted to a square, resized (PIL, uint8).

How a non-square image becomes square is the *fit* (:data:`FITS`): ``crop`` keeps the central
square (what every store and run before the option used, and still the default of a key or
sidecar that does not name a fit), ``pad`` letterboxes the whole image into the square (black
bars), so no anatomy is dropped. A square image gives the same pixels, bit for bit, under both.
:func:`square_region` says where the model's square lies on the original, for overlays.

The embedding store feeds every encoder through this one step, cached or not, so vectors do
not depend on whether the decoded-image cache was used. JPEGs are decoded at reduced scale
with PIL's ``draft`` (DCT-domain downscaling) when the target size allows it; 16-bit PNGs
are scaled to 8 bits (PIL's own conversion would clip them). DICOM pixels are decoded by
:mod:`cxrfuse.data.dicom` (also the home of :func:`decoder_errors`); files and bytes of every
format come in here.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from cxrfuse.data.dicom import (
    _dicom,
    _dicom_int,
    _dicom_view,
    _one_line,
    decoder_errors,
    dicom_gray8,
)
from cxrfuse.problems import ConfigError, DataError

DECODE_VERSION = 1  # bump when the decoded pixels change (it is part of the cache key)
RESAMPLE = Image.Resampling.BILINEAR  # antialiased when downscaling, like torch antialias=True
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
MAX_PIXELS = 50_000_000
"""Largest image decoded (width x height): chest radiographs are at most ~4,300 x 3,500 (15 MP);
a larger file is refused with a DataError before its pixels are read (Pillow's own check only
warns from 89 MP and refuses from 179 MP)."""


_ROWS_PER_BLOCK = 256
"""Rows of a 16-bit image scaled to 8 bits at a time (a few MB of temporaries, never a wide
copy of the whole image)."""


def scale16_to8(pixels: np.ndarray) -> np.ndarray:
    """16-bit gray values (any integer array) as uint8: clipped to 0..65535, then
    ``(v + 128) // 257``, a block of rows at a time so that no int64 copy of the whole image
    is made (a 16-bit upload of a few MB once cost several hundred MB of temporaries)."""
    out = np.empty(pixels.shape, dtype=np.uint8)
    for start in range(0, pixels.shape[0], _ROWS_PER_BLOCK):
        block = pixels[start : start + _ROWS_PER_BLOCK].astype(np.int64)
        np.clip(block, 0, 65535, out=block)
        block += 128
        block //= 257
        out[start : start + _ROWS_PER_BLOCK] = block
    return out


def gray8(img: Image.Image) -> Image.Image:
    """An 8-bit gray ("L") version of ``img``; 16-bit pixels are scaled by 1/257, not clipped."""
    if img.mode == "L":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(scale16_to8(np.asarray(img)), mode="L")
    return img.convert("L")


Fit = Literal["crop", "pad"]
FITS: tuple[str, ...] = ("crop", "pad")
LEGACY_FIT: Fit = "crop"
"""The fit of stores and runs that record none (everything written before the option)."""
PAD_VALUE = 0
"""Gray level of the letterbox bars (black, as the collimated border of a radiograph)."""


def check_fit(fit: str) -> Fit:
    """``fit`` when it is one of :data:`FITS`; a ConfigError naming the choices otherwise."""
    if fit not in FITS:
        raise ConfigError(f"unknown image fit {fit!r}; choose one of {', '.join(FITS)}")
    return fit  # type: ignore[return-value]


@dataclass(frozen=True)
class SquareRegion:
    """Where the model's square input lies on an original image, in original pixels: the
    square spans ``[left, left + side) x [top, top + side)`` (negative offsets and a side over
    the image's own size for ``pad``: the bars lie outside the image)."""

    left: float
    top: float
    side: float
    fit: Fit

    def covers_all(self, width: int, height: int) -> bool:
        """Whether the model saw the whole image (nothing cropped off)."""
        return (self.left <= 0 and self.top <= 0 and self.left + self.side >= width
                and self.top + self.side >= height)  # fmt: skip


def square_region(width: int, height: int, fit: str = LEGACY_FIT) -> SquareRegion:
    """The part of a ``width`` x ``height`` image that :func:`fit_square` turns into the
    model's square (the central square for ``crop``; a square around the image for ``pad``)."""
    fit = check_fit(fit)
    if fit == "crop" or width == height:
        side = min(width, height)
        return SquareRegion((width - side) // 2, (height - side) // 2, side, fit)
    side = max(width, height)
    return SquareRegion((width - side) / 2, (height - side) / 2, side, fit)


def fit_square(img: Image.Image, size: int, fit: str = LEGACY_FIT) -> np.ndarray:
    """``img`` as a ``size`` x ``size`` uint8 gray array: its central square resized
    (``crop``) or the whole image resized to fit and centred on black bars (``pad``).
    A square image gives identical pixels under both fits."""
    fit = check_fit(fit)
    img = gray8(img)
    width, height = img.size
    if fit == "crop" or width == height:
        return resize_square(img, size)
    longer = max(width, height)
    new = (max(1, round(width * size / longer)), max(1, round(height * size / longer)))
    inner = img.resize(new, RESAMPLE) if new != (width, height) else img
    canvas = Image.new("L", (size, size), PAD_VALUE)
    canvas.paste(inner, ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.array(canvas, dtype=np.uint8)


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


def require_regular_file(path: object) -> None:
    """Refuse a FIFO, socket, device or folder given as an image before opening it (reading a
    FIFO blocks forever); a missing file is left to the opener to name (and a file object
    to the reader)."""
    if not isinstance(path, str | os.PathLike):
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")  # fmt: skip
        raise DataError(f"{path}: {kind}, not an image file")


def open_checked(path: str | Path) -> Image.Image:
    """An image file opened lazily (no pixel decoded yet), refused with a :class:`DataError`
    naming the file when it is over :data:`MAX_PIXELS`."""
    require_regular_file(path)
    try:
        with warnings.catch_warnings():  # the size is checked below, against MAX_PIXELS
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image too large to decode ({err}); the limit is "
                        f"{MAX_PIXELS:,} pixels") from err
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise DataError(f"{path}: image of {width} x {height} = {width * height:,} pixels is "
                        f"over the limit of {MAX_PIXELS:,} pixels (data.images.MAX_PIXELS)")
    return img


def decode_resized(path: str | Path, size: int, fit: str = LEGACY_FIT) -> np.ndarray:
    """Decode an image file to a (size, size) uint8 gray array (fitted by ``fit``, resized).
    A DICOM file (told by its ``DICM`` marker, not its name) goes through :func:`dicom_gray8`.

    An image over :data:`MAX_PIXELS` raises :class:`DataError` naming the file and its size."""
    if is_dicom_file(path):
        return fit_square(Image.fromarray(dicom_file_gray8(path), "L"), size, fit)
    with open_checked(path) as img, decoder_errors(f"{img.format or 'image'} file"):
        if img.format == "JPEG":
            img.draft("L", (size, size))  # decode at the smallest DCT scale still >= size
        img.load()
        return fit_square(img, size, fit)


# ----------------------------------------------------------------------------- uploaded bytes
# PNG, JPEG and DICOM told apart by their bytes (never by a file name), DICOM read with pydicom
# (data.dicom: modality LUT = rescale slope/intercept, VOI LUT or window, MONOCHROME1 inverted),
# sizes checked from the header before any pixel is decoded.

DICOM_PREAMBLE = 128
"""A DICOM Part 10 file: a 128-byte preamble, then ``DICM``."""
_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}


def sniff_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the leading bytes; None for anything else."""
    if data[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] == b"DICM":
        return "dicom"
    return next((kind for magic, kind in _MAGIC.items() if data.startswith(magic)), None)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says before its pixels are decoded."""

    format: str  # png, jpeg, dicom
    width: int
    height: int
    frames: int = 1
    view: str | None = None  # DICOM ViewPosition, normalised (PA, AP, LATERAL, LL, UNKNOWN)

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


def read_header(data: bytes) -> ImageHeader:
    """Format, size and (DICOM) view position of an image held in ``data``; ValueError when
    the bytes are no PNG, JPEG or DICOM."""
    kind = sniff_format(data)
    if kind is None:
        raise ValueError("not a PNG, JPEG or DICOM file (checked from its bytes)")
    if kind == "dicom":
        ds = _dicom(data, pixels=False)
        rows, cols = _dicom_int(ds, "Rows", 0), _dicom_int(ds, "Columns", 0)
        if rows <= 0 or cols <= 0:
            raise ValueError("DICOM file without an image (no Rows/Columns)")
        frames = _dicom_int(ds, "NumberOfFrames", 1)
        if frames < 1:
            raise ValueError(f"DICOM element NumberOfFrames is {frames}; at least 1 is expected")
        with decoder_errors("DICOM file"):
            view = _dicom_view(ds)
        return ImageHeader(kind, cols, rows, frames, view)
    try:
        with Image.open(io.BytesIO(data)) as img, decoder_errors(f"{kind.upper()} file"):
            width, height = img.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"not a readable {kind.upper()} file ({_one_line(err)})") from err
    return ImageHeader(kind, width, height)


def is_dicom_file(path: object) -> bool:
    """Whether ``path`` (a file name; a file object is never DICOM here) holds a DICOM Part 10
    file, told by the ``DICM`` marker after the preamble."""
    if not isinstance(path, str | os.PathLike):
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # never open a FIFO (it blocks); the opener refuses it by name
        with open(path, "rb") as handle:
            return sniff_format(handle.read(DICOM_PREAMBLE + 4)) == "dicom"
    except OSError:
        return False  # the PIL opener names the missing or unreadable file


def dicom_file_gray8(path: str | Path) -> np.ndarray:
    """:func:`dicom_gray8` of a DICOM file: its size checked against :data:`MAX_PIXELS` from
    the header first; any problem a :class:`DataError` naming the file."""
    require_regular_file(path)
    try:
        data = Path(path).read_bytes()
        header = read_header(data)
        if header.pixels > MAX_PIXELS:
            raise DataError(f"{path}: DICOM image of {header.width} x {header.height} x "
                            f"{header.frames} pixels is over the limit of {MAX_PIXELS:,} "
                            "pixels (data.images.MAX_PIXELS)")  # fmt: skip
        return dicom_gray8(data)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: {err}") from err


def gray8_bytes(data: bytes) -> np.ndarray:
    """Any PNG, JPEG or DICOM in ``data`` as a full-size HxW uint8 gray array."""
    if sniff_format(data) == "dicom":
        return dicom_gray8(data)
    with Image.open(io.BytesIO(data)) as img, decoder_errors(f"{img.format or 'image'} file"):
        img.load()
        return np.array(gray8(img), dtype=np.uint8)


def decode_resized_bytes(data: bytes, size: int, fit: str = LEGACY_FIT) -> np.ndarray:
    """:func:`decode_resized` for bytes (PNG and JPEG decoded exactly as files on disk are;
    DICOM through :func:`dicom_gray8`)."""
    if sniff_format(data) == "dicom":
        return fit_square(Image.fromarray(dicom_gray8(data), "L"), size, fit)
    return decode_resized(io.BytesIO(data), size, fit)  # type: ignore[arg-type]


def decode_native(path: str | Path) -> np.ndarray:
    """The full-size gray pixels of an image file at their own depth: uint8, or uint16 for a
    16-bit file (colour converted to 8-bit gray). :data:`MAX_PIXELS` is checked before any pixel
    is read, as in :func:`decode_resized`. A DICOM file gives :func:`dicom_gray8`'s uint8."""
    if is_dicom_file(path):
        return dicom_file_gray8(path)
    with open_checked(path) as img, decoder_errors(f"{img.format or 'image'} file"):
        img.load()
        if img.mode in _SIXTEEN_BIT_MODES:
            pixels = np.asarray(img)
            if pixels.dtype == np.uint16:
                return pixels.copy()
            return pixels.clip(0, 65535).astype(np.uint16)
        return np.array(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)


def native_gray8(pixels: np.ndarray) -> Image.Image:
    """:func:`decode_native`'s array as an 8-bit gray image (16 bits scaled by 1/257 as in
    :func:`gray8`)."""
    if pixels.dtype == np.uint8:
        return Image.fromarray(pixels)
    return Image.fromarray(scale16_to8(pixels))
