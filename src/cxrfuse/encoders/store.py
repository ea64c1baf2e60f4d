"""The embedding store: image and text embeddings computed once, keyed by what they depend on.

Image embeddings live in ``store_dir/<key>/`` where ``key`` digests the images (ids, paths,
sizes, mtimes), the encoder name, a hash of its weights, its preprocessing spec, the compute
precision and the storage dtype. Vectors are written in shards (``images-00000.npy`` plus
``images-00000.ids.json``), each renamed into place only when complete, so a killed run
resumes without recomputing finished shards; ``meta.json`` marks a finished store, which a
rerun loads without doing any work. Text embeddings are stored the same way (``texts.npy``,
``texts.ids.json``, ``texts.parquet``) under a key of the prepared texts, the text
configuration, the task and the encoder fingerprint.

Images are decoded in DataLoader workers to 8-bit gray, centre-cropped and resized
(:mod:`cxrfuse.encoders.decode`), optionally through a decoded-image cache
(:mod:`cxrfuse.encoders.cache`), and normalised in the main process or on the GPU.
Several processes (``torch.distributed``) split the shards between them
(:mod:`cxrfuse.encoders.distributed`).

Typical use::

    images = embed_images(manifest, create_image_encoder("efficientnet-lite0"), "store")
    X, mask = images.study_matrix(manifest, mode="frontal")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from cxrfuse.data.manifest import FRONTAL_VIEWS, Manifest
from cxrfuse.encoders.decode import DECODE_VERSION, decode_resized
from cxrfuse.encoders.files import (
    clean_temp_files,
    file_stamp,
    sha256_json,
    write_json,
    write_npy,
)
from cxrfuse.problems import CxrfuseError, DataError, ProblemLog

if TYPE_CHECKING:
    import torch

    from cxrfuse.encoders.cache import DecodedImageCache
    from cxrfuse.encoders.image import ImageEncoder
    from cxrfuse.encoders.text import TextEncoder
    from cxrfuse.text import TextConfig

STORE_VERSION = 2  # 2: images go through cxrfuse.encoders.decode (uint8 resize, PIL)
KEY_LENGTH = 16
LATERAL_VIEWS = frozenset({"LATERAL", "LL"})
StudyMode = Literal["frontal", "mean", "concat", "stack"]
CPU_BATCH = 4
"""Default images per forward pass on a CPU: EfficientNet-Lite0 at 224 px on the 2-core dev
CPU ran 67 images/s at batch 4, 47 at 1 and 29 at 32 (activations of big batches leave the
cache)."""
GPU_BATCH = 256
DTYPES = ("float32", "float16")
PRECISIONS = ("auto", "float32", "bfloat16")

# short aliases kept for the code below
_sha256, _write_json, _write_npy, _clean_temp_files = (
    sha256_json,
    write_json,
    write_npy,
    clean_temp_files,
)


# ----------------------------------------------------------------------------- helpers


def weights_fingerprint(encoder: torch.nn.Module) -> str:
    """sha256 of every state_dict tensor (names, dtypes, shapes, bytes); cached on the module."""
    import torch

    cached = getattr(encoder, "_cxrfuse_weights_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    object.__setattr__(encoder, "_cxrfuse_weights_fingerprint", value)
    return value


def preprocessing_spec(encoder: ImageEncoder) -> dict[str, Any]:
    """What the encoder's preprocessing depends on."""
    spec = encoder.spec
    return {
        "input_size": spec.input_size,
        "channels": spec.channels,
        "normalisation": spec.normalisation,
        "grayscale_to_rgb": spec.grayscale_to_rgb,
        "decode_version": DECODE_VERSION,
    }


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: the first GPU if there is one, else the CPU; otherwise as given."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CxrfuseError("device 'cuda' was asked for but torch sees no GPU; use --device cpu")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bfloat16 autocast on GPU, float32 on CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return precision


@dataclass(frozen=True)
class _ImageRecord:
    study_id: str
    image_id: str
    path: str
    view: str


