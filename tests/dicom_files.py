"""Real DICOM files of a gray image in each transfer syntax cxrfuse decodes, written by pydicom
(a uniquely named module shared by tests/data, tests/serve, tests/interop and the battery).

Uncompressed, JPEG 2000 lossless and RLE lossless are encoded by pydicom's own encoders
(pylibjpeg-openjpeg for JPEG 2000); JPEG baseline, which pydicom cannot encode, is Pillow's
JPEG bytes encapsulated by pydicom. An MPEG-2 file (video: no image decoder) stands for an
unsupported transfer syntax.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

LOSSLESS = ("explicit", "jpeg2000-lossless", "rle")
CODECS = (*LOSSLESS, "jpeg-baseline")
JPEG_QUALITY = 95


def _dataset(gray: np.ndarray, view: str | None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray (presentation)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "DX", "test-0001", "Test^Patient"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "A1", "1"
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(gray, dtype=np.uint8).tobytes()
    return ds


def dicom_of(gray: np.ndarray, codec: str = "explicit", view: str | None = "PA") -> bytes:
    """A DICOM Part 10 file of the 8-bit gray ``gray`` in transfer syntax ``codec``
    (:data:`CODECS`, or ``mpeg2`` for an undecodable one)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    ds = _dataset(gray, view)
    if codec == "jpeg2000-lossless":
        ds.compress(JPEG2000Lossless)
    elif codec == "rle":
        ds.compress(RLELossless)
    elif codec == "jpeg-baseline":
        buffer = io.BytesIO()
        Image.fromarray(gray, "L").save(buffer, format="JPEG", quality=JPEG_QUALITY)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    elif codec == "mpeg2":
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
    elif codec != "explicit":
        raise ValueError(codec)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stretched(gray: np.ndarray) -> np.ndarray:
    """``gray`` stretched to span 0-255, as cxrfuse stretches a DICOM without a window: the
    PNG and the DICOM of the stretched pixels then decode to the same model input."""
    gray = gray.astype(np.float64)
    lo, hi = gray.min(), gray.max()
    return np.round((gray - lo) / max(hi - lo, 1e-9) * 255.0).astype(np.uint8)


def phantom_radiograph(size: int = 96, seed: int = 0) -> np.ndarray:
    """A synthetic chest-like gray image (two dark lung fields, bright mediastinum, noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.45 * (np.exp(-((xx - 0.3) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08))
                         + np.exp(-((xx - 0.7) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08)))
    img += 0.05 * rng.standard_normal((size, size))
    return stretched(np.clip(img, 0, 1))
