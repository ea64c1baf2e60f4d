"""Decoded-image cache: images decoded, cropped and resized once, as memory-mapped uint8.

``cache_dir/decoded-<size>px-<key>/`` holds the images of one ordered list of paths at one
input size (the key digests the paths, the size and the decoder version), so any encoder
with that input size, and any rerun, reads pixels from here instead of decoding PNG/JPEG
files. Shards (``decoded-00000.npy``, (n, size, size) uint8, plus ``decoded-00000.json``
with each row's file stamp and decode status) are written with atomic renames like the
embedding store; a killed run leaves only whole shards.

A cached row is used when its file's size and mtime are unchanged, or when the file no
longer exists (the cache then stands in for it); a file that changed is decoded again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cxrfuse.data.images import DECODE_VERSION, LEGACY_FIT, check_fit
from cxrfuse.data.manifest import Manifest
from cxrfuse.files import clean_temp_files, file_stamp, sha256_json, write_json, write_npy
from cxrfuse.problems import DataError
from cxrfuse.store.keys import image_records

CACHE_VERSION = 1
Stamp = tuple[int | None, int | None]


class DecodedImageCache:
    """uint8 images of ``paths`` at ``size`` px, in shards of ``shard_size`` rows.

    ``stamps`` are the files' current (size, mtime_ns). ``lookup`` may run in DataLoader
    workers (shards are opened lazily per process); ``add`` runs in the writing process and
    writes a shard once all its rows are there.
    """

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        stamps: Sequence[Stamp],
        size: int,
        shard_size: int = 1024,
        *,
        create: bool = True,
        fit: str = LEGACY_FIT,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.stamps = [tuple(s) for s in stamps]
        self.size = int(size)
        self.fit = check_fit(fit)
        inputs = {
            "cache_version": CACHE_VERSION,
            "decode_version": DECODE_VERSION,
            "size": self.size,
            "paths_sha256": sha256_json(self.paths),
            "n_images": len(self.paths),
        }
        if self.fit != LEGACY_FIT:  # a crop cache keeps the key it had before the option
            inputs["fit"] = self.fit
        self.key = sha256_json(inputs)[:16]
        self.folder = Path(root) / f"decoded-{self.size}px-{self.key}"
        info_path = self.folder / "cache.json"
        if create and not info_path.is_file():
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                clean_temp_files(self.folder)
                write_json(info_path, {**inputs, "shard_size": int(shard_size)})
            except OSError as err:
                raise DataError(f"{self.folder}: cannot create the decoded-image cache "
                                f"({err.strerror or err})") from err  # fmt: skip
        try:
            self.shard_size = int(json.loads(info_path.read_text())["shard_size"])
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{info_path}: unreadable decoded-image cache info ({err})") from err
        self._open: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        self._pending: dict[int, dict[int, tuple[np.ndarray, bool, str]]] = {}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen shards themselves
        return {**self.__dict__, "_open": {}, "_pending": {}}

    @property
    def n_shards(self) -> int:
        return -(-len(self.paths) // self.shard_size)

    def _files(self, shard: int) -> tuple[Path, Path]:
        stem = self.folder / f"decoded-{shard:05d}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def has_shard(self, shard: int) -> bool:
        return self._files(shard)[1].is_file()

    @property
    def complete(self) -> bool:
        return all(self.has_shard(i) for i in range(self.n_shards))

    def _shard(self, shard: int) -> tuple[np.ndarray, dict[str, Any]] | None:
        if shard not in self._open:
            npy, ids = self._files(shard)
            if not ids.is_file():
                return None
            self._open[shard] = (np.load(npy, mmap_mode="r"), json.loads(ids.read_text()))
        return self._open[shard]

    def lookup(self, index: int) -> tuple[np.ndarray, bool, str] | None:
        """(pixels, decoded ok, error) of image ``index`` if cached and still valid, else None."""
        shard, row = divmod(index, self.shard_size)
        found = self._shard(shard)
        if found is None:
            return None
        pixels, info = found
        recorded = tuple(info["stamps"][row])
        current = self.stamps[index]
        if current != recorded and current != (None, None):
            return None  # the file changed since it was cached: decode it again
        return np.asarray(pixels[row]), bool(info["ok"][row]), str(info["errors"][row])

    def add(self, index: int, pixels: np.ndarray, ok: bool, error: str) -> None:
        """Record a freshly decoded image; its shard is written once all its rows are in."""
        shard, row = divmod(index, self.shard_size)
        if self.has_shard(shard):
            return
        rows = self._pending.setdefault(shard, {})
        rows[row] = (np.asarray(pixels, dtype=np.uint8), bool(ok), str(error))
        lo = shard * self.shard_size
        n = min(self.shard_size, len(self.paths) - lo)
        if len(rows) < n:
            return
        pixels_all = np.zeros((n, self.size, self.size), dtype=np.uint8)
        for r, (px, good, _) in rows.items():
            if good:
                pixels_all[r] = px
        info = {
            "paths": self.paths[lo : lo + n],
            "stamps": [list(s) for s in self.stamps[lo : lo + n]],
            "ok": [rows[r][1] for r in range(n)],
            "errors": [rows[r][2] for r in range(n)],
        }
        npy, ids = self._files(shard)
        write_npy(npy, pixels_all)
        write_json(ids, info)  # the shard counts as cached once this exists
        del self._pending[shard]


def manifest_image_cache(
    cache_dir: str | Path, manifest: Manifest, size: int, shard_size: int = 1024,
    fit: str = LEGACY_FIT,
) -> tuple[DecodedImageCache, dict[str, int]]:
    """The cache of every image of ``manifest`` at ``size`` px, in the store's order (so it is
    the same cache as ``cxrfuse embed --cache`` of that manifest), and each path's row."""
    paths = [r.path for r in image_records(manifest)]
    cache = DecodedImageCache(cache_dir, paths, [file_stamp(p) for p in paths], size, shard_size,
                              fit=fit)  # fmt: skip
    return cache, {path: i for i, path in enumerate(paths)}


def fill_cache(cache: DecodedImageCache, progress: bool = True) -> int:
    """Decode every image whose shard is not written yet; returns how many were decoded.

    An unreadable file is recorded as not ok with its error (never raised), as in the store.
    """

    from cxrfuse.data.images import decode_resized

    todo = [i for i in range(len(cache.paths)) if not cache.has_shard(i // cache.shard_size)]
    empty = np.zeros((cache.size, cache.size), dtype=np.uint8)
    for i in tqdm(todo, desc=f"decode into the {cache.size}-px cache", unit="img",
                  disable=not progress or not todo):  # fmt: skip
        try:
            cache.add(i, decode_resized(cache.paths[i], cache.size, cache.fit), True, "")
        except Exception as err:  # noqa: BLE001 - an unreadable file is recorded, not fatal
            cache.add(i, empty, False, f"{type(err).__name__}: {err}")
    return len(todo)
