"""MIMIC-CXR-JPG v2.0.0 (PhysioNet) with the MIMIC-CXR free-text reports.

Layout under ``root``::

    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, the 14 CheXpert labels
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (optional)
    files/p10/p10000032/s50414267/02aa804e-....jpg
    files/p10/p10000032/s50414267.txt   the report (or ``mimic-cxr-reports.zip`` with the same paths)

One manifest row per study (``s{study_id}``, patient ``p{subject_id}``), one view per image
(``image_id`` = ``dicom_id``). CheXpert values are 1.0, 0.0, -1.0 (uncertain) or blank (not
mentioned); ``uncertain`` and ``blank`` choose what -1.0 and blank become (``ignore`` = NaN).
The reading is vectorised with pandas: the 377k-image release ingests in seconds.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxrfuse.data.labels import CHEXPERT_LABELS
from cxrfuse.data.manifest import LABEL_PREFIX, Manifest, label_column, normalise_view
from cxrfuse.data.tables import read_csv
from cxrfuse.problems import DataError, ProblemLog
from cxrfuse.vocab import FRONTAL_VIEWS, NO_FINDING, VIEW_POSITIONS

DATASET = "mimic-cxr"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
REPORTS_ZIP = "mimic-cxr-reports.zip"
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
Policy = Literal["ignore", "zero", "one"]
POLICY_VALUES: dict[str, float] = {"ignore": math.nan, "zero": 0.0, "one": 1.0}
_VS_NO_FINDING = re.compile(r"(?P<label>.+)-vs-no-finding")
_REPORT_PATH = re.compile(r"(?:^|/)p\d+/p(?P<subject>\d+)/s(?P<study>\d+)\.txt$")

# ---------------------------------------------------------------------------- report sections
_HEADING = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /&()'-]{0,40}?)[ \t]*:", re.MULTILINE)
_SECTION_OF_HEADING = {
    "FINDINGS": "findings", "FINDING": "findings",
    "IMPRESSION": "impression", "IMPRESSIONS": "impression", "CONCLUSION": "impression",
    "INDICATION": "indication", "INDICATIONS": "indication",
    "COMPARISON": "comparison", "COMPARISONS": "comparison",
    "HISTORY": "history", "CLINICAL HISTORY": "history", "REASON FOR EXAMINATION": "history",
    "REASON FOR EXAM": "history", "CLINICAL INFORMATION": "history", "CLINICAL INDICATION": "history",
}
"""Report headings that start a section; ``history`` feeds ``indication`` when that is absent."""


def parse_report_sections(text: str | None) -> dict[str, str | None]:
    """Split a MIMIC-CXR report into comparison, indication, findings and impression.

    A heading is a line starting with a known name (any case) or an all-capitals name, followed
    by a colon; a section runs to the next heading. Whitespace inside a section is collapsed.
    ``HISTORY``, ``REASON FOR EXAMINATION`` and ``CLINICAL INFORMATION`` stand in for a missing
    ``INDICATION``.
    """
    found: dict[str, list[str]] = {}
    heads = [m for m in _HEADING.finditer(text or "") if _is_heading(m.group("name"))]
    for head, nxt in zip(heads, [*heads[1:], None]):
        section = _SECTION_OF_HEADING.get(" ".join(head.group("name").upper().split()))
        body = " ".join((text or "")[head.end(): nxt.start() if nxt else None].split())
        if section and body:
            found.setdefault(section, []).append(body)
    out = {s: " ".join(found[s]) if s in found else None
           for s in ("comparison", "indication", "findings", "impression")}
    if out["indication"] is None and "history" in found:
        out["indication"] = " ".join(found["history"])
    return out


def _is_heading(name: str) -> bool:
    key = " ".join(name.upper().split())
    return key in _SECTION_OF_HEADING or name == name.upper()


# ---------------------------------------------------------------------------- names
def task_slug(label: str) -> str:
    """Task name of a single-label task: ``"Pleural Effusion"`` -> ``"pleural-effusion"``."""
    return label_column(label)[len(LABEL_PREFIX):].replace("_", "-")


def default_tasks() -> dict[str, list[str]]:
    """``chexpert`` (all 14 labels) and one binary task per label."""
    return {"chexpert": list(CHEXPERT_LABELS), **{task_slug(n): [n] for n in CHEXPERT_LABELS}}


def vs_no_finding_label(task: str | None) -> str | None:
    """The CheXpert label of a ``<label>-vs-no-finding`` task; None for no task or a default task."""
    if task is None or task in default_tasks():
        return None
    match = _VS_NO_FINDING.fullmatch(task)
    by_slug = {task_slug(n): n for n in CHEXPERT_LABELS if n != NO_FINDING}
    if match is None or match.group("label") not in by_slug:
        choices = sorted(f"{s}-vs-no-finding" for s in by_slug)
        raise DataError(f"unknown MIMIC-CXR task {task!r}; use a default task "
                        f"{sorted(default_tasks())} or one of {choices}")
    return by_slug[match.group("label")]


def view_filter(views: Sequence[str] | str | None) -> frozenset[str] | None:
    """Normalised view positions to keep (``FRONTAL`` means PA, AP and FRONTAL); None keeps all."""
    if views is None:
        return None
    keep: set[str] = set()
    for value in [views] if isinstance(views, str) else views:
        view = normalise_view(value)
        if view == "UNKNOWN" and str(value).strip().upper() != "UNKNOWN":
            raise DataError(f"unknown view position {value!r}; expected one of {VIEW_POSITIONS}")
        keep |= FRONTAL_VIEWS if view == "FRONTAL" else {view}
    return frozenset(keep)


# ---------------------------------------------------------------------------- CSV files
def find_csv(root: Path, name: str, required: bool = True) -> Path | None:
    """``root/name`` or ``root/name.gz``; a required file that is absent raises DataError."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            return candidate
    if required:
        raise DataError(f"{root / name}: required file not found (nor {name}.gz)")
    return None


