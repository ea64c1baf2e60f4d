"""The embedding store: image and text embeddings computed once, keyed by what they depend on.

Image embeddings live in ``store_dir/<key>/`` where ``key`` digests the images (ids, paths,
sizes, mtimes), the encoder name, a hash of its weights, its preprocessing spec and the
storage dtype. Vectors are written in shards (``images-00000.npy`` plus
``images-00000.ids.json``), each renamed into place only when complete, so a killed run
resumes without recomputing finished shards; ``meta.json`` marks a finished store, which a
rerun loads without doing any work. Text embeddings are stored the same way (``texts.npy``,
``texts.ids.json``, ``texts.parquet``) under a key of the prepared texts and the encoder
fingerprint.

Typical use::

    images = embed_images(manifest, create_image_encoder("efficientnet-lite0"), "store")
    X, mask = images.study_matrix(manifest, mode="frontal")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from cxrfuse.data.manifest import FRONTAL_VIEWS, Manifest
from cxrfuse.problems import DataError, ProblemLog

if TYPE_CHECKING:
    import torch

    from cxrfuse.encoders.image import ImageEncoder
    from cxrfuse.encoders.text import TextEncoder
    from cxrfuse.text import TextConfig

STORE_VERSION = 1
KEY_LENGTH = 16
LATERAL_VIEWS = frozenset({"LATERAL", "LL"})
StudyMode = Literal["frontal", "mean", "concat", "stack"]
DTYPES = ("float32", "float16")


# ----------------------------------------------------------------------------- helpers


def _sha256(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy file atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clean_temp_files(folder: Path) -> None:
    for tmp in folder.glob("*.tmp-*"):
        tmp.unlink(missing_ok=True)


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
    }


@dataclass(frozen=True)
class _ImageRecord:
    study_id: str
    image_id: str
    path: str
    view: str


def _image_records(manifest: Manifest) -> list[_ImageRecord]:
    """Every view with a path, in manifest order."""
    return [
        _ImageRecord(str(sid), str(v["image_id"]), str(v["path"]), str(v["view"]))
        for sid, views in zip(manifest.df["study_id"], manifest.df["views"])
        for v in views
        if v.get("path")
    ]


def _file_stamp(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


# ----------------------------------------------------------------------------- images


class _ImageDataset:
    """Opens images as grayscale uint8 and preprocesses them; decode errors become a flag."""

    def __init__(self, records: Sequence[_ImageRecord], encoder: ImageEncoder) -> None:
        self.records = list(records)
        self.spec = encoder.spec
        self.shape = (encoder.spec.channels, encoder.spec.input_size, encoder.spec.input_size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, Any, bool, str]:
        import torch
        from PIL import Image

        from cxrfuse.encoders.image import preprocess_image

        try:
            with Image.open(self.records[index].path) as im:
                arr = np.asarray(im.convert("L"), dtype=np.uint8)
            x = preprocess_image(arr, self.spec)
            return index, x, True, ""
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, never raised
            return index, torch.zeros(self.shape), False, f"{type(err).__name__}: {err}"


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
    manifest: Manifest, encoder: ImageEncoder, dtype: str = "float32"
) -> tuple[str, dict[str, Any]]:
    """The store key (16 hex) and the inputs it digests."""
    records = _image_records(manifest)
    images = sorted((r.study_id, r.image_id, r.path, *_file_stamp(r.path)) for r in records)
    inputs = {
        "store_version": STORE_VERSION,
        "kind": "images",
        "images_sha256": _sha256(images),
        "n_images": len(images),
        "encoder": encoder.spec.name,
        "weights": str(getattr(encoder, "weights", "")),
        "weights_sha256": weights_fingerprint(encoder),
        "preprocessing": preprocessing_spec(encoder),
        "dtype": dtype,
    }
    return _sha256(inputs)[:KEY_LENGTH], inputs


def embed_images(
    manifest: Manifest,
    encoder: ImageEncoder,
    store_dir: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    shard_size: int = 1024,
    dtype: Literal["float32", "float16"] = "float32",
    progress: bool = True,
) -> ImageEmbeddings:
    """Embed every image (every view with a path) into ``store_dir/<key>/``; resumable.

    Unreadable images are recorded as "unreadable-image" problems and get no vector.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be positive")
    key, inputs = image_store_key(manifest, encoder, dtype)
    folder = Path(store_dir) / key
    if (folder / "meta.json").is_file():
        return load_image_embeddings(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _clean_temp_files(folder)

    records = _image_records(manifest)
    bounds = [(s, min(s + shard_size, len(records))) for s in range(0, len(records), shard_size)]
    pending = [i for i in range(len(bounds)) if not _shard_ids(folder, i).is_file()]
    batches = [
        list(range(b, min(b + batch_size, bounds[i][1])))
        for i in pending
        for b in range(bounds[i][0], bounds[i][1], batch_size)
    ]
    n_pending = sum(bounds[i][1] - bounds[i][0] for i in pending)
    dataset = _ImageDataset(records, encoder)
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate
    )
    device = next(iter(encoder.parameters()), torch.zeros(())).device
    out: dict[int, tuple[np.ndarray | None, str]] = {}
    was_training = encoder.training
    encoder.eval()
    start = time.perf_counter()
    bar = tqdm(total=n_pending, unit="img", desc="embedding images", disable=not progress)
    try:
        with torch.inference_mode():
            for indices, x, ok, errors in loader:
                feats = torch.zeros((len(indices), encoder.feature_dim))
                if ok.any():
                    feats[ok] = encoder(x[ok].to(device)).float().cpu()
                arr = feats.numpy()
                for j, index in enumerate(indices):
                    out[index] = (arr[j] if ok[j] else None, errors[j])
                bar.update(len(indices))
                _flush_shards(folder, bounds, pending, records, out, dtype, encoder.feature_dim)
    finally:
        bar.close()
        encoder.train(was_training)
    elapsed = time.perf_counter() - start
    _flush_shards(folder, bounds, pending, records, out, dtype, encoder.feature_dim)

    problems = ProblemLog()
    for i in range(len(bounds)):
        for fail in json.loads(_shard_ids(folder, i).read_text())["failed"]:
            problems.add("unreadable-image", fail["path"], fail["error"])
    embeddings = load_image_embeddings(folder, require_meta=False)
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
        "n_embedded": len(embeddings),
        "n_failed": len(problems),
        "n_studies": len(manifest),
        "shard_size": shard_size,
        "n_shards": len(bounds),
        "computed_this_run": n_pending,
        "images_per_s": n_pending / elapsed if elapsed > 0 and n_pending else None,
        "problems": problems.to_records(limit=10_000),
        "problem_counts": problems.counts(),
    }
    _write_json(folder / "meta.json", meta)
    embeddings.meta = meta
    return embeddings


