"""Read generated / reference reports from JSON, CSV or Parquet; write scores atomically.

Accepted inputs (:func:`read_reports`):

- JSON ``{id: text}`` or ``{id: [text, ...]}`` (the R2Gen / R2GenGPT convention), or a list
  of records ``[{"id": ..., "report": ...}, ...]``; an R2Gen ``annotation.json`` of IU X-ray
  or MIMIC-CXR (``train`` / ``val`` / ``test`` lists of records) with ``split=``; a ReXrank
  file (``{study: {"report" | "section_findings" + "section_impression", "split", ...}}``;
  ``model_prediction`` is the text with ``prediction=True``), ``split=`` filtering its records;
- CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) with an id column
  and a text column; the names are found among :data:`ID_COLUMNS` / :data:`TEXT_COLUMNS`
  (case-insensitive) or given as ``id_column`` / ``text_column``; with ``split=``, the rows
  whose ``split`` column holds that split (MIMIC-CXR's ``validate`` is ``val``).

Every problem is a :class:`~cxrfuse.problems.DataError` naming the file and the row, study
or column: an empty file, invalid JSON, a missing or ambiguous column, a duplicate id, a text
that is not a string, an empty text (unless ``allow_empty``, e.g. for generated reports).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfuse.files import json_safe
from cxrfuse.problems import DataError
from cxrfuse.rundir import GenerationDir, layout

ID_COLUMNS = ("id", "study_id", "study", "uid", "image_id", "dicom_id", "report_id")
TEXT_COLUMNS = (
    "text", "report", "generated", "prediction", "pred", "hypothesis", "generated_report",
    "reference", "ground_truth", "gt", "target", "findings",
)
SPLIT_ALIASES = {"val": ("val", "valid", "validate", "validation"), "train": ("train", "training"),
                 "test": ("test", "testing")}
"""Split names taken as one another (R2Gen: ``val``; MIMIC-CXR: ``validate``; ReXrank: ``valid``)."""
SCORES_FILE = layout.SCORES
LABELS_FILE = layout.STUDY_LABELS


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".csv.gz", ".tsv.gz", ".json", ".csv", ".tsv", ".parquet", ".pq"):
        if name.endswith(suffix):
            return suffix
    raise DataError(f"{path}: unknown report file type; use .json, .csv, .tsv or .parquet")


def _column(path: Path, columns: Iterable[str], given: str | None, choices: tuple[str, ...],
            what: str) -> str:
    columns = [str(c) for c in columns]
    if given is not None:
        if given not in columns:
            raise DataError(f"{path}: no {what} column {given!r}; columns are {columns}")
        return given
    lower = {c.lower(): c for c in columns}
    found = [lower[c] for c in choices if c in lower]
    if not found:
        raise DataError(
            f"{path}: no {what} column; columns are {columns}, expected one of {list(choices)} "
            f"(or name it with {what}_column=)"
        )
    if len(found) > 1:
        raise DataError(f"{path}: several possible {what} columns {found}; name one with {what}_column=")
    return found[0]


def _add(out: dict[str, list[str]], path: Path, where: str, study: Any, texts: Any,
         allow_empty: bool) -> None:
    if study is None or (isinstance(study, float) and math.isnan(study)) or str(study).strip() == "":
        raise DataError(f"{path}: {where}: missing study id")
    key = str(study).strip()
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise DataError(f"{path}: {where} (study {key!r}): text must be a string or a non-empty list "
                        f"of strings, got {type(texts).__name__}")
    for text in texts:
        if not isinstance(text, str):
            raise DataError(f"{path}: {where} (study {key!r}): text must be a string, got "
                            f"{type(text).__name__} {text!r:.40}")
        if not text.strip() and not allow_empty:
            raise DataError(f"{path}: {where} (study {key!r}): empty text")
    if key in out:
        raise DataError(f"{path}: {where}: duplicate study id {key!r}")
    out[key] = list(texts)


def _split_names(split: str) -> tuple[str, ...]:
    key = split.strip().lower()
    for names in SPLIT_ALIASES.values():
        if key in names:
            return names
    return (key,)


def _pick_split(path: Path, available: Iterable[Any], split: str) -> Any:
    """The name among ``available`` that means ``split``; a DataError naming the file and the
    splits it has otherwise."""
    available = list(dict.fromkeys(available))
    for name in available:
        if str(name).strip().lower() in _split_names(split):
            return name
    raise DataError(f"{path}: no split {split!r}; its splits are {sorted(map(str, available))}")


def _rexrank_text(record: dict[str, Any], text_column: str | None, prediction: bool) -> Any:
    if text_column is not None:
        return record.get(text_column)
    if prediction and "model_prediction" in record:
        return record["model_prediction"]
    if "report" in record:
        return record["report"]
    parts = [record.get("section_findings"), record.get("section_impression")]
    if any(isinstance(x, str) and x.strip() for x in parts):  # ReXrank's evaluation script
        return f"Findings: {parts[0] or ''} Impression: {parts[1] or ''}"
    return record.get("model_prediction")


def _from_json(path: Path, id_column: str | None, text_column: str | None, split: str | None,
               allow_empty: bool, prediction: bool = False) -> dict[str, list[str]]:
    raw = path.read_text(encoding="utf-8")
    if not raw.strip():
        raise DataError(f"{path}: empty file")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    annotation = isinstance(data, dict) and bool(data) and all(
        isinstance(v, list) and (not v or isinstance(v[0], dict)) for v in data.values())
    rexrank = isinstance(data, dict) and bool(data) and all(isinstance(v, dict) for v in data.values())
    if annotation:
        if split is None:
            raise DataError(f"{path}: an R2Gen annotation.json ({sorted(data)} lists): name the split "
                            "(--reference-split / --train-split on the command line, split= in Python)")
        data = data[_pick_split(path, data, split)]
        if not data:
            raise DataError(f"{path}: split {split!r} is empty")
    elif rexrank:
        if split is not None:
            names = {str(v.get("split", "")) for v in data.values()}
            chosen = _pick_split(path, names, split)
            data = {k: v for k, v in data.items() if str(v.get("split", "")) == chosen}
        out: dict[str, list[str]] = {}
        for study, record in data.items():
            _add(out, path, f"study {study!r}", study, _rexrank_text(record, text_column, prediction),
                 allow_empty)
        return out
    elif split is not None:
        raise DataError(f"{path}: has no splits (neither an R2Gen annotation.json nor records with a "
                        f"split field), so split {split!r} cannot be chosen")
    out = {}
    if isinstance(data, dict):
        for study, texts in data.items():
            _add(out, path, f"study {study!r}", study, texts, allow_empty)
    elif isinstance(data, list):
        if not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: a JSON list must hold records ({{id, text}} objects)")
        keys = list(dict.fromkeys(k for r in data for k in r))
        id_key = _column(path, keys, id_column, ID_COLUMNS, "id")
        text_key = _column(path, keys, text_column, TEXT_COLUMNS, "text")
        for i, record in enumerate(data):
            if text_key not in record:
                raise DataError(f"{path}: record {i + 1}: no field {text_key!r}")
            _add(out, path, f"record {i + 1}", record.get(id_key), record[text_key], allow_empty)
    else:
        raise DataError(f"{path}: expected a JSON object {{id: text}} or a list of records")
    if not out:
        raise DataError(f"{path}: no reports")
    return out


def _from_table(path: Path, suffix: str, id_column: str | None, text_column: str | None,
                allow_empty: bool, split: str | None = None) -> dict[str, list[str]]:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            sep = "\t" if suffix.startswith(".tsv") else ","
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if frame.empty:
        raise DataError(f"{path}: no reports (no rows)")
    if split is not None:
        lower = {str(c).lower(): c for c in frame.columns}
        if "split" not in lower:
            raise DataError(f"{path}: no split column, so split {split!r} cannot be chosen; "
                            f"columns are {[str(c) for c in frame.columns]}")
        column = frame[lower["split"]].astype(str)
        frame = frame[column == _pick_split(path, column.unique(), split)]
    id_key = _column(path, frame.columns, id_column, ID_COLUMNS, "id")
    text_key = _column(path, frame.columns, text_column, TEXT_COLUMNS, "text")
    csv = suffix not in (".parquet", ".pq")
    out: dict[str, list[str]] = {}
    for i, (study, text) in enumerate(zip(frame[id_key].tolist(), frame[text_key].tolist())):
        where = f"row {i + 1} (line {i + 2})" if csv else f"row {i + 1}"
        if text is None or (isinstance(text, float) and math.isnan(text)):
            if not allow_empty:
                raise DataError(f"{path}: {where}: missing text in column {text_key!r}")
            text = ""
        if isinstance(study, (np.integer, int)) and not isinstance(study, bool):
            study = str(int(study))
        _add(out, path, where, study, text, allow_empty)
    return out


def read_reports(
    path: str | Path,
    *,
    id_column: str | None = None,
    text_column: str | None = None,
    split: str | None = None,
    allow_empty: bool = False,
    prediction: bool = False,
    split_file: str | Path | None = None,
) -> dict[str, list[str]]:
    """Reports of a JSON, CSV or Parquet file as ``{study id: [text, ...]}``; ``split`` picks
    one split of a file that has several, or, with ``split_file`` (MIMIC-CXR's
    ``mimic-cxr-2.0.0-split.csv.gz``: ``dicom_id, study_id, subject_id, split``), the reports
    whose id that file puts in ``split``; ``prediction`` reads a ReXrank file's
    ``model_prediction``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such report file")
    if split_file is not None:
        if split is None:
            raise DataError(f"{split_file}: a split file needs the split to pick (--reference-split / --train-split)")
        reports = read_reports(path, id_column=id_column, text_column=text_column,
                               allow_empty=allow_empty, prediction=prediction)
        return _by_split_file(reports, Path(split_file), split)
    suffix = _suffix(path)
    if suffix == ".json":
        return _from_json(path, id_column, text_column, split, allow_empty, prediction)
    return _from_table(path, suffix, id_column, text_column, allow_empty, split)


