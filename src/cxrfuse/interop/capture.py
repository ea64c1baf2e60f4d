"""Grad-CAM overlays as DICOM Secondary Capture images (highdicom ``SCImage``).

The pixels are the panel :func:`cxrfuse.explain.overlay.overlay_panel` draws (view, map
blended on the run's fixed colour scale, colour bar, caption), exactly the PNG that
``predict --explain`` and ``/v1/predict?explain`` return, so nothing is drawn anew. Each
capture shares the study of its source image, references it (Source Image Sequence and
Referenced Image Sequence), says BurnedInAnnotation YES and that it is machine generated.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxrfuse.interop import codes as cx
from cxrfuse.interop.sources import Source
from cxrfuse.problems import DataError

SC_SERIES_NUMBER = 9003


def overlay_pixels(overlay: Mapping[str, Any]) -> np.ndarray:
    """The RGB panel of one overlay of an answer (``png_base64``, ``png`` bytes or ``file``)."""
    if overlay.get("png") is not None:
        data = bytes(overlay["png"])
    elif overlay.get("png_base64"):
        data = base64.b64decode(overlay["png_base64"])
    elif overlay.get("file"):
        data = Path(overlay["file"]).read_bytes()
    else:
        raise DataError(f"overlay {overlay.get('image')} / {overlay.get('label')}: no pixels "
                        "(png_base64, png or file)")  # fmt: skip
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def _reference(source: Source) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.sop_class_uid
    item.ReferencedSOPInstanceUID = source.sop_instance_uid
    return item


def secondary_capture(overlay: Mapping[str, Any], source: Source, run_name: str, version: str,
                      *, series_uid: str, instance_number: int) -> hd.sc.SCImage:  # fmt: skip
    """One overlay as a Secondary Capture in the study of ``source``."""
    pixels = overlay_pixels(overlay)
    ref = source.header
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=pixels, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT",
        series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=str(generate_uid()), instance_number=instance_number,
        manufacturer="cxrfuse (research software, not a medical device)",
        patient_orientation=("L", "F"))  # fmt: skip
    # the panel holds the view twice side by side plus a bar: no single orientation is
    # claimed (Type 2: present, empty), unless the source's own orientation is known
    orientation = list(getattr(ref, "PatientOrientation", []) or [])
    sc.PatientOrientation = orientation if len(orientation) == 2 else ""
    if "Laterality" not in sc:  # General Series, Type 2C (dciodvfy asks for it): unknown
        sc.Laterality = getattr(ref, "Laterality", "") or ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    label, method = str(overlay.get("label", "")), str(overlay.get("method", "gradcam"))
    sc.SeriesDescription = "cxrfuse Grad-CAM overlays (machine generated)"
    sc.DerivationDescription = (f"{method} map of label {label!r} from cxrfuse run {run_name}, "
                                f"burned into a copy of the source view with its colour bar")[:1024]
    caption = overlay.get("caption") or []
    lines = [caption] if isinstance(caption, str) else list(caption)
    sc.ImageComments = (f"{cx.OVERLAY_NOTE}. " + " ".join(str(x) for x in lines))[:10240]
    sc.SourceImageSequence = [_reference(source)]
    sc.ReferencedImageSequence = [_reference(source)]
    sc.SoftwareVersions = version[:64]
    sc.ManufacturerModelName = run_name[:64]
    sc.LossyImageCompression = "00"
    return sc
