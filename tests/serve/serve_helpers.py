"""Helpers of the serving tests: the served run's config and real DICOM files (pydicom)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def dicom_bytes(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", view: str | None = "PA",
                slope: float = 1.0, intercept: float = 0.0,
                window: tuple[float, float] | None = None) -> bytes:
    """A real DICOM Part 10 file (Secondary Capture, explicit VR little endian) of ``pixels``
    (uint16 stored values), written by pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "phantom"
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_as_dicom(path: str, **kwargs) -> bytes:
    """A phantom PNG stored as 12-bit DICOM (8-bit values x 16), MONOCHROME2."""
    gray = np.asarray(Image.open(path).convert("L"), dtype=np.uint16)
    return dicom_bytes(gray * 16, **kwargs)


def run_config(tmp: Path, manifest: Path) -> dict:
    return {
        "name": "served",
        "runs_dir": str(tmp / "runs"),
        "data": {"manifest": str(manifest), "task": "normal-abnormal", "store": str(tmp / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": 64, "views": "mean",
                  "embed_batch_size": 16},
        "text": {"encoder": "tfidf", "sections": ["indication"], "options": {"svd_dim": 8}},
        "model": {"kind": "concat-mlp", "modalities": ["image", "text"], "hidden": [16]},
        "training": {"max_epochs": 3, "batch_size": 8, "early_stopping": {"patience": 2}},
        "evaluation": {"n_boot": 20},
    }
