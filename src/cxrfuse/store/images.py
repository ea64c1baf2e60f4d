"""Image embeddings: every view of a manifest embedded once into ``store_dir/<key>/``.

Vectors are written in shards (``images-00000.npy`` plus ``images-00000.ids.json``), each
renamed into place only when complete, so a killed run resumes without recomputing finished
shards; ``meta.json`` marks a finished store, which a rerun loads without doing any work.
Images are decoded to 8-bit gray, centre-cropped and resized (:mod:`cxrfuse.data.images`),
optionally through the decoded-image cache (:mod:`cxrfuse.store.cache`), and normalised on
the model's device. Several processes (``torch.distributed``) split the shards between them
(:mod:`cxrfuse.store.distributed`).

Typical use::

    images = embed_images(manifest, create_image_encoder("efficientnet-lite0"), "store")
    X, mask = images.study_matrix(manifest, mode="frontal")
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrfuse.data.images import decode_resized
from cxrfuse.data.manifest import Manifest
from cxrfuse.data.views import ViewMode, view_slots
from cxrfuse.encoders.image import to_model_input
from cxrfuse.files import clean_temp_files, file_stamp, folder_lock, write_json
from cxrfuse.problems import DataError, ProblemLog
from cxrfuse.runtime import environment_info, resolve_device
from cxrfuse.store.cache import DecodedImageCache
from cxrfuse.store.distributed import current_context
from cxrfuse.store.integrity import (
    DamagedStore,
    digest_file,
    nonfinite_rows,
    open_array,
    read_json,
    release_pages,
    verify_file,
    write_npy_digest,
)
from cxrfuse.store.keys import STORE_VERSION, ImageRecord, image_key, image_records

if TYPE_CHECKING:
    from cxrfuse.encoders.image import ImageEncoder

StudyMode = Literal["frontal", "mean", "concat", "stack"]

CPU_BATCH = 4
"""Default images per forward pass on a CPU: EfficientNet-Lite0 at 224 px on the 2-core dev
CPU ran 67 images/s at batch 4, 47 at 1 and 29 at 32 (activations of big batches leave the
cache)."""

Batch = tuple[list[int], torch.Tensor, torch.Tensor, list[str], list[bool]]
"""A collated batch: indices, (B, S, S) uint8 pixels, decoded ok, errors, freshly decoded."""

GPU_BATCH = 256

ASSEMBLY_BLOCK = 4096
"""Studies per block when study arrays are filled from the shards (bounds the temporaries)."""

DTYPES = ("float32", "float16")

PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bfloat16 autocast on GPU, float32 on CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return precision


class _ImageDataset:
    """Each image as (S, S) gray uint8, from the cache or decoded; a failure becomes a flag."""

    def __init__(
        self, records: Sequence[ImageRecord], size: int, cache: DecodedImageCache | None,
        fit: str = "crop",
    ) -> None:
        self.records = list(records)
        self.size = size
        self.cache = cache
        self.fit = fit

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Any, bool, str, bool]:
        """(index, pixels, decoded ok, error, freshly decoded rather than cached)."""
        if self.cache is not None:
            hit = self.cache.lookup(index)
            if hit is not None:
                pixels, ok, error = hit
                return index, torch.from_numpy(np.array(pixels)), ok, error, False
        try:
            pixels = decode_resized(self.records[index].path, self.size, self.fit)
            return index, torch.from_numpy(pixels), True, "", True
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, never raised
            empty = torch.zeros((self.size, self.size), dtype=torch.uint8)
            return index, empty, False, f"{type(err).__name__}: {err}", True


def _collate(items: list[tuple[int, Any, bool, str, bool]]) -> Batch:
    indices = [i for i, *_ in items]
    pixels = torch.stack([p for _, p, *_ in items])
    ok = torch.tensor([item[2] for item in items], dtype=torch.bool)
    return indices, pixels, ok, [item[3] for item in items], [item[4] for item in items]


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
        ``attention`` is as wide as the widest study. The arrays are allocated once and
        filled in blocks of studies straight from the memory-mapped shards."""
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
        flat, where = X.reshape(n * width, dim), np.flatnonzero(mask.reshape(-1))
        step = ASSEMBLY_BLOCK * max(width, 1)
        for lo in range(0, len(where), step):
            pick = where[lo:lo + step]
            buf = np.empty((len(pick), dim), dtype=np.float32)
            self.gather(slots.reshape(-1)[pick], buf)
            flat[pick] = buf
        return X, mask

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