def _collate(items: list[tuple[int, Any, bool, str]]) -> tuple[list[int], Any, Any, list[str]]:
    import torch

    indices = [i for i, _, _, _ in items]
    x = torch.stack([t for _, t, _, _ in items])
    ok = torch.tensor([f for _, _, f, _ in items], dtype=torch.bool)
    return indices, x, ok, [e for _, _, _, e in items]


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
        return load_text_embeddings(folder)
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


def embed(
    manifest_path: str | Path,
    image_encoder: str | None,
    text_encoder: str | None,
    store_dir: str | Path,
    *,
    image_weights: str = "default",
    text_sections: Sequence[str] = ("indication",),
    mask_labels: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    input_size: int | None = None,
    progress: bool = True,
    text_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed a manifest's images and/or texts; return store paths and a summary.

    ``text_options`` go to :func:`create_text_encoder` (e.g. ``{"svd_dim": 64}`` for tf-idf).
    """
    from cxrfuse.data.manifest import read_manifest
    from cxrfuse.encoders.registry import create_image_encoder, create_text_encoder
    from cxrfuse.text import TextConfig

    manifest = read_manifest(manifest_path)
    summary: dict[str, Any] = {"manifest": str(manifest_path), "n_studies": len(manifest)}
    if image_encoder is not None:
        encoder = create_image_encoder(image_encoder, weights=image_weights, input_size=input_size)
        images = embed_images(
            manifest,
            encoder,
            store_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
        meta = images.meta
        summary["images"] = {
            "path": str(images.path),
            "encoder": meta["encoder"],
            "dim": meta["dim"],
            "n_images": meta["n_images"],
            "n_embedded": meta["n_embedded"],
            "n_failed": meta["n_failed"],
            "images_per_s": meta.get("images_per_s"),
            "problems": meta.get("problems", []),
        }
    if text_encoder is not None:
        tenc = create_text_encoder(text_encoder, **(text_options or {}))
        config = TextConfig(sections=list(text_sections), mask_labels=mask_labels)
        texts = embed_texts(manifest, tenc, config, store_dir)
        summary["texts"] = {
            "path": str(texts.path),
            "encoder": texts.meta.get("encoder"),
            "dim": texts.meta.get("dim"),
            "n_studies": texts.meta.get("n_studies"),
            "n_with_text": texts.meta.get("n_with_text"),
            "n_empty": texts.meta.get("n_empty"),
        }
    return summary