def image_records(manifest: Manifest) -> list[_ImageRecord]:
    """Every view with a path, in manifest order."""
    return [
        _ImageRecord(str(sid), str(v["image_id"]), str(v["path"]), str(v["view"]))
        for sid, views in zip(manifest.df["study_id"], manifest.df["views"])
        for v in views
        if v.get("path")
    ]


_file_stamp = file_stamp


# ----------------------------------------------------------------------------- images


class _ImageDataset:
    """Each image as (S, S) gray uint8, from the cache or decoded; a failure becomes a flag."""

    def __init__(
        self, records: Sequence[_ImageRecord], size: int, cache: DecodedImageCache | None
    ) -> None:
        self.records = list(records)
        self.size = size
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Any, bool, str, bool]:
        """(index, pixels, decoded ok, error, freshly decoded rather than cached)."""
        import torch

        if self.cache is not None:
            hit = self.cache.lookup(index)
            if hit is not None:
                pixels, ok, error = hit
                return index, torch.from_numpy(np.array(pixels)), ok, error, False
        try:
            pixels = decode_resized(self.records[index].path, self.size)
            return index, torch.from_numpy(pixels), True, "", True
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, never raised
            empty = torch.zeros((self.size, self.size), dtype=torch.uint8)
            return index, empty, False, f"{type(err).__name__}: {err}", True


def _collate(items: list[tuple[int, Any, bool, str, bool]]) -> tuple[Any, ...]:
    import torch

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
    reused: bool = False  # True when a finished store was loaded instead of computed

    @property
    def dim(self) -> int:
        return int(self.meta.get("dim", self.shards[0].shape[1] if self.shards else 0))

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) vectors; the memory map itself when there is one shard."""
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

    def _rows_by_study(self) -> dict[str, dict[str, int]]:
        rows: dict[str, dict[str, int]] = {}
        for i, (sid, iid) in enumerate(zip(self.study_ids, self.image_ids)):
            rows.setdefault(sid, {})[iid] = i
        return rows

    def study_matrix(
        self, manifest: Manifest, mode: StudyMode = "frontal"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Study-level features in manifest order, and which of them are real.

        ``frontal``: the first frontal view, (n, D) and mask (n,). ``mean``: the mean of the
        embedded views, (n, D) and (n,). ``concat``: [frontal, lateral], (n, 2D) and a per-slot
        mask (n, 2). ``stack``: (n, max_views, D) and (n, max_views) for attention fusion.
        Missing views are zeros with mask False.
        """
        vectors = self.vectors
        dim = vectors.shape[1] if vectors.ndim == 2 else self.dim
        rows = self._rows_by_study()
        per_study: list[list[tuple[str, int]]] = []
        for sid, views in zip(manifest.df["study_id"], manifest.df["views"]):
            known = rows.get(str(sid), {})
            per_study.append(
                [
                    (v["view"], known[str(v["image_id"])])
                    for v in views
                    if str(v["image_id"]) in known
                ]
            )
        n = len(per_study)

        def first(items: list[tuple[str, int]], kinds: frozenset[str]) -> int | None:
            return next((row for view, row in items if view in kinds), None)

        if mode in ("frontal", "mean"):
            X = np.zeros((n, dim), dtype=np.float32)
            mask = np.zeros(n, dtype=bool)
            for i, items in enumerate(per_study):
                if mode == "frontal":
                    row = first(items, FRONTAL_VIEWS)
                    if row is not None:
                        X[i], mask[i] = vectors[row], True
                elif items:
                    X[i] = np.asarray(vectors[[r for _, r in items]], dtype=np.float32).mean(0)
                    mask[i] = True
            return X, mask
        if mode == "concat":
            X = np.zeros((n, 2 * dim), dtype=np.float32)
            mask = np.zeros((n, 2), dtype=bool)
            for i, items in enumerate(per_study):
                for slot, kinds in enumerate((FRONTAL_VIEWS, LATERAL_VIEWS)):
                    row = first(items, kinds)
                    if row is not None:
                        X[i, slot * dim : (slot + 1) * dim], mask[i, slot] = vectors[row], True
            return X, mask
        if mode == "stack":
            width = max([len(items) for items in per_study] + [1])
            X = np.zeros((n, width, dim), dtype=np.float32)
            mask = np.zeros((n, width), dtype=bool)
            for i, items in enumerate(per_study):
                for j, (_, row) in enumerate(items):
                    X[i, j], mask[i, j] = vectors[row], True
            return X, mask
        raise ValueError(f"unknown mode {mode!r}; choose frontal, mean, concat or stack")


def image_store_key(
    manifest: Manifest,
    encoder: ImageEncoder,
    dtype: str = "float32",
    precision: str = "float32",
) -> tuple[str, dict[str, Any]]:
    """The store key (16 hex) and the inputs it digests."""
    records = image_records(manifest)
    return _image_key(records, [file_stamp(r.path) for r in records], encoder, dtype, precision)


def _image_key(
    records: Sequence[_ImageRecord],
    stamps: Sequence[tuple[int | None, int | None]],
    encoder: ImageEncoder,
    dtype: str,
    precision: str,
) -> tuple[str, dict[str, Any]]:
    images = sorted((r.study_id, r.image_id, r.path, *s) for r, s in zip(records, stamps))
    inputs = {
        "store_version": STORE_VERSION,
        "kind": "images",
        "images_sha256": _sha256(images),
        "n_images": len(images),
        "encoder": encoder.spec.name,
        "weights": str(getattr(encoder, "weights", "")),
        "weights_sha256": weights_fingerprint(encoder),
        "preprocessing": preprocessing_spec(encoder),
        "precision": precision,
        "dtype": dtype,
    }
    return _sha256(inputs)[:KEY_LENGTH], inputs


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
    """
    import torch

    from cxrfuse.encoders.distributed import current_context

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if device is not None:
        encoder.to(resolve_device(device))
    run_device = next(iter(encoder.parameters()), torch.zeros(())).device
    if batch_size is None:
        batch_size = CPU_BATCH if run_device.type == "cpu" else GPU_BATCH
    if shard_size < 1 or batch_size < 1 or num_workers < 0:
        raise ValueError("shard_size and batch_size must be positive, num_workers >= 0")
    precision = resolve_precision(precision, run_device)  # type: ignore[assignment]
    records = image_records(manifest)
    stamps = [file_stamp(r.path) for r in records]
    key, inputs = _image_key(records, stamps, encoder, dtype, precision)
    folder = Path(store_dir) / key
    if (folder / "meta.json").is_file():
        return replace(load_image_embeddings(folder), reused=True)
    ctx = current_context()
    bounds = [(s, min(s + shard_size, len(records))) for s in range(0, len(records), shard_size)]
    cache = None
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        _clean_temp_files(folder)
        cache = _open_cache(cache_dir, records, stamps, encoder, shard_size, create=True)
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
    loader = torch.utils.data.DataLoader(
        _ImageDataset(records, encoder.spec.input_size, cache),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=on_gpu,
        persistent_workers=False,
    )
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
    try:
        with torch.inference_mode():
            for indices, pixels, ok, errors, fresh in loader:
                if cache is not None:
                    for j, index in enumerate(indices):
                        if fresh[j]:
                            cache.add(index, pixels[j].numpy(), bool(ok[j]), errors[j])
                    n_cached += len(indices) - sum(fresh)
                feats = _forward(model, encoder, pixels, ok, run_device, autocast, channels_last)
                for j, index in enumerate(indices):
                    out[index] = (feats[j] if ok[j] else None, errors[j])
                bar.update(len(indices))
                _flush_shards(folder, bounds, pending, records, out, dtype, encoder.feature_dim)
    finally:
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
            "batch_size": batch_size,
            "compile": compile,
            "cache": None if cache is None else {"folder": str(cache.folder), "hits": n_cached},
        }
        _finish_image_store(folder, key, inputs, encoder, records, bounds, manifest, dtype, run)
    ctx.barrier()  # meta.json is written
    return load_image_embeddings(folder)


def _open_cache(
    cache_dir: str | Path | None,
    records: Sequence[_ImageRecord],
    stamps: Sequence[tuple[int | None, int | None]],
    encoder: ImageEncoder,
    shard_size: int,
    *,
    create: bool,
) -> DecodedImageCache | None:
    if cache_dir is None:
        return None
    from cxrfuse.encoders.cache import DecodedImageCache

    paths = [r.path for r in records]
    size = encoder.spec.input_size
    return DecodedImageCache(cache_dir, paths, stamps, size, shard_size, create=create)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

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
    import torch

    from cxrfuse.encoders.image import to_model_input

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
    records: Sequence[_ImageRecord],
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
    for i in range(len(bounds)):
        for fail in json.loads(_shard_ids(folder, i).read_text())["failed"]:
            problems.add("unreadable-image", fail["path"], fail["error"])
    n_embedded = len(records) - len(problems)
    meta = {
        "store_version": STORE_VERSION,
        "kind": "images",
        "key": key,
        "key_inputs": inputs,
        "encoder": encoder.spec.name,
        "weights": str(getattr(encoder, "weights", "")),
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
    }
    _write_json(folder / "meta.json", meta)


def _shard_npy(folder: Path, i: int) -> Path:
    return folder / f"images-{i:05d}.npy"


def _shard_ids(folder: Path, i: int) -> Path:
    return folder / f"images-{i:05d}.ids.json"


def _flush_shards(
    folder: Path,
    bounds: list[tuple[int, int]],
    pending: list[int],
    records: list[_ImageRecord],
    out: dict[int, tuple[np.ndarray | None, str]],
    dtype: str,
    dim: int,
) -> None:
    """Write every pending shard whose images are all done (vectors first, ids last)."""
    for i in list(pending):
        lo, hi = bounds[i]
        if not all(k in out for k in range(lo, hi)):
            continue
        good = [k for k in range(lo, hi) if out[k][0] is not None]
        vectors = (
            np.stack([out[k][0] for k in good]).astype(dtype)
            if good
            else np.zeros((0, dim), dtype=dtype)
        )
        ids = {
            "image_ids": [records[k].image_id for k in good],
            "study_ids": [records[k].study_id for k in good],
            "views": [records[k].view for k in good],
            "failed": [
                {"image_id": records[k].image_id, "path": records[k].path, "error": out[k][1]}
                for k in range(lo, hi)
                if out[k][0] is None
            ],
        }
        _write_npy(_shard_npy(folder, i), vectors)
        _write_json(_shard_ids(folder, i), ids)  # the shard counts as done once this exists
        pending.remove(i)
        for k in range(lo, hi):
            del out[k]


def load_image_embeddings(path: str | Path, *, require_meta: bool = True) -> ImageEmbeddings:
    """Open an image store folder; shards are memory-mapped read-only."""
    folder = Path(path)
    meta_path = folder / "meta.json"
    if require_meta and not meta_path.is_file():
        raise DataError(f"{folder}: no meta.json; not a finished image embedding store")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    shards, image_ids, study_ids, views = [], [], [], []
    i = 0
    while _shard_ids(folder, i).is_file():
        ids = json.loads(_shard_ids(folder, i).read_text())
        array = np.load(_shard_npy(folder, i), mmap_mode="r")
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


# ----------------------------------------------------------------------------- texts


@dataclass
class TextEmbeddings:
    """One text vector per study (zeros with ``mask`` False where the text is empty)."""

    path: Path
    vectors: np.ndarray
    study_ids: list[str]
    mask: np.ndarray
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # True when a finished store was loaded instead of computed

    def __len__(self) -> int:
        return len(self.study_ids)

    def study_matrix(self, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
        """(n_studies, D) vectors and mask in ``manifest`` order (zeros for unknown studies)."""
        rows = {sid: i for i, sid in enumerate(self.study_ids)}
        X = np.zeros((len(manifest), self.vectors.shape[1]), dtype=np.float32)
        mask = np.zeros(len(manifest), dtype=bool)
        for i, sid in enumerate(manifest.df["study_id"]):
            row = rows.get(str(sid))
            if row is not None:
                X[i], mask[i] = self.vectors[row], self.mask[row]
        return X, mask


def embed_texts(
    manifest: Manifest,
    text_encoder: TextEncoder,
    text_config: TextConfig,
    store_dir: str | Path,
    *,
    task: str | None = None,
) -> TextEmbeddings:
    """Embed each study's prepared text into ``store_dir/<key>/``.

    An encoder that ``requires_fit`` (tf-idf) is fitted on the studies with split "train"
    only. Studies with empty text get a zero vector and ``mask`` False.
    """
    texts = prepare_texts_list(manifest, text_config, task)
    study_ids = [str(s) for s in manifest.df["study_id"]]
    nonempty = np.array([bool(t.strip()) for t in texts], dtype=bool)
    if getattr(text_encoder, "requires_fit", False):
        splits = manifest.df["split"]
        if splits.isna().all():
            raise DataError(
                f"text encoder {getattr(text_encoder, 'name', '?')!r} must be fitted on the "
                "training split, but the manifest has no split; run the split step first"
            )
        train = [t for t, s, ok in zip(texts, splits, nonempty) if s == "train" and ok]
        if not train:
            raise DataError("no study with split 'train' has text to fit the text encoder on")
        text_encoder.fit(train)
    fingerprint = text_encoder.fingerprint()
    inputs = {
        "store_version": STORE_VERSION,
        "kind": "texts",
        "texts_sha256": _sha256([study_ids, texts]),
        "encoder": getattr(text_encoder, "name", type(text_encoder).__name__),
        "fingerprint": fingerprint,
        "text_config": text_config.model_dump(),
        "task": task,
    }
    key = _sha256(inputs)[:KEY_LENGTH]
    folder = Path(store_dir) / key
    if (folder / "meta.json").is_file():
        return replace(load_text_embeddings(folder), reused=True)
    folder.mkdir(parents=True, exist_ok=True)
    _clean_temp_files(folder)
    start = time.perf_counter()
    dim = int(text_encoder.dim)
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    if nonempty.any():
        encoded = text_encoder.encode([t for t, ok in zip(texts, nonempty) if ok])
        vectors[nonempty] = np.asarray(encoded, dtype=np.float32)
    elapsed = time.perf_counter() - start
    _write_npy(folder / "texts.npy", vectors)
    _write_json(folder / "texts.ids.json", {"study_ids": study_ids, "mask": nonempty.tolist()})
    table = pd.DataFrame({"study_id": study_ids, "text": texts, "mask": nonempty})
    tmp = folder / f"texts.parquet.tmp-{os.getpid()}"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, folder / "texts.parquet")
    meta = {
        "store_version": STORE_VERSION,
        "kind": "texts",
        "key": key,
        "key_inputs": inputs,
        "encoder": inputs["encoder"],
        "dim": dim,
        "n_studies": len(texts),
        "n_with_text": int(nonempty.sum()),
        "n_empty": int((~nonempty).sum()),
        "texts_per_s": int(nonempty.sum()) / elapsed if elapsed > 0 else None,
    }
    _write_json(folder / "meta.json", meta)
    return TextEmbeddings(folder, vectors, study_ids, nonempty, texts, meta)


def prepare_texts_list(manifest: Manifest, config: TextConfig, task: str | None) -> list[str]:
    from cxrfuse.text import prepare_texts

    return [t if isinstance(t, str) else "" for t in prepare_texts(manifest, config, task)]


def load_text_embeddings(path: str | Path) -> TextEmbeddings:
    """Open a finished text store folder (vectors memory-mapped)."""
    folder = Path(path)
    if not (folder / "meta.json").is_file():
        raise DataError(f"{folder}: no meta.json; not a finished text embedding store")
    meta = json.loads((folder / "meta.json").read_text())
    ids = json.loads((folder / "texts.ids.json").read_text())
    texts = pd.read_parquet(folder / "texts.parquet")["text"].tolist()
    vectors = np.load(folder / "texts.npy", mmap_mode="r")
    mask = np.asarray(ids["mask"], dtype=bool)
    return TextEmbeddings(folder, vectors, list(ids["study_ids"]), mask, texts, meta)


# ----------------------------------------------------------------------------- both


def default_workers(device: torch.device | str, nproc: int = 1) -> int:
    """DataLoader workers per rank: all spare cores for a GPU; on a CPU, none up to 2 cores.

    On a 2-core CPU the model's intra-op threads already use both cores, and a decoding worker
    process only contends with them: from 1024-px PNGs the store ran at 40.9 images/s with
    decoding in line against 36.9 with one worker (efficientnet-lite0, 3 runs each).
    """
    cores = max(1, (os.cpu_count() or 1) // max(1, nproc))
    if str(device).startswith("cuda"):
        return max(1, min(16, cores - 1))
    return 1 if cores > 2 else 0


def embed(
    manifest: str | Path | Manifest,
    image_encoder: str | None,
    text_encoder: str | None,
    store_dir: str | Path,
    *,
    image_weights: str = "default",
    text_weights: str = "default",
    text_sections: Sequence[str] = ("indication",),
    mask_labels: bool = True,
    task: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    shard_size: int = 1024,
    input_size: int | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    precision: Literal["auto", "float32", "bfloat16"] = "auto",
    device: str = "auto",
    cache_dir: str | Path | None = None,
    compile: bool = False,
    nproc: int = 1,
    progress: bool = True,
    text_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed a manifest's images and/or texts into ``store_dir``; return paths and a summary.

    ``manifest`` is a Manifest or its Parquet file. Texts are the chosen report
    ``text_sections``, with the labels of ``task`` (default: all labels) masked when
    ``mask_labels``. ``nproc`` > 1 spawns that many local ranks for the images (gloo on CPU,
    nccl on GPU); under ``torchrun`` (WORLD_SIZE > 1 in the environment) this process joins
    the ranks torchrun started. Texts are embedded by rank 0 only. ``num_workers`` None picks
    :func:`default_workers`. ``text_options`` go to :func:`create_text_encoder`
    (e.g. ``{"svd_dim": 64}`` for tf-idf).
    """
    from cxrfuse.data.manifest import read_manifest
    from cxrfuse.encoders import distributed
    from cxrfuse.encoders.registry import create_text_encoder

    if image_encoder is None and text_encoder is None:
        raise CxrfuseError("nothing to embed: name an image encoder, a text encoder or both")
    source = str(manifest) if not isinstance(manifest, Manifest) else "<Manifest>"
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    config = _text_config(text_sections, mask_labels)  # checked before any work
    summary: dict[str, Any] = {"manifest": source, "n_studies": len(manifest)}
    is_main = True
    if image_encoder is not None:
        options = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "shard_size": shard_size,
            "dtype": dtype,
            "precision": precision,
            "cache_dir": cache_dir,
            "compile": compile,
            "progress": progress,
        }
        spec = (image_encoder, image_weights, input_size)
        images, is_main = _embed_images_ranked(manifest, spec, store_dir, device, nproc, options)
        if is_main:
            summary["images"] = _image_summary(images)
    if text_encoder is not None and is_main:
        tenc = create_text_encoder(text_encoder, weights=text_weights, **(text_options or {}))
        texts = embed_texts(manifest, tenc, config, store_dir, task=task)
        summary["texts"] = {
            "path": str(texts.path),
            "encoder": texts.meta.get("encoder"),
            "dim": texts.meta.get("dim"),
            "n_studies": texts.meta.get("n_studies"),
            "n_with_text": texts.meta.get("n_with_text"),
            "n_empty": texts.meta.get("n_empty"),
            "texts_per_s": texts.meta.get("texts_per_s"),
            "sections": list(text_sections),
            "masked": mask_labels,
            "task": task,
            "reused": texts.reused,
        }
    summary["rank"] = 0 if is_main else distributed.current_context().rank
    return summary


