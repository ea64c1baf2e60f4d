"""Results a hospital system can read: DICOM objects of one prediction (docs/dicom.md).
FHIR R4: :mod:`cxrfuse.interop.fhir`; a DICOMweb PACS round trip: :mod:`cxrfuse.interop.pacs`.

    from cxrfuse.interop import dicom_results, write_dicom

    objs = dicom_results(prediction, images, RunDir(run_dir), overlays=answer["overlays"],
                         draft=answer["report_draft"])
    write_dicom(objs, "out/")        # one .dcm per object

:func:`dicom_results` returns, in this order: the TID 1500 Comprehensive SR of the study
(always), the machine-draft SR (when ``draft`` is given), one Secondary Capture per Grad-CAM
overlay (``overlays`` as :meth:`cxrfuse.serve.Service.overlays` returns them). All objects
share the study (and patient) of the source images; PNG/JPEG sources get generated UIDs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxrfuse.files import atomic_path
from cxrfuse.inference import Prediction, StudyImage
from cxrfuse.interop.capture import secondary_capture
from cxrfuse.interop.sources import Source, study_sources
from cxrfuse.interop.sr import cxrfuse_version, draft_report, measurement_report, model_facts
from cxrfuse.problems import DataError
from cxrfuse.rundir import RunDir

__all__ = [
    "Source",
    "dicom_bytes",
    "dicom_results",
    "model_facts",
    "object_kind",
    "study_sources",
    "write_dicom",
]  # fmt: skip


def dicom_results(prediction: Prediction, images: Sequence[StudyImage], run: RunDir | str | Path,
                  *, overlays: list[Mapping[str, Any]] | None = None,
                  draft: str | Mapping[str, Any] | None = None) -> list[Dataset]:  # fmt: skip
    """The DICOM objects of one study's ``prediction`` (see the module doc). ``images`` are the
    study's images as given to the predictor (same order); ``draft`` a report text or the
    answer's ``report_draft`` mapping; ``overlays`` the answer's overlay dicts (``image``,
    ``label``, ``method``, ``caption``, and ``png_base64`` / ``png`` / ``file``)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    sources = study_sources(images)
    objs: list[Dataset] = [measurement_report(prediction, sources, run)]
    if draft is not None:
        objs.append(draft_report(draft, sources, prediction.run))
    if overlays:
        by_name = {s.name: s for s in sources}
        series = str(generate_uid())
        version = cxrfuse_version()
        for number, overlay in enumerate(overlays, start=1):
            source = by_name.get(str(overlay.get("image")))
            if source is None:
                raise DataError(f"overlay of {overlay.get('image')!r}: no such source image "
                                f"(images: {', '.join(by_name)})")  # fmt: skip
            objs.append(secondary_capture(overlay, source, prediction.run, version,
                                          series_uid=series, instance_number=number))  # fmt: skip
    return objs


def object_kind(ds: Dataset) -> str:
    """``sr``, ``draft`` or ``overlay``: what one object of :func:`dicom_results` is."""
    if str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.88"):
        return "draft" if getattr(ds, "PreliminaryFlag", "") == "PRELIMINARY" and \
            "DRAFT" in str(getattr(ds, "SeriesDescription", "")) else "sr"
    return "overlay"


def dicom_bytes(ds: Dataset) -> bytes:
    """One object as DICOM Part 10 file bytes (preamble, file meta)."""
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom(objs: Sequence[Dataset], dest: str | Path) -> list[Path]:
    """Write ``objs`` crash-safely. ``dest`` ending in ``.dcm`` takes exactly one object;
    otherwise it is a folder (created) receiving ``<kind>-<SOPInstanceUID>.dcm`` per object."""
    dest = Path(dest)
    if dest.suffix.lower() == ".dcm":
        if len(objs) != 1:
            raise DataError(f"{dest}: one file for {len(objs)} DICOM objects; give a folder")
        paths = [dest]
        dest.parent.mkdir(parents=True, exist_ok=True)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        paths = [dest / f"{object_kind(ds)}-{ds.SOPInstanceUID}.dcm" for ds in objs]
    for ds, path in zip(objs, paths):
        with atomic_path(path) as tmp:
            tmp.write_bytes(dicom_bytes(ds))
    return paths