def _flag_rows(bad: pd.Series, table: pd.DataFrame, cols: Sequence[str], path: Path,
               why: str, log: ProblemLog) -> None:
    """One ``malformed-row`` problem per flagged row (``file:line``, header = line 1)."""
    for idx in np.flatnonzero(bad.to_numpy()):
        _row_problem(table, int(idx), cols, path, why, log)


def _row_problem(table: pd.DataFrame, idx: int, cols: Sequence[str], path: Path, why: str,
                 log: ProblemLog) -> None:
    values = ", ".join(f"{c}={table[c].iloc[idx]!r}" for c in cols)
    log.add("malformed-row", f"{path}:{table.index[idx] + 2}", f"{why} ({values}); row skipped")


def _bad_ids(table: pd.DataFrame, cols: Sequence[str], path: Path, log: ProblemLog) -> pd.Series:
    """Rows whose id columns are not plain non-negative integers (recorded as problems)."""
    bad = pd.Series(False, index=table.index)
    for col in cols:
        bad |= ~table[col].str.fullmatch(r"\d+")
    _flag_rows(bad, table, cols, path, "non-numeric id", log)
    return bad


def _drop_duplicates(table: pd.DataFrame, key: str, path: Path, log: ProblemLog) -> pd.DataFrame:
    dup = table.duplicated(key)
    for idx in np.flatnonzero(dup.to_numpy()):
        log.add("duplicate-row", f"{path}:{table.index[idx] + 2}",
                f"{key} {table[key].iloc[idx]!r} seen before; row skipped")
    return table[~dup]


def read_metadata(root: Path, log: ProblemLog) -> pd.DataFrame:
    """One row per image: dicom_id, subject_id, study_id (int64), view (normalised)."""
    path = find_csv(root, METADATA_CSV)
    assert path is not None
    table = read_csv(path, ["dicom_id", "subject_id", "study_id", "ViewPosition"], log)
    bad = _bad_ids(table, ["subject_id", "study_id"], path, log)
    no_dicom = ~bad & (table["dicom_id"] == "")
    _flag_rows(no_dicom, table, ["dicom_id"], path, "empty dicom_id", log)
    table = _drop_duplicates(table[~bad & ~no_dicom], "dicom_id", path, log)
    views = {v: normalise_view(v or None) for v in table["ViewPosition"].unique()}
    return pd.DataFrame({
        "dicom_id": table["dicom_id"].astype(object),
        "subject_id": table["subject_id"].astype("int64"),
        "study_id": table["study_id"].astype("int64"),
        "view": table["ViewPosition"].map(views).astype(object),
    }).reset_index(drop=True)


def read_chexpert(root: Path, log: ProblemLog) -> pd.DataFrame:
    """Raw CheXpert values (1, 0, -1, NaN for blank) indexed by study_id, one column per label."""
    path = find_csv(root, CHEXPERT_CSV)
    assert path is not None
    table = read_csv(path, ["subject_id", "study_id", *CHEXPERT_LABELS], log)
    bad = _bad_ids(table, ["subject_id", "study_id"], path, log)
    values = table[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce").astype("float64")
    odd = (table[list(CHEXPERT_LABELS)] != "") & ~values.isin([1.0, 0.0, -1.0])
    odd_rows = odd.any(axis=1) & ~bad
    for idx in np.flatnonzero(odd_rows.to_numpy()):
        cols = [c for c in CHEXPERT_LABELS if odd[c].iloc[idx]]
        _row_problem(table, idx, cols, path, "label value not in {1.0, 0.0, -1.0, blank}", log)
    keep = ~bad & ~odd_rows
    values = values[keep].set_index(table.loc[keep, "study_id"].astype("int64").rename("study_id"))
    dup = values.index.duplicated()
    for sid in values.index[dup]:
        log.add("duplicate-row", str(path), f"study_id {sid} has more than one label row; first kept")
    return values[~dup]


def read_split(root: Path, log: ProblemLog) -> pd.Series | None:
    """Official split per dicom_id (``train``/``val``/``test``); None when the file is absent."""
    path = find_csv(root, SPLIT_CSV, required=False)
    if path is None:
        log.add("missing-split", str(root / SPLIT_CSV), "no official split file; split left empty")
        return None
    table = read_csv(path, ["dicom_id", "split"], log)
    split = table["split"].str.lower().map(SPLIT_NAMES)
    bad = split.isna() | (table["dicom_id"] == "")
    _flag_rows(bad, table, ["dicom_id", "split"], path, "split not train/validate/test", log)
    table = _drop_duplicates(table.assign(split=split)[~bad], "dicom_id", path, log)
    return table.set_index("dicom_id")["split"]


# ---------------------------------------------------------------------------- files on disk
def scan_files(root: Path) -> tuple[set[str], dict[int, Path]]:
    """Walk ``root/files``: relative paths of the JPEGs and the report ``.txt`` files by study."""
    images: set[str] = set()
    reports: dict[int, Path] = {}
    files = root / "files"
    for dirpath, _, names in os.walk(files):
        rel = Path(dirpath).relative_to(files).as_posix()
        for name in names:
            if name.endswith(".jpg"):
                images.add(f"{rel}/{name}")
            elif name.endswith(".txt") and (m := _REPORT_PATH.search(f"{rel}/{name}")):
                reports.setdefault(int(m.group("study")), Path(dirpath) / name)
    return images, reports


def image_relpaths(images: pd.DataFrame) -> pd.Series:
    """``p10/p10000032/s50414267/<dicom_id>.jpg`` for each image row (vectorised)."""
    subject = images["subject_id"].astype(str)
    return ("p" + subject.str[:2] + "/p" + subject + "/s" + images["study_id"].astype(str)
            + "/" + images["dicom_id"] + ".jpg")


class ReportSource:
    """Report texts by study id from ``mimic-cxr-reports.zip`` or a tree of ``.txt`` files."""

    def __init__(self, where: Path | None, files: dict[int, Path] | None = None):
        self.where, self.files = where, files or {}

    @classmethod
    def locate(cls, root: Path, reports: Path | None, txt_files: dict[int, Path]) -> ReportSource:
        """``reports`` (zip or folder), else ``root/mimic-cxr-reports.zip``, else ``root/files``."""
        if reports is not None:
            reports = Path(reports)
            if not reports.exists():
                raise DataError(f"{reports}: reports zip or folder not found")
            if reports.is_dir():
                return cls(reports, {int(m.group("study")): p for p in reports.rglob("s*.txt")
                                     if (m := _REPORT_PATH.search(p.as_posix()))})
            return cls(reports)
        if (root / REPORTS_ZIP).exists():
            return cls(root / REPORTS_ZIP)
        return cls(root / "files" if txt_files else None, txt_files)

    @property
    def is_zip(self) -> bool:
        return self.where is not None and self.where.is_file()

    def read(self, study_ids: Sequence[int]) -> dict[int, str]:
        """Texts of the wanted studies that have a report (undecodable bytes replaced)."""
        if self.is_zip:
            return _read_zip(self.where, study_ids)  # type: ignore[arg-type]
        return {s: self.files[s].read_bytes().decode("utf-8", errors="replace")
                for s in study_ids if s in self.files}


def _read_zip(path: Path, study_ids: Sequence[int]) -> dict[int, str]:
    """Reports of ``study_ids`` from a zip of ``files/pXX/pNNN/sNNN.txt`` entries."""
    try:
        with zipfile.ZipFile(path) as archive:
            index = {int(m.group("study")): n for n in archive.namelist() if (m := _REPORT_PATH.search(n))}
            if not index:
                raise DataError(f"{path}: zip holds no files/pXX/pNNN/sNNN.txt reports")
            return {s: archive.read(index[s]).decode("utf-8", errors="replace")
                    for s in study_ids if s in index}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc})") from exc


# ---------------------------------------------------------------------------- selection
def apply_policy(raw: np.ndarray, uncertain: Policy, blank: Policy) -> np.ndarray:
    """CheXpert raw values -> 1/0/NaN: 1 and 0 kept, -1 by ``uncertain``, blank by ``blank``."""
    for name, value in (("uncertain", uncertain), ("blank", blank)):
        if value not in POLICY_VALUES:
            raise DataError(f"{name} policy {value!r}; expected one of {sorted(POLICY_VALUES)}")
    out = raw.astype("float64", copy=True)
    out[raw == -1.0] = POLICY_VALUES[uncertain]
    out[np.isnan(raw)] = POLICY_VALUES[blank]
    return out


def select_vs_no_finding(studies: pd.DataFrame, label: str) -> pd.DataFrame:
    """Studies with ``label`` == 1.0 (certain positive) or ``No Finding`` == 1.0, on raw values.

    Uncertain (-1.0) and blank values of ``label`` never select a study, whatever the policy;
    in the task the label is 1 for the positives and 0 for the No Finding studies.
    """
    return studies[(studies[label] == 1.0) | (studies[NO_FINDING] == 1.0)]


def one_per_subject(images: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One image per subject, drawn with ``seed``; independent of the CSV's row order."""
    ordered = images.sort_values(["subject_id", "study_id", "dicom_id"]).reset_index(drop=True)
    shuffled = ordered.iloc[np.random.default_rng(seed).permutation(len(ordered))]
    return shuffled.drop_duplicates("subject_id").sort_index()


# ---------------------------------------------------------------------------- ingest
def ingest_mimic_cxr(
    root: Path,
    *,
    reports: Path | None = None,
    views: Sequence[str] | None = ("PA",),
    one_image_per_subject: bool = False,
    uncertain: Policy = "ignore",
    blank: Policy = "zero",
    task: str | None = None,
    seed: int = 0,
    strict: bool = False,
) -> tuple[Manifest, ProblemLog]:
    """Ingest MIMIC-CXR-JPG (+ reports) into a study manifest.

    ``views`` keeps images whose view position is listed (None keeps all); studies left without
    an image are dropped. ``task="<label>-vs-no-finding"`` keeps certain positives of the label
    and certain ``No Finding`` studies and adds that binary task. ``one_image_per_subject`` keeps
    one image (and so one study) per subject, drawn with ``seed``. ``reports`` is the reports zip
    or folder (default: ``root/mimic-cxr-reports.zip``, else the ``.txt`` files under ``root/files``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: MIMIC-CXR root folder not found")
    log = ProblemLog(strict=strict)
    apply_policy(np.zeros(0), uncertain, blank)  # validate the policies before any reading
    keep_views, target = view_filter(views), vs_no_finding_label(task)
    images = read_metadata(root, log)
    raw = read_chexpert(root, log)
    split = read_split(root, log)
    counts = {"images_in_metadata": len(images), "studies_in_metadata": int(images["study_id"].nunique()),
              "studies_in_chexpert": len(raw)}
    images, studies = _select(images, raw, keep_views, target, one_image_per_subject, seed, counts)
    for sid in studies.index[~studies["has_labels"].to_numpy()]:
        log.add("missing-labels", f"s{sid}", f"no usable row in {CHEXPERT_CSV}; labels left empty")
    images, txt_files = _attach_paths(root, images, log)
    if split is not None:
        images["split"] = images["dicom_id"].map(split)
    source = ReportSource.locate(root, reports, txt_files)
    texts = _read_reports(source, studies.index.to_list(), log)
    records = _records(images, studies, texts)
    counts.update(studies=len(records), images=len(images), images_on_disk=int(images["path"].notna().sum()))
    info = {
        "root": str(root.resolve()), "reports": str(source.where) if source.where else None,
        "label_policy": {"uncertain": uncertain, "blank": blank, "source": "mimic-cxr-2.0.0-chexpert"},
        "views": sorted(keep_views) if keep_views is not None else None,
        "one_image_per_subject": one_image_per_subject, "seed": seed, "task": task,
        "split_source": SPLIT_CSV if split is not None else None, "counts": counts,
    }
    tasks = default_tasks() | ({str(task): [target]} if target is not None else {})
    manifest = build_manifest(
        records, study_labels(studies, target, uncertain, blank), dataset=DATASET,
        labels=list(CHEXPERT_LABELS), tasks=tasks, images="real" if counts["images_on_disk"] else "none",
        problems={"counts": log.counts(), "examples": log.to_records()}, info=info,
    )
    return manifest, log


def build_manifest(records: list[dict[str, Any]], values: np.ndarray, *, labels: list[str],
                   **meta: Any) -> Manifest:
    """:meth:`Manifest.from_records` with the label matrix added as whole columns.

    ``values`` is n_records x n_labels (1/0/NaN). Same result as passing a ``labels`` dict per
    record, without from_records' per-record, per-label column-name work (10 s at MIMIC scale).
    """
    base = Manifest.from_records(records, labels=[], **{k: v for k, v in meta.items() if k != "tasks"})
    columns = {label_column(n): values[:, j] for j, n in enumerate(labels)}
    return base.replace(df=base.df.assign(**columns), labels=labels, tasks=meta.get("tasks", {}))


def _select(images: pd.DataFrame, raw: pd.DataFrame, keep_views: frozenset[str] | None,
            target: str | None, one_each: bool, seed: int, counts: dict[str, int],
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the view filter, the task filter and one-per-subject; returns (images, studies)."""
    if keep_views is not None:
        images = images[images["view"].isin(keep_views)]
    counts["images_after_view_filter"] = len(images)
    counts["studies_after_view_filter"] = int(images["study_id"].nunique())
    counts["studies_dropped_no_view"] = counts["studies_in_metadata"] - counts["studies_after_view_filter"]
    studies = images.drop_duplicates("study_id").set_index("study_id")[["subject_id"]]
    studies = studies.join(raw, how="left").assign(has_labels=lambda d: d.index.isin(raw.index))
    if target is not None:
        studies = select_vs_no_finding(studies, target)
        images = images[images["study_id"].isin(studies.index)]
        counts["studies_after_task_filter"] = len(studies)
    if one_each:
        images = one_per_subject(images, seed)
        studies = studies.loc[studies.index.isin(images["study_id"])]
        counts["studies_after_one_per_subject"] = len(studies)
    return images.reset_index(drop=True), studies.sort_index()


def _attach_paths(root: Path, images: pd.DataFrame, log: ProblemLog
                  ) -> tuple[pd.DataFrame, dict[int, Path]]:
    """Absolute JPEG paths (None when absent) and the report files met on the way.

    Missing images are one problem each, or a single problem when none is on disk.
    """
    on_disk, txt = scan_files(root)
    rel = image_relpaths(images)
    present = rel.isin(on_disk).to_numpy()
    base = str((root / "files").resolve())
    images = images.assign(path=np.where(present, base + "/" + rel, None))
    if len(images) and not present.any():
        log.add("missing-image", str(root / "files"),
                f"none of the {len(images)} selected images is on disk; manifest has no pixels")
    elif not present.all():
        for idx in np.flatnonzero(~present):
            log.add("missing-image", f"s{images['study_id'].iat[idx]}/{images['dicom_id'].iat[idx]}",
                    f"{root / 'files' / rel.iat[idx]} not found")
    return images, txt


def _read_reports(source: ReportSource, study_ids: list[int], log: ProblemLog) -> dict[int, str]:
    """Report texts; studies without text get an ``empty-report`` problem (one if no source)."""
    if source.where is None:
        if study_ids:
            log.add("empty-report", str(source.where or "files/pXX/pNNN/sNNN.txt"),
                    f"no reports found (no {REPORTS_ZIP}, no .txt files); {len(study_ids)} studies have no text")
        return {}
    texts = source.read(study_ids)
    for sid in study_ids:
        if not texts.get(sid, "").strip():
            why = "report is empty" if sid in texts else f"no report s{sid}.txt in {source.where}"
            log.add("empty-report", f"s{sid}", why)
    return texts


def study_labels(studies: pd.DataFrame, target: str | None, uncertain: Policy,
                 blank: Policy) -> np.ndarray:
    """Label matrix (studies x CheXpert labels) under the policy; NaN rows for unlabelled studies.

    With a ``<target>-vs-no-finding`` task the target column is 1 for certain positives, else 0.
    """
    raw = studies[list(CHEXPERT_LABELS)].to_numpy(dtype="float64")
    values = apply_policy(raw, uncertain, blank)
    values[~studies["has_labels"].to_numpy()] = np.nan
    if target is not None:
        j = CHEXPERT_LABELS.index(target)
        values[:, j] = (raw[:, j] == 1.0).astype("float64")
    return values


def _records(images: pd.DataFrame, studies: pd.DataFrame, texts: dict[int, str]) -> list[dict[str, Any]]:
    """One manifest record per study (labels apart), views in dicom_id order."""
    positives = (studies[list(CHEXPERT_LABELS)] == 1.0).to_numpy().tolist()
    images = images.sort_values(["study_id", "dicom_id"])
    study_of_image, sids = images["study_id"].to_numpy(), studies.index.to_numpy()
    starts = np.searchsorted(study_of_image, sids, side="left").tolist()
    ends = np.searchsorted(study_of_image, sids, side="right").tolist()
    view_rows = [{"image_id": d, "path": p if isinstance(p, str) else None, "view": v}
                 for d, p, v in zip(images["dicom_id"], images["path"], images["view"])]
    splits = images["split"].tolist() if "split" in images else [None] * len(images)
    records = []
    for i, (sid, subject) in enumerate(zip(sids.tolist(), studies["subject_id"].tolist())):
        text = texts.get(sid) or None
        records.append({
            "study_id": f"s{sid}", "patient_id": f"p{subject}", "views": view_rows[starts[i]:ends[i]],
            **parse_report_sections(text), "report": text,
            "source_labels": [n for n, pos in zip(CHEXPERT_LABELS, positives[i]) if pos],
            "split": next((x for x in splits[starts[i]:ends[i]] if isinstance(x, str)), None),
        })
    return records
