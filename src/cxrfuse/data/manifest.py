"""The study manifest: a versioned Parquet table with one row per study.

Schema (version 1), one row per study:

==================  ==========================================  =====================================
column              type                                        meaning
==================  ==========================================  =====================================
dataset             string                                      ``iu-xray``, ``mimic-cxr``, ``nih-cxr14``
study_id            string, unique                              the source's study identifier
patient_id          string                                      used for patient-level splits
views               list<struct<image_id, path, view>>          one entry per image; ``path`` is null when
                                                                the pixels are not on disk; ``view`` is one
                                                                of :data:`VIEW_POSITIONS`; ``content_hash``,
                                                                ``phash``: image hashes, null until computed
                                                                (:mod:`~cxrfuse.data.image_hashes`)
comparison, indication, findings, impression
                    string, nullable                            report sections
report              string, nullable                            the raw report text
source_labels       list<string>                                labels as the source states them (MeSH
                                                                major terms, NIH findings, CheXpert
                                                                positives)
age                 float64, nullable                           demographics where the source has them
sex                 string, nullable                            ``M`` / ``F``
split               string, nullable                            ``train`` / ``val`` / ``test`` (see splits)
fold                int64, nullable                             k-fold index, when k-fold splits are used
label_<name>        float32                                     1 positive, 0 negative, NaN unknown or
                                                                outside the task
==================  ==========================================  =====================================

The file's key-value metadata ``cxrfuse.manifest`` holds JSON with ``schema_version``,
``dataset``, ``labels`` (the label vocabulary, in column order), ``tasks`` (task name -> label
names; one label = binary task), ``images`` (``real``, ``phantom`` or ``none``), the ingest
``problems`` (counts and examples) and free ``info`` (source paths, label policy, split
parameters).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxrfuse.problems import DataError
from cxrfuse.vocab import (
    FRONTAL_VIEWS,
    IMAGE_KINDS,
    LATERAL_VIEWS,
    REPORT_SECTIONS,
    SPLITS,
    VIEW_ALIASES,
    VIEW_POSITIONS,
)

SCHEMA_VERSION = 1
METADATA_KEY = b"cxrfuse.manifest"
"""``FRONTAL`` is a frontal image whose PA/AP position the source does not state."""
LABEL_PREFIX = "label_"

VIEW_TYPE = pa.struct(
    [("image_id", pa.string()), ("path", pa.string()), ("view", pa.string()),
     ("content_hash", pa.string()), ("phash", pa.string())]  # HASH_FIELDS: data.image_hashes
)
BASE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("study_id", pa.string()),
        ("patient_id", pa.string()),
        ("views", pa.list_(VIEW_TYPE)),
        *[(section, pa.string()) for section in REPORT_SECTIONS],
        ("report", pa.string()),
        ("source_labels", pa.list_(pa.string())),
        ("age", pa.float64()),
        ("sex", pa.string()),
        ("split", pa.string()),
        ("fold", pa.int64()),
    ]
)
BASE_COLUMNS = tuple(BASE_SCHEMA.names)
HASH_FIELDS = ("content_hash", "phash")
"""Optional view fields (image hashes): absent from a view's dict until computed."""


def label_column(name: str) -> str:
    """Column that holds label ``name`` (``"Pleural Effusion"`` -> ``label_pleural_effusion``)."""
    slug = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
    if not slug:
        raise ValueError(f"label name {name!r} has no letters or digits")
    return LABEL_PREFIX + slug


def label_slug(name: str) -> str:
    """``"Pleural Effusion"`` -> ``"pleural_effusion"``: the label's column suffix in run files
    (``y__<slug>``, ``p__<slug>`` in ``predictions.parquet``)."""
    return label_column(name)[len(LABEL_PREFIX) :]


def normalise_view(value: object) -> str:
    """Map the many spellings of a view position to one of :data:`VIEW_POSITIONS`."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "UNKNOWN"
    text = " ".join(str(value).strip().upper().replace("-", " ").replace("_", " ").split())
    return VIEW_ALIASES.get(text, "UNKNOWN")


def view_kind(view: object) -> str:
    """``frontal``, ``lateral`` or ``unknown`` for a view position in any spelling."""
    position = view if view in VIEW_POSITIONS else normalise_view(view)
    return ("frontal" if position in FRONTAL_VIEWS
            else "lateral" if position in LATERAL_VIEWS else "unknown")  # fmt: skip


@dataclass
class Manifest:
    """A study manifest in memory: the table plus its label vocabulary and metadata.

    Build one with :meth:`from_records`, read one with :func:`read_manifest`, write it with
    :meth:`save`. ``df`` always holds every base column and one ``label_<name>`` column per
    label, in vocabulary order.
    """

    df: pd.DataFrame
    dataset: str
    labels: list[str] = field(default_factory=list)
    tasks: dict[str, list[str]] = field(default_factory=dict)
    images: str = "none"
    problems: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_records(
        cls,
        records: list[dict[str, Any]],
        *,
        dataset: str,
        labels: list[str],
        tasks: dict[str, list[str]] | None = None,
        images: str = "none",
        problems: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> Manifest:
        """Build a manifest from one dict per study.

        Each record holds the base columns it knows (missing ones become null) and a
        ``labels`` dict ``{label name: 1 | 0 | None}``.
        """
        columns = [label_column(n) for n in labels]
        rows = []
        for rec in records:
            row = {col: rec.get(col) for col in BASE_COLUMNS}
            row["dataset"] = rec.get("dataset", dataset)
            row["views"] = [
                {"image_id": str(v["image_id"]), "path": _none_if_missing(v.get("path")),
                 "view": normalise_view(v.get("view")),
                 **{k: v[k] for k in HASH_FIELDS if v.get(k)}}
                for v in rec.get("views") or []
            ]
            row["source_labels"] = list(rec.get("source_labels") or [])
            values = rec.get("labels") or {}
            for name, col in zip(labels, columns):
                value = values.get(name)
                row[col] = np.nan if value is None else value  # checked by _coerce
            rows.append(row)
        df = pd.DataFrame(rows, columns=list(BASE_COLUMNS) + columns)
        manifest = cls(
            df=_coerce(df, labels),
            dataset=dataset,
            labels=list(labels),
            tasks=dict(tasks or {}),
            images=images,
            problems=dict(problems or {}),
            info=dict(info or {}),
        )
        manifest.validate()
        return manifest

    def replace(self, df: pd.DataFrame | None = None, **changes: Any) -> Manifest:
        """A copy with a new table and/or metadata fields (the original is untouched)."""
        fields = {
            "df": self.df.copy() if df is None else df,
            "dataset": self.dataset,
            "labels": list(self.labels),
            "tasks": {k: list(v) for k, v in self.tasks.items()},
            "images": self.images,
            "problems": dict(self.problems),
            "info": copy.deepcopy(self.info),
        }
        fields.update(changes)
        manifest = Manifest(**fields)
        manifest.df = _coerce(manifest.df.reset_index(drop=True), manifest.labels)
        manifest.validate()
        return manifest

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return len(self.df)

    @property
    def label_columns(self) -> list[str]:
        return [label_column(n) for n in self.labels]

    def label_matrix(self, labels: list[str] | str | None = None) -> np.ndarray:
        """Labels as a float32 array (n_studies x n_labels), NaN where unknown.

        ``labels`` is a list of label names, a task name, or None for the whole vocabulary.
        """
        names = self.task_labels(labels)
        return self.df[[label_column(n) for n in names]].to_numpy(dtype=np.float32)

    def task_labels(self, task: list[str] | str | None) -> list[str]:
        """Label names of a task name, a list of label names, or the whole vocabulary."""
        if task is None:
            return list(self.labels)
        if isinstance(task, str):
            if task in self.tasks:
                return list(self.tasks[task])
            if task in self.labels:
                return [task]
            raise DataError(
                f"unknown task or label {task!r}; tasks: {sorted(self.tasks)}, labels: {self.labels}"
            )
        unknown = [n for n in task if n not in self.labels]
        if unknown:
            raise DataError(f"unknown label(s) {unknown}; the manifest has {self.labels}")
        return list(task)

    def has_images(self) -> pd.Series:
        """Per study: True when at least one view has an image path."""
        return self.df["views"].map(lambda views: any(v["path"] for v in views))

    def has_report(self) -> pd.Series:
        """Per study: True when any report section or the raw report has text."""
        found = np.zeros(len(self.df), dtype=bool)
        for col in [*REPORT_SECTIONS, "report"]:  # column by column: no Series per row
            found |= np.fromiter((isinstance(x, str) and bool(x.strip()) for x in self.df[col].tolist()),
                                 dtype=bool, count=len(self.df))  # fmt: skip
        return pd.Series(found, index=self.df.index)

    # ------------------------------------------------------------------ validation and IO
    def validate(self, source: str = "manifest") -> None:
        """Raise :class:`DataError` naming the column and row of the first inconsistency."""
        validate_frame(self.df, self.labels, self.tasks, source=source)
        if self.images not in IMAGE_KINDS:
            raise DataError(f"{source}: metadata 'images' is {self.images!r}, expected one of {IMAGE_KINDS}")

    def metadata(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "labels": self.labels,
            "tasks": self.tasks,
            "images": self.images,
            "problems": self.problems,
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the manifest as Parquet (atomically: a temp file renamed into place)."""
        path = Path(path)
        self.validate()
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema(
            list(BASE_SCHEMA) + [pa.field(c, pa.float32()) for c in self.label_columns]
        )
        table = pa.Table.from_pandas(self.df, schema=schema, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[METADATA_KEY] = json.dumps(self.metadata(), default=str).encode()
        table = table.replace_schema_metadata(meta)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
        return path


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; errors name the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such manifest file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(f"{path}: Parquet file has no cxrfuse manifest metadata; was it written by cxrfuse?")
    meta = json.loads(raw)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: manifest schema version {version}, this cxrfuse reads version {SCHEMA_VERSION}"
        )
    df = table.to_pandas()
    source = str(path)
    df["views"] = df["views"].map(lambda vs: [_view_dict(v) for v in vs] if vs is not None else [])
    df["source_labels"] = df["source_labels"].map(lambda xs: list(xs) if xs is not None else [])
    labels = list(meta.get("labels", []))
    manifest = Manifest(
        df=_coerce(df, labels, source),
        dataset=meta.get("dataset", ""),
        labels=labels,
        tasks={k: list(v) for k, v in meta.get("tasks", {}).items()},
        images=meta.get("images", "none"),
        problems=meta.get("problems", {}),
        info=meta.get("info", {}),
    )
    manifest.validate(source=str(path))
    return manifest


