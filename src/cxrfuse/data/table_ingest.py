"""Any table (CSV, TSV or Parquet) plus a column mapping -> a study manifest.

The mapping is a :class:`TableSpec` (YAML via :func:`cxrfuse.config.load_table_spec`, or flags
of ``cxrfuse ingest csv``). Two layouts:

* **long**: ``image`` names one column; every row is one image and rows sharing a ``study`` id
  form one study (study-level fields are read from the study's first row; rows that contradict
  it are counted as ``conflicting-rows``).
* **wide**: ``image`` is a list of columns; every row is one study with one image per
  non-blank cell. ``view`` is then a list of the same length whose entries are a column name
  or a fixed view (``PA``, ``LATERAL``, ...).

Column names are matched exactly, then ignoring case, spaces, ``_`` and ``-``; an unknown
column raises :class:`~cxrfuse.problems.ConfigError` naming it and listing the table's columns.
Bad rows are counted in the :class:`~cxrfuse.problems.ProblemLog` with their line and skipped
(``ragged-row``, ``malformed-row``, ``duplicate-row``); bad cells are counted and left
unknown (``bad-label-value``, ``unknown-view``, ``bad-age``, ``bad-sex``, ``bad-split``);
image files that are not on disk keep their view with ``path`` None (``missing-image``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrfuse.data.manifest import Manifest, normalise_view
from cxrfuse.data.mimic_cxr import task_slug
from cxrfuse.data.nih import parse_age
from cxrfuse.data.views import implausible_views
from cxrfuse.problems import ConfigError, DataError, ProblemLog
from cxrfuse.vocab import REPORT_SECTIONS, SPLITS, Section

POSITIVE_WORDS = frozenset({"1", "1.0", "yes", "y", "true", "t", "positive", "pos", "present"})
NEGATIVE_WORDS = frozenset({"0", "0.0", "no", "n", "false", "f", "negative", "neg", "absent"})
UNCERTAIN_WORDS = frozenset({"-1", "-1.0", "uncertain", "u", "maybe", "possible"})
SEX_WORDS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "validate": "val", "dev": "val", "test": "test",
               "testing": "test"}  # fmt: skip
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t", ".parquet": None,
                  ".pq": None}  # fmt: skip


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LabelSpec(_Spec):
    """One label: a 1/0/-1/blank column (also yes/no, true/false), or a categorical column whose
    ``positive`` values are the class (other values negative, blank unknown; with ``negative``
    listed too, values in neither list are counted as problems)."""

    column: str
    positive: list[str] | None = None
    negative: list[str] | None = None
    delimiter: str | None = Field(None, description="the cell lists several values (NIH "
                                  "'Finding Labels': '|'); positive when any is in `positive`")

    @model_validator(mode="after")
    def _delimiter_needs_positive(self) -> LabelSpec:
        if self.delimiter is not None and self.positive is None:
            raise ValueError("delimiter needs the positive values listed (positive: [...])")
        return self

    @field_validator("positive", "negative", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        return [str(v) for v in items]


class DemographicsSpec(_Spec):
    age: str | None = Field(None, description="age column (years, or 061Y / 008M)")
    sex: str | None = Field(None, description="sex column (M/F, male/female)")


class TableSpec(_Spec):
    """The column mapping of ``cxrfuse ingest csv`` (paths relative to the spec file)."""

    table: Path = Field(description="the table: .csv, .tsv or .parquet")
    images: Path | None = Field(None, description="base folder of relative image paths (default: the table's folder)")
    dataset: str = Field("custom", min_length=1, description="the manifest's dataset name")
    separator: str | None = Field(None, description="field separator (default: from the suffix)")
    study: str | None = Field(None, description="study id column (default: one study per row, id = image stem)")
    patient: str | None = Field(None, description="patient id column (default: the study id)")
    image: str | list[str] | None = Field(None, description="image path column (long) or columns (wide)")
    view: str | list[str] | None = Field(None, description="view column, or per image column a column or fixed view")
    filter: dict[str, list[str]] = Field(default_factory=dict, description="column -> values to keep")
    sections: dict[Section, str] = Field(default_factory=dict, description="report section -> column")
    report: str | None = Field(None, description="raw report text column")
    labels: dict[str, LabelSpec] = Field(default_factory=dict)
    demographics: DemographicsSpec = Field(default_factory=DemographicsSpec)
    split: str | None = Field(None, description="split column (train/val/test)")
    uncertain: Literal["ignore", "zero", "one"] = Field("ignore", description="what -1 / uncertain becomes")

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_strings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(k): [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in value.items()}

    @field_validator("labels", mode="before")
    @classmethod
    def _label_shorthand(cls, value: Any) -> Any:
        """``pneumonia: dx_pneumonia`` is short for ``pneumonia: {column: dx_pneumonia}``."""
        if not isinstance(value, dict):
            return value
        return {str(k): {"column": v} if isinstance(v, str) else v for k, v in value.items()}

    @property
    def wide(self) -> bool:
        return isinstance(self.image, list)

    def image_columns(self) -> list[str]:
        if self.image is None:
            return []
        return list(self.image) if isinstance(self.image, list) else [self.image]

    def resolve_paths(self, base: Path) -> TableSpec:
        """A copy whose relative ``table`` and ``images`` are taken relative to ``base``."""
        table = self.table if self.table.is_absolute() else base / self.table
        images = self.images if self.images is None or self.images.is_absolute() else base / self.images
        return self.model_copy(update={"table": table, "images": images})


# ------------------------------------------------------------------------------ the table
def read_table(path: Path, separator: str | None, log: ProblemLog) -> tuple[pd.DataFrame, list[int]]:
    """All cells as stripped strings and the file line of each row; ragged rows are counted
    (``ragged-row``) and skipped."""
    if not path.is_file():
        raise DataError(f"{path}: table not found")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES and separator is None:
        raise DataError(f"{path}: unknown table type {suffix!r}; expected one of {sorted(TABLE_SUFFIXES)} "
                        "(or give the separator)")  # fmt: skip
    if separator is None and TABLE_SUFFIXES[suffix] is None:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        cells = frame.astype(object).where(frame.notna(), "").astype(str)
        cells.columns = [str(c) for c in cells.columns]
        return cells.apply(lambda col: col.str.strip()).reset_index(drop=True), list(range(1, len(cells) + 1))
    sep = separator or TABLE_SUFFIXES[suffix] or ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=sep)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the table is empty")
            header = [h.strip() for h in header]
            rows, lines = [], []
            start = reader.line_num + 1
            for fields in reader:
                line, start = start, reader.line_num + 1
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    log.add("ragged-row", f"{path}:{line}",
                            f"{len(fields)} fields, the header has {len(header)}; row skipped")
                    continue
                rows.append([f.strip() for f in fields])
                lines.append(line)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: malformed table ({exc})") from exc
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(f"{path}: column name(s) {duplicated} appear more than once in the header")
    return pd.DataFrame(rows, columns=header, dtype=object), lines


def _loose(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


class Columns:
    """Spec column names -> the table's: exact first, then ignoring case, spaces, ``_``, ``-``."""

    def __init__(self, columns: list[str], table: Path) -> None:
        self.columns, self.table = list(columns), table

    def find(self, name: str) -> str | None:
        if name in self.columns:
            return name
        matches = [c for c in self.columns if _loose(c) == _loose(name)]
        if len(matches) > 1:
            raise ConfigError(f"{self.table}: column {name!r} matches several columns {matches}; "
                              "spell it exactly")  # fmt: skip
        return matches[0] if matches else None

    def resolve(self, name: str, key: str) -> str:
        found = self.find(name)
        if found is None:
            raise ConfigError(f"{key}: column {name!r} is not in {self.table}; its columns are "
                              f"{self.columns}")  # fmt: skip
        return found