def _bare(study: str) -> str:
    """A MIMIC-CXR id without its folder prefix (``s50414267`` -> ``50414267``)."""
    return study[1:] if len(study) > 1 and study[0] in "sp" and study[1:].isdigit() else study


def _by_split_file(reports: dict[str, list[str]], path: Path, split: str) -> dict[str, list[str]]:
    """The reports whose id ``path`` (id column(s) + ``split``) puts in ``split``; the id
    column is the one sharing most ids with the reports (``s`` prefixes ignored)."""
    if not path.is_file():
        raise DataError(f"{path}: no such split file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    lower = {str(c).lower(): c for c in frame.columns}
    if "split" not in lower:
        raise DataError(f"{path}: no split column; columns are {[str(c) for c in frame.columns]}")
    wanted = {_bare(k): k for k in reports}
    candidates = [lower[c] for c in ID_COLUMNS if c in lower and c != "split"]
    if not candidates:
        raise DataError(f"{path}: no id column; expected one of {list(ID_COLUMNS)}")
    column = max(candidates, key=lambda c: len(set(frame[c].map(_bare)) & set(wanted)))
    frame = frame.assign(_id=frame[column].map(_bare))
    frame = frame[frame["_id"].isin(wanted)]
    if frame.empty:
        raise DataError(f"{path}: none of its ids is a report id (e.g. {next(iter(reports))!r})")
    chosen = _pick_split(path, frame[lower["split"]].unique(), split)
    splits = frame.groupby("_id")[lower["split"]].nunique()
    if (splits > 1).any():
        raise DataError(f"{path}: study {splits[splits > 1].index[0]!r} is in several splits")
    keep = set(frame.loc[frame[lower["split"]] == chosen, "_id"])
    return {wanted[k]: reports[wanted[k]] for k in wanted if k in keep}


def has_splits(path: str | Path) -> bool:
    """Whether a report file holds several splits (an R2Gen annotation.json, ReXrank records
    with a split field, a table with a split column)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        if not isinstance(data, dict) or not data:
            return False
        values = list(data.values())
        return all(isinstance(v, list) for v in values) or all(
            isinstance(v, dict) and "split" in v for v in values)
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return "split" in [c.lower() for c in pq.read_schema(path).names]
    head = pd.read_csv(path, sep="\t" if suffix.startswith(".tsv") else ",", nrows=0)
    return "split" in [str(c).lower() for c in head.columns]


# ----------------------------------------------------------------------------- writing
strict_json = json_safe
"""``value`` with NaN / inf as None, numpy scalars and arrays as Python values
(:func:`cxrfuse.files.json_safe`, which every JSON writer applies)."""


def _labels_frame(study_labels: dict[str, Any]) -> pd.DataFrame:
    names = list(study_labels["labels"])
    rows = []
    for source in ("reference", "generated"):
        for study, values in study_labels.get(source, {}).items():
            rows.append({"id": study, "source": source, **dict(zip(names, values))})
    return pd.DataFrame(rows, columns=["id", "source", *names])


def _public(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` without in-memory keys (``_samples``, ``_per_study``, ...), recursively."""
    return {k: _public(v) if isinstance(v, dict) else v for k, v in payload.items()
            if not str(k).startswith("_")}


def write_scores(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``DIR/scores.json`` (strict JSON, NaN -> null) atomically and, when the payload
    holds ``study_labels``, ``DIR/study_labels.csv`` (one row per study and report set),
    through :meth:`~cxrfuse.rundir.GenerationDir.write_scores`. Returns the path of
    scores.json."""
    scores = _public({k: v for k, v in payload.items() if k != "study_labels"})
    labels = None
    if "study_labels" in payload:
        scores["study_labels_file"] = LABELS_FILE
        labels = _labels_frame(payload["study_labels"])
    return GenerationDir(directory).write_scores(scores, None, labels)  # NaN -> null there


__all__ = ["ID_COLUMNS", "LABELS_FILE", "SCORES_FILE", "SPLIT_ALIASES", "TEXT_COLUMNS", "has_splits",
           "read_reports",
           "strict_json", "write_scores"]
