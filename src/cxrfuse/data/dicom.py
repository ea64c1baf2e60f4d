"""DICOM decoding for :mod:`cxrfuse.data.images`: pydicom's dataset read and checked element by
element, the transfer syntaxes that can be decoded here, pixels to 8-bit gray (modality LUT =
rescale slope/intercept, VOI LUT or window, MONOCHROME1 inverted), and the one way a decoder's
failure on damaged bytes (Pillow's or pydicom's) becomes a one-line ValueError
(:func:`decoder_errors`). Callers use :mod:`cxrfuse.data.images`, which tells the formats apart
by their bytes and checks sizes before any pixel is decoded."""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from cxrfuse.data.manifest import normalise_view

DECODER_ERRORS: tuple[type[BaseException], ...] = (
    SyntaxError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError,
    AttributeError, NotImplementedError, RuntimeError, OverflowError, ZeroDivisionError)
"""What Pillow and pydicom raise on damaged bytes besides OSError / ValueError (a PNG chunk
with a bad length: SyntaxError; a DICOM element of unknown VR: NotImplementedError; an
odd-length US value: pydicom's BytesLengthException, ...)."""


def _one_line(err: BaseException, limit: int = 200) -> str:
    """``err`` on one line, without Pillow's ``<_io.BytesIO object at 0x...>`` of an upload."""
    text = str(err).split("Traceback (most recent call last)")[0]  # pydicom quotes its own
    text = " ".join(re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def decoder_errors(what: str = "image") -> Iterator[None]:
    """Turn a decoder's failure on damaged bytes into a one-line ValueError (OSError and
    ValueError pass through), so that every caller's ``except (OSError, ValueError)`` names
    the file instead of an upload ending in a server error."""
    from pydicom.errors import BytesLengthException

    try:
        yield
    except (*DECODER_ERRORS, BytesLengthException) as err:
        raise ValueError(f"damaged {what} ({type(err).__name__}: {_one_line(err)})") from err



def _dicom(data: bytes, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with decoder_errors("DICOM file"):
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
            ds.walk(lambda *_: None)  # parse every element now (unknown VR, odd length, ...)
    except (InvalidDicomError, ValueError) as err:
        raise ValueError(f"not a readable DICOM file ({_one_line(err)})") from err
    return ds


def _dicom_one(ds: object, keyword: str, default: object = None) -> object:
    """The single value of a DICOM element (``default`` when absent or empty); a ValueError
    naming it when it holds several values (``Rows`` of ``512\\512``)."""
    from pydicom.multival import MultiValue

    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple | MultiValue):
        shown = "\\".join(str(v) for v in value)[:60]
        message = f"DICOM element {keyword} holds {len(value)} values ({shown}); one is expected"
        raise ValueError(message)  # noqa: TRY004 - every decoder failure is a ValueError
    return value


def _dicom_int(ds: object, keyword: str, default: int) -> int:
    value = _dicom_one(ds, keyword, default)
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"DICOM element {keyword} is not a whole number ({value!r})") from err
    if number != value and not isinstance(value, str):
        raise ValueError(f"DICOM element {keyword} is not a whole number ({value!r})")
    return number


def _dicom_view(ds: object) -> str | None:
    value = getattr(ds, "ViewPosition", None)
    return normalise_view(value) if value not in (None, "") else None



def transfer_syntax_problem(ds: object) -> str | None:
    """Why pydicom cannot decode the pixels of ``ds`` here (its transfer syntax, by name and
    UID, and the compressed syntaxes that can be decoded), or None when it can. Compressed
    syntaxes are decoded by pydicom's plugins: pylibjpeg (+ -libjpeg: JPEG baseline, extended,
    lossless; -openjpeg: JPEG 2000; -rle: RLE), Pillow, pyjpegls (JPEG-LS)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    uid = UID(str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    if not uid.is_compressed:
        return None
    name = uid.name if uid.name != uid else "unknown transfer syntax"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        decoder = None
    if decoder is not None and decoder.is_available:
        return None
    return (f"unsupported DICOM transfer syntax {name} ({uid}): cxrfuse decodes "
            f"{', '.join(decodable_syntaxes())}; convert the file (e.g. dcmtk `dcmdjpeg` or "
            "`gdcmconv --raw`) to uncompressed or one of these")


def decodable_syntaxes() -> list[str]:
    """Names of the compressed transfer syntaxes whose pixels can be decoded here."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        JPEG2000,
        DeflatedExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    )

    out = []
    for uid in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
                JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
                DeflatedExplicitVRLittleEndian):  # fmt: skip
        try:
            if uid == DeflatedExplicitVRLittleEndian or get_decoder(uid).is_available:
                out.append(uid.name)
        except NotImplementedError:
            continue
    return out


def dicom_gray8(data: bytes) -> np.ndarray:
    """The first frame of a DICOM image as HxW uint8: the modality LUT (rescale slope and
    intercept), the VOI LUT or window when the file has one, scaled to 0-255, MONOCHROME1
    inverted so that dense tissue is bright; colour images converted to gray. Compressed
    pixels are decoded by pydicom's plugins (:func:`transfer_syntax_problem`); a syntax none
    can decode is a ValueError naming it."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _dicom(data, pixels=True)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError("DICOM file without pixel data (no PixelData element)")
    problem = transfer_syntax_problem(ds)
    if problem:
        raise ValueError(problem)
    photometric = str(_dicom_one(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = _dicom_int(ds, "NumberOfFrames", 1)
    colour = _dicom_int(ds, "SamplesPerPixel", 1) > 1
    for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation"):
        _dicom_one(ds, keyword)  # one value each, or pydicom's decoder fails on a list
    try:
        with decoder_errors("DICOM pixel data"):
            array = ds.pixel_array
    except ValueError as err:
        raise ValueError(f"cannot decode the DICOM pixel data ({_one_line(err)})") from err
    if frames > 1:
        array = array[0]
    if colour:
        rgb = np.asarray(array)
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            rgb = convert_color_space(rgb, photometric, "RGB")
        return np.asarray(Image.fromarray(rgb.astype(np.uint8), "RGB").convert("L"))
    with decoder_errors("DICOM rescale or window (modality / VOI LUT)"):
        values = apply_modality_lut(array, ds)
        values = apply_voi_lut(values, ds)  # unchanged when the file has no VOI LUT or window
    return window_to_gray8(values, invert=photometric == "MONOCHROME1")


def window_to_gray8(values: np.ndarray, invert: bool = False) -> np.ndarray:
    """Values stretched from their minimum to their maximum onto 0-255 (inverted for
    MONOCHROME1), in place on one float64 array (a writable float64 ``values`` is
    overwritten): ``round((v - lo) / (hi - lo) * 255)``, the same arithmetic that once made
    five full-size float64 temporaries."""
    scaled = np.asarray(values, dtype=np.float64)
    if not scaled.flags.writeable:
        scaled = scaled.copy()
    lo, hi = float(scaled.min()), float(scaled.max())
    if hi > lo:
        scaled -= lo
        scaled /= hi - lo
    else:
        scaled.fill(0.0)
    if invert:
        np.subtract(1.0, scaled, out=scaled)
    scaled *= 255.0
    np.round(scaled, out=scaled)
    return scaled.astype(np.uint8)

