"""Image embeddings: every view of a manifest embedded once into ``store_dir/<key>/``.

Vectors are written in shards (``images-00000.npy`` plus ``images-00000.ids.json``), each
renamed into place only when complete, so a killed run resumes without recomputing finished
shards; ``meta.json`` marks a finished store, which a rerun loads without doing any work.
Images are decoded to 8-bit gray, centre-cropped and resized (:mod:`cxrfuse.data.images`),
optionally through the decoded-image cache (:mod:`cxrfuse.store.cache`), and normalised on
the model's device. Several processes (``torch.distributed``) split the shards between them
(:mod:`cxrfuse.store.distributed`). The shard files and the opened store
(:class:`ImageEmbeddings`, :func:`load_image_embeddings`) are :mod:`cxrfuse.store.image_shards`.

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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrfuse.data.images import decode_resized
from cxrfuse.data.manifest import Manifest
from cxrfuse.encoders.image import to_model_input
from cxrfuse.files import clean_temp_files, file_stamp, folder_lock, write_json
from cxrfuse.problems import DataError, ProblemLog
from cxrfuse.runtime import environment_info, resolve_device
from cxrfuse.store.cache import DecodedImageCache
from cxrfuse.store.distributed import current_context
from cxrfuse.store.image_shards import (
    ImageEmbeddings,
    _drop_damaged_shards,
    _flush_shards,
    _shard_files,
    _shard_ids,
    _shard_npy,
    load_image_embeddings,
)
from cxrfuse.store.integrity import (
    digest_file,
    read_json,
)
from cxrfuse.store.keys import STORE_VERSION, ImageRecord, image_key, image_records

if TYPE_CHECKING:
    from cxrfuse.encoders.image import ImageEncoder


CPU_BATCH = 4
"""Default images per forward pass on a CPU: EfficientNet-Lite0 at 224 px on the 2-core dev
CPU ran 67 images/s at batch 4, 47 at 1 and 29 at 32 (activations of big batches leave the
cache)."""

Batch = tuple[list[int], torch.Tensor, torch.Tensor, list[str], list[bool]]
"""A collated batch: indices, (B, S, S) uint8 pixels, decoded ok, errors, freshly decoded."""

GPU_BATCH = 256

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
