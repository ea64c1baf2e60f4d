"""Crash-safe files: atomic JSON/text/.npy/Parquet writes (stores, run directories), digests,
file stamps.

A file is written to ``NAME.tmp-HOST-PID`` (flushed and fsync'ed) and renamed over ``NAME``,
so a reader never sees half a file and a killed writer leaves only a temp file, which the
next run deletes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def sha256_json(payload: Any) -> str:
    """sha256 of ``payload`` as canonical JSON (sorted keys; other types via ``str``)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def write_json(path: Path, payload: Any, *, indent: int | None = None) -> Path:
    """Write strict JSON atomically (temp file, fsync, rename); see :func:`json_safe`."""
    tmp = _temp_path(path)
    with open(tmp, "w") as fh:
        json.dump(json_safe(payload), fh, indent=indent, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path to write to; renamed over ``path`` when the block ends without an error
    (for writers that take a path, e.g. ``DataFrame.to_parquet``)."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy file atomically (temp file, fsync, rename)."""
    tmp = _temp_path(path)
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def clean_temp_files(folder: Path) -> None:
    """Delete temp files a killed writer left in ``folder``."""
    for tmp in folder.glob("*.tmp-*"):
        tmp.unlink(missing_ok=True)


def file_stamp(path: str) -> tuple[int | None, int | None]:
    """(size, mtime in ns) of ``path``; (None, None) when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns
