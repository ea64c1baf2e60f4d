"""Datasets and the study manifest: one row per study, whatever the source layout."""

from cxrfuse.data.manifest import (
    FRONTAL_VIEWS,
    REPORT_SECTIONS,
    SCHEMA_VERSION,
    VIEW_POSITIONS,
    Manifest,
    label_column,
    read_manifest,
)

__all__ = [
    "FRONTAL_VIEWS",
    "REPORT_SECTIONS",
    "SCHEMA_VERSION",
    "VIEW_POSITIONS",
    "Manifest",
    "label_column",
    "read_manifest",
]