def _text_config(sections: Sequence[str], mask_labels: bool) -> TextConfig:
    """The text configuration, or a CxrfuseError naming the bad field and value."""
    from pydantic import ValidationError

    from cxrfuse.text import TextConfig

    try:
        return TextConfig(sections=list(sections), mask_labels=mask_labels)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CxrfuseError(
            f"text configuration: {where} = {first.get('input')!r}: {first['msg']}"
        ) from err


def _embed_images_ranked(
    manifest: Manifest,
    spec: tuple[str, str, int | None],
    store_dir: str | Path,
    device: str,
    nproc: int,
    options: dict[str, Any],
) -> tuple[ImageEmbeddings, bool]:
    """(embeddings, whether this process is rank 0), computed by 1..N processes."""
    import torch

    from cxrfuse.encoders import distributed
    from cxrfuse.encoders.registry import create_image_encoder

    name, weights, input_size = spec
    run_device = resolve_device(device)
    torchrun = distributed.launched_by_torchrun() and not current_group()
    if torchrun and nproc > 1:
        raise CxrfuseError("--nproc starts local ranks itself; do not combine it with torchrun")
    world = nproc if nproc > 1 else int(os.environ.get("WORLD_SIZE", "1"))
    if run_device.type == "cuda" and world > 1:
        if nproc > torch.cuda.device_count():
            raise CxrfuseError(f"--nproc {nproc} > {torch.cuda.device_count()} visible GPU(s)")
        run_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    options = {
        **options,
        "precision": resolve_precision(options["precision"], run_device),
        "num_workers": options["num_workers"]
        if options["num_workers"] is not None
        else default_workers(run_device, world),
    }
    encoder = create_image_encoder(name, weights=weights, input_size=input_size)
    key, _ = image_store_key(manifest, encoder, options["dtype"], options["precision"])
    folder = Path(store_dir) / key
    if nproc > 1:
        reused = (folder / "meta.json").is_file()
        if not reused:
            args = (manifest, spec, str(store_dir), run_device.type, options)
            distributed.launch_local(nproc, _image_rank, args)
        return replace(load_image_embeddings(folder), reused=reused), True
    ctx = distributed.init_from_env(run_device.type) if torchrun else None
    try:
        images = embed_images(manifest, encoder, store_dir, device=run_device, **options)
        is_main = distributed.current_context().is_main
    finally:
        if ctx is not None:
            distributed.shutdown()
    return images, is_main


def current_group() -> bool:
    """Whether a torch.distributed process group is already initialised here."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _image_rank(
    manifest: Manifest,
    spec: tuple[str, str, int | None],
    store_dir: str,
    device_type: str,
    options: dict[str, Any],
) -> None:
    """One spawned rank: join the group, embed this rank's shards, leave."""
    import torch

    from cxrfuse.encoders import distributed
    from cxrfuse.encoders.registry import create_image_encoder

    ctx = distributed.init_from_env(device_type)
    try:
        if device_type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
        device = torch.device("cuda", ctx.local_rank) if device_type == "cuda" else "cpu"
        name, weights, input_size = spec
        encoder = create_image_encoder(name, weights=weights, input_size=input_size)
        embed_images(manifest, encoder, store_dir, device=device, **options)
    finally:
        distributed.shutdown()


def _image_summary(images: ImageEmbeddings) -> dict[str, Any]:
    meta, reused = images.meta, images.reused
    return {
        "path": str(images.path),
        "encoder": meta["encoder"],
        "dim": meta["dim"],
        "dtype": meta.get("dtype"),
        "n_images": meta["n_images"],
        "n_embedded": meta["n_embedded"],
        "n_failed": meta["n_failed"],
        "failed_paths": [p["where"] for p in meta.get("problems", [])],
        "images_per_s": None if reused else meta.get("images_per_s"),
        "computed_this_run": 0 if reused else meta.get("computed_this_run"),
        "world_size": meta.get("world_size", 1),
        "device": meta.get("device"),
        "cache": None if reused else meta.get("cache"),
        "problems": meta.get("problems", []),
        "reused": reused,
    }