def _view_dict(view: Any) -> dict[str, Any]:
    """A stored view as a dict, without the hash fields it has no value for."""
    return {k: x for k, x in dict(view).items() if x is not None or k not in HASH_FIELDS}


def _none_if_missing(value: Any) -> Any:
    """None for None/NaN/pd.NA, the value otherwise."""
    return None if value is None or (not isinstance(value, (list, dict, str)) and pd.isna(value)) else value


def _coerce(df: pd.DataFrame, labels: list[str], source: str = "manifest") -> pd.DataFrame:
    """Pin column dtypes: text columns are object with None for missing (never NaN); a label
    value that is not a number (``"yes"``) is a DataError naming the column, row and study."""
    df = df.copy()
    for col in ("dataset", "study_id", "patient_id", *REPORT_SECTIONS, "report", "sex", "split"):
        if col in df:
            values = [None if _none_if_missing(x) is None else str(x) for x in df[col].tolist()]
            df[col] = pd.Series(values, index=df.index, dtype=object)
    if "age" in df:
        df["age"] = pd.to_numeric(df["age"], errors="coerce").astype("float64")
    if "fold" in df:
        df["fold"] = pd.array(df["fold"], dtype="Int64")
    for name in labels:
        col = label_column(name)
        if col in df:
            values = pd.to_numeric(df[col], errors="coerce")
            lost = values.isna() & df[col].map(
                lambda x: _none_if_missing(x) is not None and str(x).strip() != "")
            if lost.any():
                row = int(np.flatnonzero(lost.to_numpy())[0])
                study = df["study_id"].iloc[row] if "study_id" in df else None
                raise DataError(f"{source}: column {col!r} has value {df[col].iloc[row]!r} at row "
                                f"{row} (study {study!r}); expected 1, 0 or empty "
                                f"({int(lost.sum())} such value(s))")
            df[col] = values.astype("float32")
    return df


def validate_frame(
    df: pd.DataFrame, labels: list[str], tasks: dict[str, list[str]], source: str = "manifest"
) -> None:
    """Check a manifest table; raise :class:`DataError` naming column and study."""
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}")
    columns = [label_column(n) for n in labels]
    if len(set(columns)) != len(columns):
        raise DataError(f"{source}: label names {labels} collide after normalisation to column names")
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise DataError(f"{source}: label column(s) {absent} declared in metadata but not in the table")
    stray = [c for c in df.columns if c.startswith(LABEL_PREFIX) and c not in columns]
    if stray:
        raise DataError(f"{source}: label column(s) {stray} not declared in the label vocabulary")
    for task, names in tasks.items():
        bad = [n for n in names if n not in labels]
        if bad:
            raise DataError(f"{source}: task {task!r} names unknown label(s) {bad}")
    for col in ("study_id", "patient_id", "dataset"):
        nulls = df[col].isna()
        if nulls.any():
            row = int(np.flatnonzero(nulls.to_numpy())[0])
            raise DataError(f"{source}: column {col!r} is empty at row {row}")
    dup = df["study_id"].duplicated()
    if dup.any():
        raise DataError(f"{source}: duplicate study_id {df['study_id'][dup].iloc[0]!r}")
    for i, (sid, views) in enumerate(zip(df["study_id"], df["views"])):
        for v in views:
            if v.get("view") not in VIEW_POSITIONS:
                raise DataError(
                    f"{source}: study {sid!r} (row {i}) has view {v.get('view')!r}; expected one of {VIEW_POSITIONS}"
                )
            if not v.get("image_id"):
                raise DataError(f"{source}: study {sid!r} (row {i}) has a view without image_id")
    bad_split = ~df["split"].isna() & ~df["split"].isin(SPLITS)
    if bad_split.any():
        row = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise DataError(f"{source}: split {df['split'].iloc[row]!r} at row {row}; expected one of {SPLITS}")
    for col in columns:
        values = df[col].to_numpy(dtype=np.float64)
        bad = ~np.isnan(values) & (values != 0) & (values != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column {col!r} has value {values[row]} at row {row}; expected 0, 1 or empty")
