"""Reading the CSV tables of the dataset layouts, with errors that name the file and column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxrfuse.problems import DataError


def read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """All columns as stripped strings (blank = ``""``); a missing file or column raises DataError."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing required column {missing[0]!r} "
                        f"(missing: {missing}; found: {list(table.columns)})")
    return table.fillna("").apply(lambda col: col.str.strip())
