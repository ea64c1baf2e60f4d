"""Reading the CSV tables of the dataset layouts, with errors that name the file and column."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxrfuse.problems import DataError, ProblemLog


def read_csv(path: Path, required: Sequence[str], problems: ProblemLog | None = None) -> pd.DataFrame:
    """All columns as stripped strings (blank = ``""``); a missing file or column raises DataError.

    A row with more or fewer fields than the header is a ``malformed-row`` problem in
    ``problems`` (the other rows are kept); without a log it raises DataError naming the line.
    """
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        if problems is None:
            raise DataError(f"{path}: malformed CSV ({exc})") from exc
        table = _read_skipping_ragged_rows(path, problems)
    except (pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing required column {missing[0]!r} "
                        f"(missing: {missing}; found: {list(table.columns)})")
    return table.fillna("").apply(lambda col: col.str.strip())


def _read_skipping_ragged_rows(path: Path, problems: ProblemLog) -> pd.DataFrame:
    """The CSV through the csv module: rows whose field count differs from the header's are
    counted problems (``file:line``) and left out."""
    rows: list[list[str]] = []
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty CSV file")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    problems.add("malformed-row", f"{path}:{reader.line_num}",
                                 f"{len(row)} field(s), the header has {len(header)}; row skipped")
                    continue
                rows.append(row)
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    return pd.DataFrame(rows, columns=header, dtype=str)
