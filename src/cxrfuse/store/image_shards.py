"""The image store on disk and opened: its shard files (``images-NNNNN.npy`` vectors and their
``.ids.json``; written, checked, dropped when damaged), :func:`load_image_embeddings` and
:class:`ImageEmbeddings`, the memory-mapped store with study-level assembly. Computing the
vectors is :mod:`cxrfuse.store.images`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from cxrfuse.data.manifest import Manifest
from cxrfuse.data.views import ViewMode, view_slots
from cxrfuse.files import write_json
from cxrfuse.problems import DataError
from cxrfuse.store.integrity import (
    DamagedStore,
    nonfinite_rows,
    open_array,
    read_json,
    release_pages,
    verify_file,
    write_npy_digest,
)
from cxrfuse.store.keys import ImageRecord
from cxrfuse.store.padded import PaddedViews

StudyMode = Literal["frontal", "mean", "concat", "stack"]



ASSEMBLY_BLOCK = 4096
"""Studies per block when study arrays are filled from the shards (bounds the temporaries)."""



@dataclass
class ImageEmbeddings:
    """Image vectors (one row per embedded image) with their ids; shards are memory-mapped."""

    path: Path
    shards: list[np.ndarray]
    image_ids: list[str]
    study_ids: list[str]
    views: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _rows: pd.Series | None = field(default=None, repr=False)
    reused: bool = False  # True when a finished store was loaded instead of computed

    @property
    def dim(self) -> int:
        return int(self.meta.get("dim", self.shards[0].shape[1] if self.shards else 0))

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) vectors; the memory map itself when there is one shard, else every shard
        concatenated in RAM (study assembly reads rows from the shards instead: :meth:`gather`)."""
        if self._vectors is None:
            if not self.shards:
                self._vectors = np.zeros((0, self.dim), dtype=self.meta.get("dtype", "float32"))
            elif len(self.shards) == 1:
                self._vectors = self.shards[0]
            else:
                self._vectors = np.concatenate(self.shards, axis=0)
        return self._vectors

    @property
    def problems(self) -> list[dict[str, str]]:
        return list(self.meta.get("problems", []))

    def __len__(self) -> int:
        return len(self.image_ids)

    def _row_of(self) -> pd.Series:
        """Store row of each ``study_id<US>image_id`` key (the last row of a repeated key)."""
        if self._rows is None:
            keys = [f"{s}\x1f{i}" for s, i in zip(self.study_ids, self.image_ids)]
            rows = pd.Series(np.arange(len(keys), dtype=np.int64), index=pd.Index(keys))
            if not rows.index.is_unique:
                rows = rows[~rows.index.duplicated(keep="last")]
            self._rows = rows
        return self._rows

    def slot_rows(self, manifest: Manifest, mode: ViewMode,
                  rows: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """(n, V) store rows in the slots of the view fusion ``mode`` (-1: empty slot) of
        the manifest's studies at ``rows`` (all, in order, by default): the embedded views
        of each study, in manifest order, placed by :func:`cxrfuse.data.views.view_slots`;
        ``mean`` / ``attention`` are as wide as the widest of these studies."""
        df = manifest.df[["study_id", "views"]]  # not a copy of the report columns
        df = df if rows is None else df.iloc[np.asarray(rows)]
        keys: list[str] = []
        positions: list[str] = []
        counts = np.zeros(len(df), dtype=np.int64)
        for i, (sid, views) in enumerate(zip(df["study_id"], df["views"])):
            for v in views:
                keys.append(f"{sid}\x1f{v['image_id']}")
                positions.append(str(v["view"]))
            counts[i] = len(views)
        index = self._row_of()
        found = index.index.get_indexer(pd.Index(keys, dtype=object)) if keys else np.zeros(0, np.int64)
        store_row = np.where(found >= 0, index.to_numpy()[found], -1)
        study = np.repeat(np.arange(len(df)), counts)
        known = np.bincount(study[store_row >= 0], minlength=len(df))
        fixed = len(view_slots([], mode))  # frontal 1, concat 2; mean / attention 0: per view
        width = fixed or max(int(known.max(initial=0)), 1)
        slots = np.full((len(df), width), -1, dtype=np.int64)
        ends = np.cumsum(counts)
        for i in range(len(df)):
            start = ends[i] - counts[i]
            present = [k for k in range(start, ends[i]) if store_row[k] >= 0]
            layout = view_slots([positions[k] for k in present], mode)
            for j, pick in enumerate(layout):
                if pick is not None:
                    slots[i, j] = store_row[present[pick]]
        return slots

    def gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[k] = vector of store row rows[k]``, read from the shards' memory maps (no
        shard is concatenated in RAM; the pages read leave the process's resident set)."""
        if not len(rows):
            return
        bounds = np.cumsum([0] + [len(s) for s in self.shards])
        shard = np.searchsorted(bounds, rows, side="right") - 1
        for s in np.unique(shard):
            pick = np.flatnonzero(shard == s)
            out[pick] = self.shards[s][rows[pick] - bounds[s]]
            release_pages(self.shards[s])

    def study_slots(self, manifest: Manifest, mode: ViewMode,
                    rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(n, V, D) view embeddings and (n, V) mask in the slots of the head's view fusion
        ``mode`` for the manifest's studies at ``rows`` (all by default; the slots of
        :meth:`slot_rows`). Empty slots are zeros with mask False.

        ``mean`` is one slot: the mean of the study's embedded views (what the head's mean
        fusion computes from every view), so one study with many views widens nothing.
        ``attention`` is as wide as the widest study (:meth:`study_views` holds it without the
        padding). The arrays are allocated once and filled in blocks of studies straight from
        the memory-mapped shards."""
        if mode == "attention":
            views = self.study_views(manifest, rows)
            return np.asarray(views), views.mask()
        slots = self.slot_rows(manifest, mode, rows)
        dim = self.dim
        n, width = slots.shape
        mask = slots >= 0
        if mode == "mean":
            X = np.zeros((n, 1, dim), dtype=np.float32)
            step = max(1, ASSEMBLY_BLOCK // width)
            for lo in range(0, n, step):
                block = slice(lo, min(lo + step, n))
                wide = max(1, int(mask[block].sum(1).max(initial=0)))  # views fill slots 0..k-1
                here, picks = mask[block, :wide], slots[block, :wide]
                views = np.zeros((block.stop - lo, wide, dim), dtype=np.float32)
                where = np.flatnonzero(here.reshape(-1))
                buf = np.empty((len(where), dim), dtype=np.float32)
                self.gather(picks.reshape(-1)[where], buf)
                views.reshape(-1, dim)[where] = buf
                del buf
                # the head's mean fusion (fusion.heads.ViewFusion), the same float operations
                # (zero-padded slots add nothing, so the block's own width gives the same sums)
                weights = torch.from_numpy(np.ascontiguousarray(here)).to(torch.float32)[..., None]
                total = (torch.from_numpy(views) * weights).sum(1)
                X[block, 0] = (total / weights.sum(1).clamp(min=1.0)).numpy()
            return X, mask.any(1)[:, None]
        X = np.zeros((n, width, dim), dtype=np.float32)
        self._fill(slots.reshape(-1)[mask.reshape(-1)], X.reshape(n * width, dim),
                   np.flatnonzero(mask.reshape(-1)))  # fmt: skip
        return X, mask

    def study_views(self, manifest: Manifest, rows: np.ndarray | None = None) -> PaddedViews:
        """Every embedded view of the manifest's studies at ``rows`` (all by default), in the
        ``attention`` slots, as :class:`~cxrfuse.store.padded.PaddedViews`: one float32 row
        per view, so memory follows the views that exist, not the widest study."""
        slots = self.slot_rows(manifest, "attention", rows)
        mask = slots >= 0  # views fill slots 0..k-1
        counts = mask.sum(1)
        vectors = np.empty((int(counts.sum()), self.dim), dtype=np.float32)
        self._fill(slots[mask], vectors)
        return PaddedViews(vectors, np.concatenate([[0], np.cumsum(counts)]), slots.shape[1])

    def _fill(self, store_rows: np.ndarray, out: np.ndarray,
              positions: np.ndarray | None = None) -> None:  # fmt: skip
        """``out[positions[k]] = vector of store_rows[k]`` (positions: 0, 1, ... by default),
        in blocks so the float32 temporaries stay small."""
        step = ASSEMBLY_BLOCK * 4
        for lo in range(0, len(store_rows), step):
            pick = store_rows[lo:lo + step]
            if positions is None:
                self.gather(pick, out[lo:lo + len(pick)])
                continue
            buf = np.empty((len(pick), out.shape[1]), dtype=np.float32)
            self.gather(pick, buf)
            out[positions[lo:lo + step]] = buf

    def study_matrix(
        self, manifest: Manifest, mode: StudyMode = "frontal"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Study-level features in manifest order, and which of them are real.

        ``frontal``: the first frontal view, (n, D) and mask (n,). ``mean``: the mean of the
        embedded views, (n, D) and (n,). ``concat``: [frontal, lateral], (n, 2D) and a per-slot
        mask (n, 2). ``stack``: (n, max_views, D) and (n, max_views) for attention fusion.
        Missing views are zeros with mask False. The slots are :meth:`study_slots`'.
        """
        if mode == "frontal":
            X, mask = self.study_slots(manifest, "frontal")
            return X[:, 0], mask[:, 0]
        if mode == "mean":
            X, mask = self.study_slots(manifest, "mean")
            return X[:, 0], mask[:, 0]
        if mode == "concat":
            X, mask = self.study_slots(manifest, "concat")
            return X.reshape(len(X), -1), mask
        if mode == "stack":
            return self.study_slots(manifest, "attention")
        raise ValueError(f"unknown mode {mode!r}; choose frontal, mean, concat or stack")



