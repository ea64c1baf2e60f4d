"""NIH ChestX-ray14 (Wang et al., CVPR 2017): a ``Data_Entry``-style CSV beside an image folder.

The CSV (``Data_Entry_2017_v2020.csv`` or a subset of its columns) needs ``Image Index``,
``Finding Labels`` and ``Patient ID``; ``View Position``, ``Patient Age`` and ``Patient Gender``
are used when present. ``Finding Labels`` is ``|``-separated over the 14 NIH findings, or
``No Finding``. Images are found by file name anywhere under the image folder (the release
spreads them over ``images_001/images/`` ... ``images_012/images/``).

One study per image (``study_id`` = the image file stem, e.g. ``00000075_000``), no report.
Labels: the 14 findings and ``abnormal`` (1 when any finding is stated).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfuse.data.labels import ABNORMAL, NIH_LABELS
from cxrfuse.data.manifest import Manifest, label_column, normalise_view
from cxrfuse.data.mimic_cxr import task_slug, view_filter
from cxrfuse.data.tables import read_csv
from cxrfuse.problems import DataError, ProblemLog
from cxrfuse.vocab import NO_FINDING

DATASET = "nih-cxr14"
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_AGE = r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[YyMmDd])?$"
_AGE_UNIT_YEARS = {"Y": 1.0, "M": 1 / 12, "D": 1 / 365.25, "": 1.0}


def nih_tasks() -> dict[str, list[str]]:
    """``nih14`` (the 14 findings), ``normal-abnormal`` and one binary task per finding."""
    return {"nih14": list(NIH_LABELS), "normal-abnormal": [ABNORMAL],
            **{task_slug(n): [n] for n in NIH_LABELS}}


def index_images(folder: Path) -> dict[str, Path]:
    """Image file name -> path, for every image anywhere under ``folder`` (first one wins)."""
    found: dict[str, Path] = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(name, Path(dirpath) / name)
    return found


def finding_matrix(findings: pd.Series, csv: Path, log: ProblemLog) -> pd.DataFrame:
    """0/1 per NIH label from ``Finding Labels``; unknown names and contradictions are problems.

    Names match the vocabulary after normalisation (``Pleural Thickening`` = ``Pleural_Thickening``).
    """
    cleaned = findings.str.replace(r"\s*\|\s*", "|", regex=True)
    dummies = cleaned.str.get_dummies(sep="|")
    canonical = {label_column(n): n for n in (*NIH_LABELS, NO_FINDING)}
    names = {c: canonical.get(label_column(c)) for c in dummies.columns}
    for col, name in names.items():
        if name is None:
            for idx in np.flatnonzero(dummies[col].to_numpy()):
                log.add("unknown-finding", f"{csv}:{findings.index[idx] + 2}",
                        f"finding {col!r} is not one of the NIH labels; ignored")
    out = pd.DataFrame(0.0, index=findings.index, columns=[*NIH_LABELS, NO_FINDING, ABNORMAL])
    for col, name in names.items():
        if name is not None:
            out[name] = np.maximum(out[name], dummies[col].to_numpy())
    unknown = [c for c, n in names.items() if n is None]
    stated = out[list(NIH_LABELS)].sum(axis=1) + (dummies[unknown].sum(axis=1) if unknown else 0)
    out[ABNORMAL] = (stated > 0).astype("float64")
    for idx in np.flatnonzero(((out[NO_FINDING] > 0) & (stated > 0)).to_numpy()):
        log.add("conflicting-labels", f"{csv}:{findings.index[idx] + 2}",
                f"{findings.iat[idx]!r} has 'No Finding' and findings; findings kept")
    return out.drop(columns=NO_FINDING)


def parse_age(ages: pd.Series) -> pd.Series:
    """Ages in years from ``61`` (v2020) or ``061Y`` / ``008M`` (2017 release); else NaN."""
    parts = ages.str.extract(_AGE)
    unit = parts["unit"].fillna("").str.upper().map(_AGE_UNIT_YEARS)
    return pd.to_numeric(parts["n"], errors="coerce") * unit


def _clean_rows(table: pd.DataFrame, csv: Path, log: ProblemLog) -> pd.DataFrame:
    """Drop rows with no image name or no finding labels, and repeated image names."""
    bad = (table["Image Index"] == "") | (table["Finding Labels"] == "") | (table["Patient ID"] == "")
    for idx in np.flatnonzero(bad.to_numpy()):
        log.add("malformed-row", f"{csv}:{idx + 2}",
                "empty Image Index, Finding Labels or Patient ID; row skipped")
    dup = table["Image Index"].duplicated() & ~bad
    for idx in np.flatnonzero(dup.to_numpy()):
        log.add("duplicate-row", f"{csv}:{idx + 2}",
                f"image {table['Image Index'].iat[idx]!r} listed before; row skipped")
    return table[~bad & ~dup]


def ingest_nih(
    csv: Path,
    images: Path,
    *,
    views: Sequence[str] | None = None,
    strict: bool = False,
) -> tuple[Manifest, ProblemLog]:
    """Ingest NIH ChestX-ray14 into an image-only study manifest.

    ``views`` keeps images whose ``View Position`` is listed (None keeps all). Missing image
    files keep their study with ``path`` None and a ``missing-image`` problem.
    """
    csv, images = Path(csv), Path(images)
    if not csv.exists():
        raise DataError(f"{csv}: NIH label CSV not found")
    if not images.is_dir():
        raise DataError(f"{images}: NIH image folder not found")
    log = ProblemLog(strict=strict)
    keep_views = view_filter(views)
    table = read_csv(csv, REQUIRED_COLUMNS, log)
    rows_in_csv = len(table)
    table = _clean_rows(table, csv, log)
    view = table["View Position"].map(normalise_view) if "View Position" in table else "UNKNOWN"
    table = table.assign(view=view)
    if keep_views is not None:
        table = table[table["view"].isin(keep_views)]
    labels = finding_matrix(table["Finding Labels"], csv, log)
    records = _records(table, labels, index_images(images.resolve()), log)
    on_disk = sum(1 for r in records if r["views"][0]["path"])
    info = {"csv": str(csv.resolve()), "images": str(images.resolve()),
            "views": sorted(keep_views) if keep_views is not None else None,
            "label_source": "Finding Labels (NLP-mined from reports by the NIH; no report text)",
            "counts": {"rows_in_csv": rows_in_csv, "studies": len(records), "images_on_disk": on_disk}}
    manifest = Manifest.from_records(
        records, dataset=DATASET, labels=[*NIH_LABELS, ABNORMAL], tasks=nih_tasks(),
        images="real" if on_disk else "none",
        problems={"counts": log.counts(), "examples": log.to_records()}, info=info,
    )
    return manifest, log


def _records(table: pd.DataFrame, labels: pd.DataFrame, found: dict[str, Path],
             log: ProblemLog) -> list[dict[str, Any]]:
    """One record per CSV row (one image = one study)."""
    age = parse_age(table["Patient Age"]) if "Patient Age" in table else pd.Series(np.nan, index=table.index)
    sex = table["Patient Gender"].str.upper() if "Patient Gender" in table else pd.Series("", index=table.index)
    names = [*NIH_LABELS, ABNORMAL]
    values = labels[names].to_numpy()
    records = []
    for i, (name, patient, view, findings) in enumerate(
            zip(table["Image Index"], table["Patient ID"], table["view"], table["Finding Labels"])):
        path = found.get(name)
        if path is None:
            log.add("missing-image", name, f"{name} not found under the image folder")
        stem = Path(name).stem
        records.append({
            "study_id": stem, "patient_id": patient,
            "views": [{"image_id": stem, "path": str(path) if path else None, "view": view}],
            "source_labels": [f.strip() for f in findings.split("|") if f.strip()],
            "age": age.iat[i], "sex": sex.iat[i] if sex.iat[i] in ("M", "F") else None,
            "labels": dict(zip(names, values[i].tolist())),
        })
    return records