# ------------------------------------------------------------------------------ cells
def parse_label(value: str, spec: LabelSpec, uncertain: str) -> float | None | str:
    """1.0 / 0.0 / None (unknown), or the string ``"bad"`` for a value that means nothing."""
    text = value.strip()
    if not text:
        return None
    low = text.casefold()
    if spec.positive is not None:
        wanted = {p.strip().casefold() for p in spec.positive}
        values = {v.strip() for v in low.split(spec.delimiter.casefold())} if spec.delimiter else {low}
        if values & wanted:
            return 1.0
        if spec.delimiter and spec.negative is not None:
            known = wanted | {n.strip().casefold() for n in spec.negative}
            return 0.0 if values <= known else "bad"
        if spec.negative is not None and low not in {n.strip().casefold() for n in spec.negative}:
            return "bad"
        return 0.0
    if low in POSITIVE_WORDS:
        return 1.0
    if low in NEGATIVE_WORDS:
        return 0.0
    if low in UNCERTAIN_WORDS:
        return {"ignore": None, "zero": 0.0, "one": 1.0}[uncertain]
    return "bad"


def _sex(value: str) -> str | None | bool:
    """``M`` / ``F``, None for blank, False for a value that is neither."""
    if not value:
        return None
    return SEX_WORDS.get(value.strip().casefold(), False)