def _shard_npy(folder: Path, i: int) -> Path:
    return folder / f"images-{i:05d}.npy"


def _shard_ids(folder: Path, i: int) -> Path:
    return folder / f"images-{i:05d}.ids.json"


def _shard_files(folder: Path, i: int) -> list[Path]:
    """What is removed when shard ``i`` is damaged: its files and the store's meta.json."""
    return [_shard_ids(folder, i), _shard_npy(folder, i), folder / "meta.json"]


def _drop_damaged_shards(folder: Path, n_shards: int) -> None:
    """Remove the finished shards of an unfinished store whose ids file does not parse or
    whose vectors do not match the digest in it, so that they are computed again."""
    for i in range(n_shards):
        if not _shard_ids(folder, i).is_file():
            continue
        try:
            ids = read_json(_shard_ids(folder, i), remove=_shard_files(folder, i))
            verify_file(_shard_npy(folder, i), ids.get("npy_digest"), remove=_shard_files(folder, i))
        except DamagedStore:
            continue  # removed: computed again in this run


def _flush_shards(
    folder: Path,
    bounds: list[tuple[int, int]],
    pending: list[int],
    records: list[ImageRecord],
    out: dict[int, tuple[np.ndarray | None, str]],
    dtype: str,
    dim: int,
) -> None:
    """Write every pending shard whose images are all done (vectors first, ids last)."""
    for i in list(pending):
        lo, hi = bounds[i]
        if not all(k in out for k in range(lo, hi)):
            continue
        for k in range(lo, hi):  # a NaN/inf vector is refused like an unreadable image
            vector = out[k][0]
            if vector is not None and len(nonfinite_rows(np.asarray(vector)[None])):
                out[k] = (None, "the encoder gave a vector with NaN or infinity")
        good = [k for k in range(lo, hi) if out[k][0] is not None]
        vectors = (
            np.stack([out[k][0] for k in good]).astype(dtype)
            if good
            else np.zeros((0, dim), dtype=dtype)
        )
        digest = write_npy_digest(_shard_npy(folder, i), vectors)
        ids = {
            "npy_digest": digest,
            "image_ids": [records[k].image_id for k in good],
            "study_ids": [records[k].study_id for k in good],
            "views": [records[k].view for k in good],
            "failed": [
                {"image_id": records[k].image_id, "path": records[k].path, "error": out[k][1]}
                for k in range(lo, hi)
                if out[k][0] is None
            ],
        }
        write_json(_shard_ids(folder, i), ids)  # the shard counts as done once this exists
        pending.remove(i)
        for k in range(lo, hi):
            del out[k]



def load_image_embeddings(path: str | Path, *, require_meta: bool = True) -> ImageEmbeddings:
    """Open an image store folder; shards are memory-mapped read-only."""
    folder = Path(path)
    meta_path = folder / "meta.json"
    if require_meta and not meta_path.is_file():
        raise DataError(f"{folder}: no meta.json; not a finished image embedding store")
    meta = read_json(meta_path, remove=[meta_path]) if meta_path.is_file() else {}
    digests = meta.get("digests", {})
    shards, image_ids, study_ids, views = [], [], [], []
    i = 0
    while _shard_ids(folder, i).is_file():
        files = _shard_files(folder, i)
        verify_file(files[0], digests.get(files[0].name), remove=files)
        ids = read_json(files[0], remove=files)
        expected = digests.get(files[1].name) or ids.get("npy_digest")
        array = open_array(files[1], expected, ids["image_ids"], remove=files)
        if array.shape[0] != len(ids["image_ids"]):
            raise DataError(
                f"{_shard_npy(folder, i)}: {array.shape[0]} rows, ids list "
                f"{len(ids['image_ids'])}; the store is corrupt, delete {folder}"
            )
        shards.append(array)
        image_ids += ids["image_ids"]
        study_ids += ids["study_ids"]
        views += ids["views"]
        i += 1
    if require_meta and i != meta.get("n_shards", i):
        raise DataError(f"{folder}: {i} shard(s) found, meta.json lists {meta['n_shards']}")
    return ImageEmbeddings(folder, shards, image_ids, study_ids, views, meta)

