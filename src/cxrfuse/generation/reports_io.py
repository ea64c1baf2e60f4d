"""Read generated / reference reports from JSON, CSV or Parquet; write scores atomically.

Accepted inputs (:func:`read_reports`):

- JSON ``{id: text}`` or ``{id: [text, ...]}`` (the R2Gen / R2GenGPT convention), or a list
  of records ``[{"id": ..., "report": ...}, ...]``; an R2Gen ``annotation.json`` (``train`` /
  ``val`` / ``test`` lists of records) with ``split=``;
- CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) with an id column
  and a text column; the names are found among :data:`ID_COLUMNS` / :data:`TEXT_COLUMNS`
  (case-insensitive) or given as ``id_column`` / ``text_column``.

Every problem is a :class:`~cxrfuse.problems.DataError` naming the file and the row, study
or column: an empty file, invalid JSON, a missing or ambiguous column, a duplicate id, a text
that is not a string, an empty text (unless ``allow_empty``, e.g. for generated reports).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfuse.problems import DataError
from cxrfuse.rundir import layout

ID_COLUMNS = ("id", "study_id", "study", "uid", "image_id", "dicom_id", "report_id")
TEXT_COLUMNS = (
    "text", "report", "generated", "prediction", "pred", "hypothesis", "generated_report",
    "reference", "ground_truth", "gt", "target", "findings",
)
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


def _from_json(path: Path, id_column: str | None, text_column: str | None, split: str | None,
               allow_empty: bool) -> dict[str, list[str]]:
    raw = path.read_text(encoding="utf-8")
    if not raw.strip():
        raise DataError(f"{path}: empty file")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if split is not None:
        if not isinstance(data, dict) or split not in data:
            raise DataError(f"{path}: no split {split!r} (keys: {list(data)[:5] if isinstance(data, dict) else 'none'})")
        data = data[split]
    elif isinstance(data, dict) and data and set(data) <= {"train", "val", "test"} and all(
        isinstance(v, list) and v and isinstance(v[0], dict) for v in data.values()
    ):
        raise DataError(f"{path}: looks like an R2Gen annotation.json ({sorted(data)} lists); pass split=")
    out: dict[str, list[str]] = {}
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
                allow_empty: bool) -> dict[str, list[str]]:
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
) -> dict[str, list[str]]:
    """Reports of a JSON, CSV or Parquet file as ``{study id: [text, ...]}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such report file")
    suffix = _suffix(path)
    if suffix == ".json":
        return _from_json(path, id_column, text_column, split, allow_empty)
    return _from_table(path, suffix, id_column, text_column, allow_empty)


# ----------------------------------------------------------------------------- writing
def strict_json(value: Any) -> Any:
    """``value`` with NaN / inf as None, numpy scalars and arrays as Python values."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


def _atomic_write(path: Path, text: str) -> None:
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before os.replace
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _labels_csv(study_labels: dict[str, Any]) -> str:
    names = list(study_labels["labels"])
    rows = []
    for source in ("reference", "generated"):
        for study, values in study_labels.get(source, {}).items():
            rows.append({"id": study, "source": source, **dict(zip(names, values))})
    return pd.DataFrame(rows, columns=["id", "source", *names]).to_csv(index=False)


def _public(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` without in-memory keys (``_samples``, ``_per_study``, ...), recursively."""
    return {k: _public(v) if isinstance(v, dict) else v for k, v in payload.items()
            if not str(k).startswith("_")}


def write_scores(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``DIR/scores.json`` (strict JSON, NaN -> null) atomically and, when the payload
    holds ``study_labels``, ``DIR/study_labels.csv`` (one row per study and report set).
    Returns the path of scores.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scores = _public({k: v for k, v in payload.items() if k != "study_labels"})
    if "study_labels" in payload:
        scores["study_labels_file"] = LABELS_FILE
        _atomic_write(directory / LABELS_FILE, _labels_csv(payload["study_labels"]))
    target = directory / SCORES_FILE
    _atomic_write(target, json.dumps(strict_json(scores), indent=2, allow_nan=False) + "\n")
    return target


__all__ = ["ID_COLUMNS", "LABELS_FILE", "SCORES_FILE", "TEXT_COLUMNS", "read_reports",
           "strict_json", "write_scores"]