# ------------------------------------------------------------------------------ ingest
def ingest_table(spec: TableSpec, *, strict: bool = False) -> tuple[Manifest, ProblemLog]:
    """Ingest the table ``spec`` describes into a study manifest and the problems met."""
    log = ProblemLog(strict=strict)
    if not spec.image_columns():
        raise ConfigError("image: give the image path column (or a list of columns for a wide table)")
    table, lines = read_table(spec.table, spec.separator, log)
    cols = Columns(list(table.columns), spec.table)
    where = [f"{spec.table}:{line}" for line in lines]
    table = table.assign(_where=where)
    rows_read = len(table)
    for key, allowed in spec.filter.items():
        column = cols.resolve(key, f"filter.{key}")
        keep = {a.strip().casefold() for a in allowed}
        table = table[table[column].str.casefold().isin(keep)]
    rows_kept = len(table)
    mapped = _mapped_columns(spec, cols)
    images_base = (spec.images or spec.table.parent).resolve()
    if spec.images is not None and not images_base.is_dir():
        raise DataError(f"{spec.images}: image folder not found")

    studies: dict[str, dict[str, Any]] = {}
    first_row: dict[str, dict[str, Any]] = {}
    seen_images: set[tuple[str, str]] = set()
    for row in table.to_dict("records"):
        here = row["_where"]
        views = _row_views(row, spec, mapped, images_base, here, log)
        study = row[mapped["study"]] if mapped.get("study") else (
            Path(views[0]["image"]).stem if views else "")
        if not study:
            log.add("malformed-row", here, "empty study id (and no image to name it by); row skipped")
            continue
        patient = row[mapped["patient"]] if mapped.get("patient") else study
        if not patient:
            log.add("malformed-row", here, f"study {study!r}: empty patient id; row skipped")
            continue
        fields = _study_fields(row, spec, mapped, here, log)
        fields["patient_id"] = patient
        if study not in studies:
            studies[study] = {"study_id": study, **fields, "views": []}
            first_row[study] = fields
        elif spec.wide:
            log.add("duplicate-row", here, f"study {study!r} listed before (wide layout: one row "
                    "per study); row skipped")  # fmt: skip
            continue
        else:
            differs = [k for k in ("patient_id", "labels", "split", "age", "sex")
                       if _differs(fields.get(k), first_row[study].get(k))]
            if differs:
                log.add("conflicting-rows", here, f"study {study!r}: {', '.join(differs)} differ from "
                        "its first row; the first row's values kept")  # fmt: skip
        for view in views:
            key = (study, view["image"])
            if key in seen_images:
                log.add("duplicate-row", here, f"image {view['image']!r} of study {study!r} listed before; skipped")
                continue
            seen_images.add(key)
            studies[study]["views"].append(view)

    records = []
    for study in studies.values():
        taken: set[str] = set()
        views = []
        for v in study["views"]:
            image_id = _unique(Path(v["image"]).stem or study["study_id"], taken)
            views.append({"image_id": image_id, "path": v["path"], "view": v["view"]})
        implausible = implausible_views(views)
        if implausible:
            log.add("implausible-views", study["study_id"], f"{implausible}; kept as the table says")
        records.append({**{k: v for k, v in study.items() if k != "views"}, "views": views})
    on_disk = sum(1 for r in records for v in r["views"] if v["path"])
    n_images = sum(len(r["views"]) for r in records)
    labels = list(spec.labels)
    info = {
        "table": str(spec.table.resolve()), "images": str(images_base),
        "layout": "wide" if spec.wide else "long",
        "spec": spec.model_dump(mode="json"),
        "counts": {"rows_read": rows_read, "rows_after_filter": rows_kept, "studies": len(records),
                   "images": n_images, "images_on_disk": on_disk},
    }  # fmt: skip
    tasks = {task_slug(n): [n] for n in labels}
    if len(labels) > 1:
        tasks["multilabel"] = labels
    manifest = Manifest.from_records(
        records, dataset=spec.dataset, labels=labels, tasks=tasks,
        images="real" if on_disk else "none",
        problems={"counts": log.counts(), "examples": log.to_records()}, info=info,
    )  # fmt: skip
    return manifest, log


