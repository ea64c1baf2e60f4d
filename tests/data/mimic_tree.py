"""A tiny MIMIC-CXR-JPG v2.0.0 tree for tests: 6 subjects, 10 studies, 13 images.

``write_mimic_tree(root)`` writes the three CSVs (gzipped by default), small real JPEGs at
``files/pXX/pNNN/sNNN/<dicom>.jpg`` and the reports as ``mimic-cxr-reports.zip`` or loose
``files/pXX/pNNN/sNNN.txt`` files. What is in it, on purpose:

- views PA, AP, LATERAL and LL; studies s50000002 and s50000006 are AP only, s50000008 is
  LATERAL only (the default PA filter drops those three);
- CheXpert values 1.0, 0.0, -1.0 (s50000002 Pleural Effusion, s50000003 Pneumonia), blanks,
  and ``1`` written without the ``.0`` (s50000004);
- a malformed metadata row (subject ``1x000006``, line 15) and a malformed CheXpert row
  (s50000009, Edema ``2.0``, line 10): s50000009 stays, with no labels;
- d10.jpg (study s50000007) is not written; the report of s50000010 is empty;
- reports with INDICATION, with HISTORY instead, and with REASON FOR EXAMINATION and a
  NOTIFICATION after the impression.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path
from typing import Literal

from PIL import Image

CHEXPERT = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
    "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)

REPORT_INDICATION = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 The lungs are clear.  No pleural effusion or pneumothorax.
 Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

REPORT_HISTORY = """                                 FINAL REPORT
 HISTORY:  Shortness of breath.

 COMPARISON:  ___.

 FINDINGS:  Hazy opacity at the right base, possibly pneumonia.

 IMPRESSION:  Possible right basilar pneumonia.
"""

REPORT_REASON = """                                 FINAL REPORT
 PA AND LATERAL CHEST, ___

 REASON FOR EXAMINATION:  Fever.

 IMPRESSION:  Right lower lobe consolidation
 consistent with pneumonia.

 NOTIFICATION:  Dr. ___ was paged at 10:30.
"""


def _report(text: str) -> str:
    return f"                                 FINAL REPORT\n INDICATION:  Check.\n\n IMPRESSION:  {text}\n"


# subject, study, [(dicom_id, ViewPosition)], split, {label: raw value}, report text
STUDIES: list[tuple[int, int, list[tuple[str, str]], str, dict[str, str], str]] = [
    (10000001, 50000001, [("d01", "PA"), ("d02", "LATERAL")], "train", {"No Finding": "1.0"},
     REPORT_INDICATION),
    (10000001, 50000002, [("d03", "AP")], "train",
     {"Pneumonia": "1.0", "Pleural Effusion": "-1.0"}, _report("Pneumonia.")),
    (10000002, 50000003, [("d04", "PA"), ("d05", "LATERAL")], "train",
     {"Pneumonia": "-1.0", "Edema": "0.0"}, REPORT_HISTORY),
    (11000003, 50000004, [("d06", "PA")], "validate", {"No Finding": "1"}, _report("Normal.")),
    (11000003, 50000005, [("d07", "PA"), ("d08", "LL")], "validate",
     {"Pneumonia": "1.0", "Consolidation": "1.0"}, REPORT_REASON),
    (12000004, 50000006, [("d09", "AP")], "train", {"Cardiomegaly": "1.0", "Pneumonia": "0.0"},
     _report("Cardiomegaly.")),
    (13000005, 50000007, [("d10", "PA")], "train", {"No Finding": "1.0"}, _report("Clear.")),
    (13000005, 50000008, [("d11", "LATERAL")], "train", {"Atelectasis": "1.0"},
     _report("Atelectasis.")),
    (14000006, 50000009, [("d12", "PA")], "test", {"Edema": "2.0"}, _report("Edema?")),
    (14000006, 50000010, [("d13", "PA")], "test", {"No Finding": "1.0"}, ""),
]
MISSING_JPG = "d10"
BAD_METADATA_ROW = "d99,1x000006,50000010,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531"


def _write_text(path: Path, text: str, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", newline="") as handle:
            handle.write(text)
    else:
        path.write_text(text, newline="")
    return path


def _csv(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=shade).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())


def _study_dir(subject: int, study: int) -> str:
    return f"p{str(subject)[:2]}/p{subject}/s{study}"


def metadata_rows() -> list[str]:
    """The metadata CSV lines after the header (13 images, then the malformed row)."""
    rows = [f"{d},{subj},{study},CHEST (PA AND LAT),{view},3056,2544,21800506,213014.531"
            for subj, study, images, *_ in STUDIES for d, view in images]
    return [*rows, BAD_METADATA_ROW]


def write_mimic_tree(
    root: Path,
    *,
    reports: Literal["zip", "txt"] | None = "zip",
    gz: bool = True,
    images: bool = True,
) -> Path:
    """Write the tiny tree under ``root`` and return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    header = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime"
    _write_text(root / "mimic-cxr-2.0.0-metadata.csv", "\n".join([header, *metadata_rows()]) + "\n", gz)
    labels = [[str(subj), str(study), *(lab.get(n, "") for n in CHEXPERT)]
              for subj, study, _, _, lab, _ in STUDIES]
    _write_text(root / "mimic-cxr-2.0.0-chexpert.csv",
                _csv(["subject_id", "study_id", *CHEXPERT], labels), gz)
    split = [[d, str(study), str(subj), sp] for subj, study, ims, sp, *_ in STUDIES for d, _ in ims]
    _write_text(root / "mimic-cxr-2.0.0-split.csv",
                _csv(["dicom_id", "study_id", "subject_id", "split"], split), gz)
    if images:
        for k, (subj, study, ims, *_) in enumerate(STUDIES):
            for d, _ in ims:
                if d != MISSING_JPG:
                    _jpeg(root / "files" / _study_dir(subj, study) / f"{d}.jpg", 20 * k)
    if reports == "zip":
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as archive:
            for subj, study, *_, text in STUDIES:
                archive.writestr(f"files/{_study_dir(subj, study)}.txt", text)
    elif reports == "txt":
        for subj, study, *_, text in STUDIES:
            path = root / "files" / f"{_study_dir(subj, study)}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return root
