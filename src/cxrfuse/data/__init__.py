"""Datasets and the study manifest: one row per study, whatever the source layout.

* :mod:`~cxrfuse.data.manifest`: the manifest schema (the owner of ``*.parquet`` manifests).
* :mod:`~cxrfuse.data.iu_xray`, :mod:`~cxrfuse.data.mimic_cxr`, :mod:`~cxrfuse.data.nih`:
  ingest of each dataset layout; :mod:`~cxrfuse.data.phantoms`: synthetic stand-in images.
* :mod:`~cxrfuse.data.images`: image files to 8-bit gray pixels (the owner of image decoding).
* :mod:`~cxrfuse.data.labels`, :mod:`~cxrfuse.data.splits`: label mapping, patient-level splits.
"""

from cxrfuse.data.manifest import SCHEMA_VERSION, Manifest, label_column, read_manifest
from cxrfuse.data.splits import (
    assign_folds,
    assign_splits,
    check_patient_leakage,
    patients_in_two_splits,
    split_summary,
)

__all__ = [
    "SCHEMA_VERSION",
    "Manifest",
    "assign_folds",
    "assign_splits",
    "check_patient_leakage",
    "label_column",
    "patients_in_two_splits",
    "read_manifest",
    "split_summary",
]