def _mapped_columns(spec: TableSpec, cols: Columns) -> dict[str, Any]:
    """Every column the spec names, resolved against the table (ConfigError for unknown ones)."""
    out: dict[str, Any] = {}
    for key in ("study", "patient", "report", "split"):
        name = getattr(spec, key)
        if name is not None:
            out[key] = cols.resolve(name, key)
    images = spec.image_columns()
    out["image"] = [cols.resolve(c, f"image[{i}]" if spec.wide else "image") for i, c in enumerate(images)]
    views = spec.view
    if views is None:
        out["view"] = [None] * len(images)
    elif isinstance(views, str):
        if spec.wide:
            raise ConfigError("view: a wide table (image is a list) needs a list of views, one per image column")
        out["view"] = [("column", cols.resolve(views, "view"))]
    else:
        if not spec.wide or len(views) != len(images):
            raise ConfigError(f"view: {len(views)} entries for {len(images)} image column(s); "
                              "a list of views goes with a list of image columns of the same length")
        out["view"] = []
        for i, entry in enumerate(views):
            column = cols.find(entry)
            if column is not None:
                out["view"].append(("column", column))
            elif normalise_view(entry) != "UNKNOWN" or entry.strip().upper() == "UNKNOWN":
                out["view"].append(("fixed", normalise_view(entry)))
            else:
                raise ConfigError(f"view[{i}]: {entry!r} is neither a column of {spec.table} (its "
                                  f"columns are {cols.columns}) nor a view position")  # fmt: skip
    out["sections"] = {s: cols.resolve(c, f"sections.{s}") for s, c in spec.sections.items()}
    out["labels"] = {n: cols.resolve(s.column, f"labels.{n}.column") for n, s in spec.labels.items()}
    out["age"] = cols.resolve(spec.demographics.age, "demographics.age") if spec.demographics.age else None
    out["sex"] = cols.resolve(spec.demographics.sex, "demographics.sex") if spec.demographics.sex else None
    return out


def _row_views(row: dict[str, str], spec: TableSpec, mapped: dict[str, Any], base: Path, here: str,
               log: ProblemLog) -> list[dict[str, Any]]:  # fmt: skip
    """The images of one row: ``{image, path (None when not on disk), view}``."""
    views = []
    for column, view_spec in zip(mapped["image"], mapped["view"]):
        cell = row[column]
        if not cell:
            if not spec.wide:
                log.add("empty-image", here, f"column {column!r} is blank; no image for this row")
            continue
        view = "UNKNOWN"
        if view_spec is not None:
            kind, value = view_spec
            if kind == "fixed":
                view = value
            else:
                raw = row[value]
                view = normalise_view(raw)
                if view == "UNKNOWN" and raw and raw.strip().upper() != "UNKNOWN":
                    log.add("unknown-view", here, f"view {raw!r} in column {value!r} is not a known "
                            "view position; kept as UNKNOWN")  # fmt: skip
        path = Path(cell)
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            log.add("missing-image", here, f"{cell} not found under {base}")
        views.append({"image": cell, "path": str(path) if path.is_file() else None, "view": view})
    return views


def _study_fields(row: dict[str, str], spec: TableSpec, mapped: dict[str, Any], here: str,
                  log: ProblemLog) -> dict[str, Any]:  # fmt: skip
    """Report sections, labels, demographics and split of one row."""
    fields: dict[str, Any] = {s: (row[c] or None) for s, c in mapped["sections"].items()}
    for section in REPORT_SECTIONS:
        fields.setdefault(section, None)
    fields["report"] = row[mapped["report"]] or None if mapped.get("report") else None
    labels: dict[str, float | None] = {}
    for name, column in mapped["labels"].items():
        value = parse_label(row[column], spec.labels[name], spec.uncertain)
        if value == "bad":
            log.add("bad-label-value", here, f"label {name!r}: value {row[column]!r} in column "
                    f"{column!r} is not 1/0/-1/blank, yes/no or true/false; left unknown")  # fmt: skip
            value = None
        labels[name] = value  # type: ignore[assignment]
    fields["labels"] = labels
    fields["source_labels"] = [n for n, v in labels.items() if v == 1.0]
    age = None
    if mapped["age"] and row[mapped["age"]]:
        age = float(parse_age(pd.Series([row[mapped["age"]]])).iat[0])
        if np.isnan(age):
            log.add("bad-age", here, f"age {row[mapped['age']]!r} is not a number of years; left unknown")
            age = None
    fields["age"] = age
    sex = _sex(row[mapped["sex"]]) if mapped["sex"] else None
    if sex is False:
        log.add("bad-sex", here, f"sex {row[mapped['sex']]!r} is not M/F; left unknown")
        sex = None
    fields["sex"] = sex
    split = None
    if mapped.get("split") and row[mapped["split"]]:
        split = SPLIT_WORDS.get(row[mapped["split"]].casefold())
        if split is None:
            log.add("bad-split", here, f"split {row[mapped['split']]!r} is not one of {SPLITS}; "
                    "left unassigned")  # fmt: skip
    fields["split"] = split
    return fields


def _differs(a: Any, b: Any) -> bool:
    return a != b and not (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate
