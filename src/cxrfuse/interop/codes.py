"""The coded concepts of cxrfuse's DICOM objects.

Standard codes (SNOMED CT ``SCT``, DICOM ``DCM``, UCUM) are used only where the DICOM
content-mapping dictionary that pydicom ships names the concept unambiguously; everything
else is a code of the private coding scheme :data:`SCHEME` (``99CXRFUSE``), declared in each
SR's Coding Scheme Identification Sequence. A label with no standard code gets the private
code ``LABEL-<slug>`` with the label itself as its meaning, so a reader never sees a wrong
SNOMED concept.
"""

from __future__ import annotations

import re

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

SCHEME = "99CXRFUSE"
"""Private coding scheme designator (``99`` prefix: local, PS3.16 section 8.2)."""
SCHEME_NAME = "cxrfuse private codes"


def private(value: str, meaning: str) -> CodedConcept:
    """A code of the private scheme."""
    return CodedConcept(value, SCHEME, meaning)


# findings whose SNOMED CT code the DICOM dictionary gives with one meaning (pydicom 3.0)
_FINDINGS: dict[str, CodedConcept] = {
    "effusion": CodedConcept("60046008", "SCT", "Pleural effusion"),
    "pleural effusion": CodedConcept("60046008", "SCT", "Pleural effusion"),
    "pneumothorax": CodedConcept("36118008", "SCT", "Pneumothorax"),
    "edema": CodedConcept("19242006", "SCT", "Pulmonary edema"),
    "nodule": CodedConcept("27925004", "SCT", "Nodule"),
    "mass": CodedConcept("4147007", "SCT", "Mass"),
}

PROBABILITY = CodedConcept(codes.DCM.Probability.value, "DCM", "Probability")
THRESHOLD = private("THRESHOLD", "Decision threshold (chosen on the validation split)")
DECISION_PRESENT = CodedConcept(codes.SCT.Present.value, "SCT", "Present")
DECISION_ABSENT = CodedConcept(codes.SCT.Absent.value, "SCT", "Absent")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
COMMENT = CodedConcept(codes.DCM.Comment.value, "DCM", "Comment")
FINDINGS = CodedConcept(codes.DCM.Findings.value, "DCM", "Findings")
PROCEDURE = private("CXR-CLASSIFICATION", "Chest radiograph classification by cxrfuse")
WARNING = private("WARNING", "Warning a reader must see")
MODEL_FACT = private("MODEL-FACT", "Model card fact")
SOURCE_NOTE = private("SOURCE-NOTE", "Source image note")
DRAFT_TITLE = private("MACHINE-DRAFT", "Machine-drafted report (unverified, not a finding)")
DRAFT_NOTE = private("DRAFT-NOTE", "About this machine draft")
OVERLAY_NOTE = "Grad-CAM overlay (machine generated, burned-in map and colour bar)"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").upper() or "LABEL"


def finding(label: str) -> CodedConcept:
    """The coded finding of a run label: SNOMED CT where known, else ``99CXRFUSE``."""
    key = label.replace("_", " ").strip().lower()
    return _FINDINGS.get(key) or private(f"LABEL-{_slug(label)}", label[:64])


def scheme_identification() -> Dataset:
    """One item of the Coding Scheme Identification Sequence declaring :data:`SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "cxrfuse project"
    return item
