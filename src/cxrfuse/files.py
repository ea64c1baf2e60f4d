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
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(json_safe(payload), fh, indent=indent, default=str)
        fh.flush()
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
    except OSError as err:
        if err.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)  # a full disk or a killed block leaves no temp file


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars and arrays -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy file atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()


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


LOCK_NAME = ".cxrfuse.lock"
"""The advisory lock file of a folder that one writer at a time may change (a store key
folder, a run directory, an experiment directory, a generation directory)."""

_lock_options = {"wait": True}


def first_rank() -> bool:
    """False in the other ranks of a multi-process job (torchrun, Lightning DDP children):
    they run inside the lock rank 0 holds and must not wait for it."""
    return all(os.environ.get(v, "0") in ("", "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def set_lock_wait(wait: bool) -> None:
    """Whether a second writer waits for a folder's lock (default) or stops at once
    (``--no-wait``: a :class:`~cxrfuse.problems.CxrfuseError` naming the holder)."""
    _lock_options["wait"] = wait


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "folder", *,
                wait: bool | None = None) -> Iterator[Path]:  # fmt: skip
    """Hold the advisory lock (``fcntl.flock``) of ``folder`` while the block runs.

    The lock file records pid, host and start time; a second writer prints "waiting for the
    lock held by pid N on HOST since ..." and waits, or (``wait=False`` / ``--no-wait``)
    raises a :class:`~cxrfuse.problems.CxrfuseError` naming the holder. The kernel drops the
    lock of a killed process, so a stale lock file is taken over (and said so). Locks are
    per open file: a process that already holds the folder's lock must not take it again.
    """
    import fcntl
    import sys
    import time

    from cxrfuse.problems import CxrfuseError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    wait = _lock_options["wait"] if wait is None else wait
    fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(path)
            if not wait:
                raise CxrfuseError(f"{folder}: {what} is being written by {holder} (lock "
                                   f"{path}); wait for it, or rerun without --no-wait") from None
            print(f"{folder}: waiting for the lock held by {holder}", file=sys.stderr, flush=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        else:
            previous = _lock_holder(path)  # a clean release empties the file
            if previous != "an unknown process":
                print(f"{folder}: took over the lock left by {previous} (that process ended "
                      "without releasing it; a killed writer)", file=sys.stderr, flush=True)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))  # fmt: skip
        fh.flush()
        try:
            yield path
        finally:
            fh.seek(0)
            fh.truncate()  # released cleanly: nothing stale left
            fh.flush()
    finally:
        fh.close()  # closing drops the lock


def _lock_holder(path: Path) -> str:
    """"pid N on HOST since T" from a lock file, or "an unknown process"."""
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {int(info['pid'])} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"

