"""Store integrity: a digest of every shard file recorded when it is written and checked when
it is first opened in a process; non-finite vectors refused; damaged files named.

Each image shard's ``.npy`` digest is written into its ``.ids.json`` (so a resumed run can
trust the shards already there), and ``meta.json`` lists the digest of every file of the
store (``digests``). A file whose bytes no longer match, or that cannot be parsed, raises
:class:`DamagedStore`: its shard (and ``meta.json``) are removed so that the next ``cxrfuse
embed`` (or ``train``) recomputes exactly the damaged shards, and the message says so.

The digest is SHA-256 from :mod:`hashlib` (no extra dependency; with the CPU's SHA
instructions 4-7x faster than BLAKE2b on the dev CPU, about 1.8 GB/s, faster than most
disks read): ``benchmarks/store_digest.py`` measures it against BLAKE2b and xxHash
(``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from cxrfuse.files import atomic_path
from cxrfuse.problems import DataError

ALGORITHM = "sha256"
_CHUNK = 1 << 20
_verified: set[tuple[str, int, int, str]] = set()
"""(path, size, mtime_ns, digest) of the files verified in this process."""


class DamagedStore(DataError):
    """A store file's bytes do not match its recorded digest, or it cannot be read."""


def digest_bytes(data: bytes | memoryview) -> str:
    """``sha256:<hex>`` of ``data``."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def digest_file(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return f"{ALGORITHM}:{h.hexdigest()}"


def write_npy_digest(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically and return the digest of the bytes written."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getbuffer()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return digest_bytes(data)


def nonfinite_rows(array: np.ndarray) -> np.ndarray:
    """Indices of the rows of a 2-D array with a NaN or an infinity."""
    if array.size == 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(~np.isfinite(np.asarray(array, dtype=np.float32)).all(axis=1))


def verify_file(path: Path, expected: str | None, *, remove: Sequence[Path] = ()) -> None:
    """Check ``path`` against its recorded digest (once per process while its size and mtime
    stay the same); on a mismatch remove ``remove`` and raise :class:`DamagedStore`."""
    if not expected:
        return  # written before digests were recorded
    try:
        st = os.stat(path)
    except FileNotFoundError:
        damaged(path, "missing", remove)
    stamp = (str(path), st.st_size, st.st_mtime_ns, expected)
    if stamp in _verified:
        return
    if digest_file(path) != expected:
        damaged(path, f"its bytes do not match the digest recorded when it was written "
                      f"({st.st_size} bytes now)", remove)  # fmt: skip
    _verified.add(stamp)


def damaged(path: Path, why: str, remove: Sequence[Path] = ()) -> NoReturn:
    """Remove the damaged shard's files (and the store's meta.json) and raise one error that
    names ``path`` and what to do."""
    removed = []
    for other in remove:
        try:
            other.unlink()
            removed.append(other.name)
        except FileNotFoundError:
            continue
        except OSError:  # a read-only store: say what to delete instead
            _raise(path, why, None, remove)
    _raise(path, why, removed, remove)


def _raise(path: Path, why: str, removed: list[str] | None, remove: Sequence[Path]) -> NoReturn:
    if removed is None:
        todo = f"delete {', '.join(str(p) for p in remove)} and rerun `cxrfuse embed`"
    else:
        todo = ("removed it; rerun the same `cxrfuse embed` (or `train`) to recompute only "
                "the damaged shard(s)")
    raise DamagedStore(f"{path}: damaged store file ({why}); {todo}")


def read_json(path: Path, *, remove: Sequence[Path] = ()) -> Any:
    """Parse a store JSON file; a file that is not JSON is named as damaged."""
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        damaged(path, f"not JSON: {err}", remove)
    except RecursionError:
        damaged(path, "JSON nested too deeply", remove)


def load_npy(path: Path, *, remove: Sequence[Path] = ()) -> np.ndarray:
    """Memory-map an .npy file; a truncated or malformed one is named as damaged."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as err:
        damaged(path, f"not a whole .npy file: {err}", remove)


def open_array(path: Path, expected: str | None, ids: Sequence[str], *,
               remove: Sequence[Path] = ()) -> np.ndarray:  # fmt: skip
    """A stored array, memory-mapped: checked against its digest and for non-finite rows
    the first time this process opens it (while its size and mtime stay the same)."""
    stamp = _stamp(path, expected)
    fresh = stamp not in _verified
    verify_file(path, expected, remove=remove)
    array = load_npy(path, remove=remove)
    if fresh:
        check_finite(array, path, ids)
        release_pages(array)
        if stamp is not None:
            _verified.add(stamp)
    return array


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set (the file
    stays in the OS page cache); anything else is left alone."""
    mapped = getattr(array, "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):  # closed map, or no madvise here
            mapped.madvise(mmap.MADV_DONTNEED)


def _stamp(path: Path, expected: str | None) -> tuple[str, int, int, str] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns, expected or "")


def check_finite(array: np.ndarray, path: Path, ids: Sequence[str]) -> None:
    """Raise a :class:`DataError` naming the rows of a stored array that are not finite."""
    rows = nonfinite_rows(array)
    if len(rows):
        named = ", ".join(str(ids[r]) if r < len(ids) else f"row {r}" for r in rows[:5])
        raise DataError(f"{path}: {len(rows)} vector(s) with NaN or infinity ({named}); "
                        "delete this store folder and rerun `cxrfuse embed`")