def embed_images(
    manifest: Manifest,
    encoder: ImageEncoder,
    store_dir: str | Path,
    *,
    batch_size: int | None = None,
    num_workers: int = 0,
    shard_size: int = 1024,
    dtype: Literal["float32", "float16"] = "float32",
    progress: bool = True,
    device: str | torch.device | None = None,
    precision: Literal["auto", "float32", "bfloat16"] = "auto",
    cache_dir: str | Path | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    lanes: int | None = None,
) -> ImageEmbeddings:
    """Embed every image (every view with a path) into ``store_dir/<key>/``; resumable.

    Unreadable images are recorded as "unreadable-image" problems and get no vector.
    ``num_workers`` DataLoader processes decode and resize while the model runs. ``device``
    (default: where the encoder is) with ``precision`` "auto" means bfloat16 autocast on GPU
    and float32 on CPU; on GPU batches are pinned and channels-last (``channels_last``
    overrides). ``cache_dir`` keeps the decoded, resized uint8 images for the next encoder
    with the same input size or a rerun. ``compile`` runs the encoder through
    ``torch.compile``. In an initialised ``torch.distributed`` process group each rank embeds
    the shards it owns and rank 0 writes ``meta.json``. ``batch_size`` None picks
    :data:`CPU_BATCH` on a CPU (small batches stay in cache: measured fastest) and
    :data:`GPU_BATCH` on a GPU.

    ``lanes`` threads each decode their own batches and run the forward with one intra-op
    thread (the process's torch thread count is restored afterwards). None: on a CPU without
    DataLoader workers and without ``compile``, as many lanes as torch has intra-op threads,
    else 1 (decoding in line or in the workers, the forward with all intra-op threads). On
    the 2-core dev CPU two lanes embed 1024-px PNGs 1.1-1.75x faster (4 runs) than decoding
    in line and running the forward on two threads: each lane keeps its core busy, decoding included,
    and a one-thread forward wastes no time at thread barriers. Vectors agree with the
    one-lane path to float rounding (batch composition differs).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if device is not None:
        encoder.to(resolve_device(device))
    run_device = next(iter(encoder.parameters()), torch.zeros(())).device
    if batch_size is None:
        batch_size = CPU_BATCH if run_device.type == "cpu" else GPU_BATCH
    if shard_size < 1 or batch_size < 1 or num_workers < 0 or (lanes is not None and lanes < 1):
        raise ValueError("shard_size, batch_size and lanes must be positive, num_workers >= 0")
    if lanes is None:
        cpu_in_line = run_device.type == "cpu" and num_workers == 0 and not compile
        lanes = torch.get_num_threads() if cpu_in_line else 1
    precision = resolve_precision(precision, run_device)  # type: ignore[assignment]
    records = image_records(manifest)
    stamps = [file_stamp(r.path) for r in records]
    key, inputs = image_key(records, stamps, encoder, dtype, precision)
    folder = Path(store_dir) / key
    if (folder / "meta.json").is_file():
        return replace(load_image_embeddings(folder), reused=True)
    ctx = current_context()
    with folder_lock(folder, "the image store") if ctx.is_main else contextlib.nullcontext():
        if ctx.world_size == 1 and (folder / "meta.json").is_file():  # written while we waited
            return replace(load_image_embeddings(folder), reused=True)
        return _embed_into(folder, key, inputs, records, stamps, manifest, encoder, run_device,
                           ctx, batch_size=batch_size, num_workers=num_workers,
                           shard_size=shard_size, dtype=dtype, progress=progress,
                           precision=precision, cache_dir=cache_dir, compile=compile,
                           channels_last=channels_last, lanes=lanes)  # fmt: skip


def _embed_into(folder: Path, key: str, inputs: dict[str, Any], records: list[ImageRecord],
                stamps: list[tuple[int | None, int | None]], manifest: Manifest,
                encoder: ImageEncoder, run_device: torch.device, ctx: Any, *, batch_size: int,
                num_workers: int, shard_size: int, dtype: str, progress: bool, precision: str,
                cache_dir: str | Path | None, compile: bool, channels_last: bool | None,
                lanes: int) -> ImageEmbeddings:  # fmt: skip
    """The body of :func:`embed_images` once this process may write ``folder``."""
    bounds = [(s, min(s + shard_size, len(records))) for s in range(0, len(records), shard_size)]
    cache = None
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        clean_temp_files(folder)
        cache = _open_cache(cache_dir, records, stamps, encoder, shard_size, create=True)
        _drop_damaged_shards(folder, len(bounds))
        todo = [i for i in range(len(bounds)) if not _shard_ids(folder, i).is_file()]
    ctx.barrier()  # rank 0 has cleaned up after a killed run before anyone writes
    if not ctx.is_main:
        cache = _open_cache(cache_dir, records, stamps, encoder, shard_size, create=False)
    pending = [i for i in range(len(bounds)) if ctx.owns(i) and not _shard_ids(folder, i).is_file()]
    batches = [
        list(range(b, min(b + batch_size, bounds[i][1])))
        for i in pending
        for b in range(bounds[i][0], bounds[i][1], batch_size)
    ]
    n_pending = sum(bounds[i][1] - bounds[i][0] for i in pending)
    on_gpu = run_device.type == "cuda"
    dataset = _ImageDataset(records, encoder.spec.input_size, cache, encoder.spec.fit)
    if channels_last if channels_last is not None else on_gpu:
        encoder.to(memory_format=torch.channels_last)
    model = torch.compile(encoder) if compile else encoder
    autocast = (
        torch.autocast(run_device.type, dtype=torch.bfloat16)
        if precision == "bfloat16"
        else contextlib.nullcontext()
    )
    out: dict[int, tuple[np.ndarray | None, str]] = {}
    n_cached = 0
    was_training = encoder.training
    encoder.eval()
    start = time.perf_counter()
    label = f"embedding images (rank 0 of {ctx.world_size})" if ctx.world_size > 1 else ""
    bar = _progress(n_pending, label or "embedding images", progress and ctx.is_main)

    def forward(batch: Batch) -> np.ndarray:
        return _forward(model, encoder, batch[1], batch[2], run_device, autocast, channels_last)

    if lanes > 1:
        embedded = _embed_in_lanes(dataset, batches, forward, lanes)
    else:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=on_gpu,
            persistent_workers=False,
        )
        embedded = ((batch, forward(batch)) for batch in loader)
    try:
        with torch.inference_mode():
            for (indices, pixels, ok, errors, fresh), feats in embedded:
                if cache is not None:
                    for j, index in enumerate(indices):
                        if fresh[j]:
                            cache.add(index, pixels[j].numpy(), bool(ok[j]), errors[j])
                    n_cached += len(indices) - sum(fresh)
                for j, index in enumerate(indices):
                    out[index] = (feats[j] if ok[j] else None, errors[j])
                bar.update(len(indices))
                _flush_shards(folder, bounds, pending, records, out, dtype, encoder.feature_dim)
    finally:
        close = getattr(embedded, "close", None)
        if close is not None:
            close()  # stops the lanes of an interrupted run
        bar.close()
        encoder.train(was_training)
    _flush_shards(folder, bounds, pending, records, out, dtype, encoder.feature_dim)
    n_cached = ctx.sum(n_cached)  # also a barrier: every rank's shards are on disk
    if ctx.is_main:
        elapsed = time.perf_counter() - start
        computed = sum(bounds[i][1] - bounds[i][0] for i in todo)
        run = {
            "computed_this_run": computed,
            "images_per_s": computed / elapsed if elapsed > 0 and computed else None,
            "shard_size": shard_size,
            "world_size": ctx.world_size,
            "device": str(run_device),
            "num_workers": num_workers,
            "lanes": lanes,
            "batch_size": batch_size,
            "compile": compile,
            "cache": None if cache is None else {"folder": str(cache.folder), "hits": n_cached},
            # vectors differ by ~1e-5 with torch's version and CPU thread count: said, not keyed
            "environment": environment_info(str(run_device)),
        }
        _finish_image_store(folder, key, inputs, encoder, records, bounds, manifest, dtype, run)
    ctx.barrier()  # meta.json is written
    return load_image_embeddings(folder)


def _embed_in_lanes(
    dataset: _ImageDataset,
    batches: Sequence[list[int]],
    forward: Any,
    lanes: int,
) -> Iterator[tuple[Batch, np.ndarray]]:
    """(batch, features) of every batch, computed by ``lanes`` threads, in completion order.

    Each thread takes the next batch, decodes it (PIL releases the GIL while it inflates and
    resizes) and runs ``forward`` with one intra-op thread, so on a CPU every core decodes
    and computes in turn instead of waiting for one decoding core. An error in a lane is
    raised here; closing the generator stops the lanes.
    """
    threads_before = torch.get_num_threads()
    todo = iter(list(batches))
    take = threading.Lock()
    done: queue.Queue[tuple[Batch, np.ndarray] | BaseException | None] = queue.Queue(2 * lanes)
    stop = threading.Event()

    def put(item: tuple[Batch, np.ndarray] | BaseException | None) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                done.put(item, timeout=0.1)
                return

    def lane() -> None:
        try:
            with torch.inference_mode():
                while not stop.is_set():
                    with take:
                        indices = next(todo, None)
                    if indices is None:
                        break
                    batch = _collate([dataset[i] for i in indices])
                    put((batch, forward(batch)))
        except BaseException as err:  # noqa: BLE001 - handed to the consuming thread
            put(err)
        finally:
            put(None)

    torch.set_num_threads(1)
    threads = [threading.Thread(target=lane, name=f"cxrfuse-lane-{k}", daemon=True)
               for k in range(lanes)]  # fmt: skip
    try:
        for thread in threads:
            thread.start()
        running = lanes
        while running:
            item = done.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        torch.set_num_threads(threads_before)


def _open_cache(
    cache_dir: str | Path | None,
    records: Sequence[ImageRecord],
    stamps: Sequence[tuple[int | None, int | None]],
    encoder: ImageEncoder,
    shard_size: int,
    *,
    create: bool,
) -> DecodedImageCache | None:
    if cache_dir is None:
        return None
    paths = [r.path for r in records]
    size = encoder.spec.input_size
    return DecodedImageCache(cache_dir, paths, stamps, size, shard_size, create=create,
                             fit=encoder.spec.fit)  # fmt: skip


def _progress(total: int, desc: str, enabled: bool) -> Any:
    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, smoothing=0.1)


def _forward(
    model: Any,
    encoder: ImageEncoder,
    pixels: torch.Tensor,
    ok: torch.Tensor,
    device: torch.device,
    autocast: Any,
    channels_last: bool | None,
) -> np.ndarray:
    """Features (B, D) float32 of a uint8 batch; rows that failed to decode stay zero."""
    feats = np.zeros((len(ok), encoder.feature_dim), dtype=np.float32)
    if not ok.any():
        return feats
    x = pixels.to(device, non_blocking=True)
    if not ok.all():
        x = x[ok.to(device)]
    x = to_model_input(x, encoder.spec)
    if channels_last if channels_last is not None else device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast:
        y = model(x)
    feats[ok.numpy()] = y.float().cpu().numpy()
    return feats


def _finish_image_store(
    folder: Path,
    key: str,
    inputs: dict[str, Any],
    encoder: ImageEncoder,
    records: Sequence[ImageRecord],
    bounds: Sequence[tuple[int, int]],
    manifest: Manifest,
    dtype: str,
    run: dict[str, Any],
) -> None:
    """Check every shard is there, collect the failures, and write ``meta.json``."""
    problems = ProblemLog()
    missing = [i for i in range(len(bounds)) if not _shard_ids(folder, i).is_file()]
    if missing:
        raise DataError(f"{folder}: shard(s) {missing[:5]} missing after embedding; rerun")
    digests: dict[str, str] = {}
    for i in range(len(bounds)):
        ids = read_json(_shard_ids(folder, i), remove=_shard_files(folder, i))
        for fail in ids["failed"]:
            problems.add("unreadable-image", fail["path"], fail["error"])
        digests[_shard_npy(folder, i).name] = ids.get("npy_digest", "")
        digests[_shard_ids(folder, i).name] = digest_file(_shard_ids(folder, i))
    n_embedded = len(records) - len(problems)
    meta = {
        "store_version": STORE_VERSION,
        "kind": "images",
        "key": key,
        "key_inputs": inputs,
        "encoder": encoder.spec.name,
        "weights": str(getattr(encoder, "weights", "")),
        "fit": encoder.spec.fit,  # in the key only when pad: crop keys predate the option
        "dim": encoder.feature_dim,
        "dtype": dtype,
        "n_images": len(records),
        "n_embedded": n_embedded,
        "n_failed": len(problems),
        "n_studies": len(manifest),
        "n_shards": len(bounds),
        **run,
        "problems": problems.to_records(limit=10_000),
        "problem_counts": problems.counts(),
        "digests": digests,  # checked when the store is first opened in a process
    }
    write_json(folder / "meta.json", meta)


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
