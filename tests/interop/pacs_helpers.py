"""Radiographs as DICOM instances (uncompressed, JPEG baseline, or with a transfer syntax no
decoder reads), a loader into Orthanc (STOW-RS) and fake DICOMweb servers (one answering 500,
one that never answers) on loopback."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

MPEG2 = UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile @ Main Level: no pydicom decoder


def radiograph(png: Path | np.ndarray, study_uid: str, *, syntax: str = "explicit",
               date: str = "20240102", patient: str = "PACS1", modality: str = "CR",
               view: str = "PA", pixels: bool = True, geometry: bool = True) -> Dataset:  # fmt: skip
    """A CR instance of a grayscale image: ``syntax`` ``explicit`` (uncompressed), ``jpeg``
    (JPEG baseline, the PNG re-encoded by Pillow at quality 90) or ``mpeg2`` (bytes no
    decoder reads); ``pixels=False`` leaves the pixel data out; ``geometry=False`` the
    Patient Orientation and Imager Pixel Spacing (a PNG converted knows neither)."""
    array = np.asarray(Image.open(png).convert("L")) if isinstance(png, Path) else png
    ds = Dataset()
    ds.preamble = b"\x00" * 128  # a Part 10 file, as a modality sends it
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = {"explicit": ExplicitVRLittleEndian, "jpeg": JPEGBaseline8Bit,
                              "mpeg2": MPEG2}[syntax]  # fmt: skip
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = modality, view, "CHEST"
    if geometry:  # a PA chest film (CR: Type 2C and 3)
        ds.PatientOrientation, ds.ImagerPixelSpacing = ["L", "F"], [0.5, 0.5]
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient, "Test^Pacs", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = date, "120000", "1", "A" + patient
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "test"
    if not pixels:
        return ds
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if syntax == "explicit":
        ds.PixelData = array.astype(np.uint8).tobytes()
    elif syntax == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(array.astype(np.uint8), "L").save(buffer, "JPEG", quality=90)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    if syntax != "explicit":
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds


def orthanc_rest(dicomweb: str) -> str:
    """Orthanc's REST root from its DICOMweb root."""
    return dicomweb.rsplit("/dicom-web", 1)[0]


def instance_count(dicomweb: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{orthanc_rest(dicomweb)}/statistics", timeout=10) as answer:
        return int(json.loads(answer.read())["CountInstances"])


def store(dicomweb: str, datasets: list[Dataset]) -> None:
    from dicomweb_client import DICOMwebClient

    DICOMwebClient(dicomweb).store_instances(datasets)


@contextmanager
def fake_dicomweb(mode: str, study_uid: str = "1.2.3.4.5") -> Iterator[str]:
    """A DICOMweb root on 127.0.0.1 whose server answers HTTP 500 to everything (``"500"``),
    finds one study and answers 500 to anything after (``"500-after-search"``), never
    answers (``"hang"``), or finds one study and then never answers (``"hang-after-search"``)."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            searching = self.path.split("?")[0].rstrip("/").endswith("/studies")
            if searching and mode.endswith("-after-search"):
                body = json.dumps([{"0020000D": {"vr": "UI", "Value": [study_uid]},
                                    "00080020": {"vr": "DA", "Value": ["20240102"]}}]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if mode.startswith("hang"):
                release.wait(60)
                return
            body = b"Internal Server Error"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        time.sleep(0)
