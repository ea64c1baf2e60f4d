"""Image hashes and overlap checks: exact copies and near duplicates across splits and datasets.

Each image gets two hashes, stored per view in the manifest (``views[].content_hash``,
``views[].phash``) by ingest and ``split``, computed here on demand where a manifest lacks
them (older manifests, ingest without images):

- ``content_hash``: SHA-256 (first 128 bits, hex) of the decoded pixels at their own size and
  bit depth (:func:`cxrfuse.data.images.decode_native`), so a byte-identical copy and the same
  pixels re-saved losslessly (PNG compression level, metadata, PNG <-> lossless format) are
  both *exact* matches; a 16-bit version of an 8-bit image, a re-encoded JPEG or a resized
  copy are not exact.
- ``phash``: a 256-bit DCT perceptual hash (after Zauner 2010: 8-bit gray, resized to 32 x 32
  with an antialiasing box filter, 2-D DCT-II, the 16 x 16 lowest frequencies compared with
  their median), 64 hex digits. The usual 64 bits (8 x 8) are too few for chest radiographs,
  which all look alike: on the NIH sample distinct images came within 6 bits of each other
  while a 5 % crop moved 16. Two images are *near* duplicates when the Hamming distance of their
  hashes is at most :data:`NEAR_THRESHOLD` (chosen by measurement on real radiographs:
  ``benchmarks/near_duplicates.py``, figures in ``benchmarks/RESULTS.md``).

Hashes computed on demand (:func:`hash_images`) are kept in a :class:`HashCache`, a Parquet
file next to the manifest (:func:`cache_path_for`) keyed by absolute path, size and mtime in ns,
and are computed in worker processes. The perceptual hash is taken from the full decode the
exact hash needs anyway: a reduced JPEG decode (PIL ``draft``) was slower in this pipeline and
moved near/not-near decisions (``benchmarks/image_hash_cache.py``).

Near-duplicate search compares every pair (numpy popcount, in blocks); beyond
:data:`MAX_NEAR_PAIRS` pairs only exact matches are searched and the report says so.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrfuse.data.images import decode_native, native_gray8
from cxrfuse.data.manifest import HASH_FIELDS, Manifest
from cxrfuse.files import file_stamp
from cxrfuse.problems import DataError
from cxrfuse.vocab import PHANTOM

PHASH_SIDE = 32  # the image is resized to PHASH_SIDE x PHASH_SIDE before the DCT
PHASH_LOW = 16  # the PHASH_LOW x PHASH_LOW lowest frequencies make the 256 bits
PHASH_WORDS = PHASH_LOW * PHASH_LOW // 64
NEAR_THRESHOLD = 48
"""Largest Hamming distance (of 256 bits) at which two images count as near duplicates."""
MAX_NEAR_PAIRS = 2_000_000_000
"""Most image pairs compared for near duplicates (beyond it, exact matches only)."""
EXAMPLES = 5
HASH_VERSION = 1  # bump when either hash changes (cached hashes of another version are redone)
CACHE_SUFFIX = ".image-hashes.parquet"
"""The hash cache next to a manifest (:func:`cache_path_for`); the JSON cache of earlier
versions (``image-hashes.json`` in the store) is not read: its images are hashed once more."""
POOL_MIN_PER_WORKER = 16
"""Fewer images than this per worker are hashed in this process (a worker costs ~0.3 s to start)."""
HASH_AT_INGEST_MAX = 50_000
"""Ingest hashes the images of manifests up to this size (about 6 ms per 512-px PNG)."""


def content_hash(pixels: np.ndarray) -> str:
    """SHA-256 (128 bits, hex) of a gray pixel array, its shape and its bit depth."""
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:{pixels.dtype.str}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()[:32]


def perceptual_hash(img: Image.Image, side: int = PHASH_SIDE, low: int = PHASH_LOW) -> int:
    """The DCT perceptual hash of an 8-bit gray image as an int of ``low * low`` bits."""
    from scipy.fft import dctn

    small = np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float64)
    coeffs = dctn(small, type=2, norm="ortho")[:low, :low]
    bits = (coeffs > np.median(coeffs)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def hash_file(path: str | Path) -> dict[str, str]:
    """``{"content_hash": ..., "phash": ...}`` of one image file (decoded once);
    :class:`DataError` (or OSError from PIL) when it cannot be read."""
    pixels = decode_native(path)
    return {"content_hash": content_hash(pixels), "phash": f"{perceptual_hash(native_gray8(pixels)):0{PHASH_WORDS * 16}x}"}


def hash_words(hashes: Sequence[int]) -> np.ndarray:
    """Perceptual hashes as an (n, PHASH_WORDS) uint64 array."""
    mask = (1 << 64) - 1
    return np.array([[(h >> (64 * k)) & mask for k in range(PHASH_WORDS)] for h in hashes],
                    dtype=np.uint64).reshape(len(hashes), PHASH_WORDS)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of two hash arrays from :func:`hash_words` (len(a) x len(b))."""
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=-1, dtype=np.int32)


# ----------------------------------------------------------------------------- manifests
_HEX = frozenset("0123456789abcdef")


def has_hashes(view: dict[str, Any]) -> bool:
    """Whether a view holds both hashes in this version's form (32 and 64 hex digits); any
    other value (an older version, a hand edit) counts as missing and is computed again."""
    content, phash = view.get("content_hash"), view.get("phash")
    return (isinstance(content, str) and len(content) == 32 and set(content) <= _HEX
            and isinstance(phash, str) and len(phash) == PHASH_WORDS * 16 and set(phash) <= _HEX)


def missing_hashes(manifest: Manifest) -> int:
    """Images with a path on disk whose view has no valid stored hash."""
    return sum(1 for views in manifest.df["views"] for v in views if v.get("path") and not has_hashes(v))


@dataclass
class HashCounts:
    """Where the hashes of one :func:`hash_images` call came from."""

    images: int = 0  # images with a path on disk
    in_manifest: int = 0  # already stored in the manifest
    cached: int = 0  # taken from the hash cache (same path, size and mtime)
    hashed: int = 0  # decoded and hashed now
    unreadable: int = 0
    workers: int = 1
    cache: str | None = None  # the cache file, when one was used

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "in_manifest": self.in_manifest, "cached": self.cached,
                "hashed": self.hashed, "unreadable": self.unreadable, "workers": self.workers,
                "cache": self.cache}  # fmt: skip

    def describe(self) -> str:
        """One line: ``310 images: 12 hashed now (2 workers), 298 from the cache, 0 stored``."""
        return (f"{self.images} images: {self.hashed} hashed now ({self.workers} worker"
                f"{'s' if self.workers != 1 else ''}), {self.cached} from the hash cache, "
                f"{self.in_manifest} stored in the manifest"
                + (f", {self.unreadable} unreadable" if self.unreadable else ""))


def cache_path_for(manifest_path: str | Path) -> Path:
    """The hash cache kept next to a manifest: ``iu.parquet`` -> ``iu`` + :data:`CACHE_SUFFIX`."""
    path = Path(manifest_path)
    return path.with_name(path.stem + CACHE_SUFFIX)


class HashCache:
    """Image hashes keyed by a file's absolute path, size and mtime (ns), in one Parquet file.

    A changed file (other size or mtime) is hashed again; a cache that cannot be read (damaged,
    another layout) is ignored with a warning and rebuilt; one that cannot be written only
    costs time. Entries of other files are kept, so one cache serves a manifest's re-ingests."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, tuple[int, int, str, str]] = {}
        self.changed = False
        if self.path is not None and self.path.exists():
            self.entries = self._read(self.path)

    @staticmethod
    def _read(path: Path) -> dict[str, tuple[int, int, str, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path, columns=list(_CACHE_COLUMNS))
            cols = {name: table.column(name).to_pylist() for name in _CACHE_COLUMNS}
        except (OSError, pa.ArrowException, KeyError, ValueError) as err:
            warnings.warn(f"{path}: image-hash cache unreadable ({str(err).splitlines()[0]}); "
                          "ignored, it is rebuilt", stacklevel=3)  # fmt: skip
            return {}
        return {key: (size, mtime, content, phash)
                for key, size, mtime, version, content, phash in zip(*cols.values())
                if version == HASH_VERSION}  # fmt: skip

    def get(self, key: str, stamp: tuple[int | None, int | None]) -> dict[str, str] | None:
        entry = self.entries.get(key)
        if entry is None or stamp[0] is None or entry[:2] != stamp:
            return None
        return {"content_hash": entry[2], "phash": entry[3]}

    def put(self, key: str, stamp: tuple[int | None, int | None], hashes: dict[str, str]) -> None:
        if stamp[0] is None or stamp[1] is None:
            return
        self.entries[key] = (stamp[0], stamp[1], hashes["content_hash"], hashes["phash"])
        self.changed = True

    def save(self) -> bool:
        """Write the cache (atomically) when it changed; False when it could not be written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from cxrfuse.files import atomic_path

        if self.path is None or not self.changed:
            return True
        keys = list(self.entries)
        rows = list(self.entries.values())
        table = pa.table({
            "path": pa.array(keys, pa.string()),
            "size": pa.array([r[0] for r in rows], pa.int64()),
            "mtime_ns": pa.array([r[1] for r in rows], pa.int64()),
            "version": pa.array([HASH_VERSION] * len(rows), pa.int32()),
            "content_hash": pa.array([r[2] for r in rows], pa.string()),
            "phash": pa.array([r[3] for r in rows], pa.string()),
        })
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                pq.write_table(table, tmp, compression="zstd")
        except OSError:
            return False  # a cache that cannot be written only costs time
        self.changed = False
        return True


_CACHE_COLUMNS = ("path", "size", "mtime_ns", "version", "content_hash", "phash")


def _hash_one(path: str) -> dict[str, str] | str:
    """:func:`hash_file`'s hashes, or the first line of why the image cannot be read (a worker
    process's unit of work: nothing here raises for a bad image)."""
    try:
        return hash_file(path)
    except (OSError, ValueError, DataError, Image.DecompressionBombError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__


def default_workers() -> int:
    """Worker processes for hashing: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _hash_paths(paths: list[str], workers: int, progress: bool) -> Iterator[dict[str, str] | str]:
    """:func:`_hash_one` of every path, in order, on ``workers`` processes (in this process for
    one worker or too few images to pay for starting processes), with a progress bar that a
    log can read (the CLI's ``TQDM_*`` settings)."""
    from tqdm.auto import tqdm

    # no interval set here: the CLI's TQDM_* log settings (one line every 15 s in a log) apply
    bar = tqdm(total=len(paths), desc="hash images", unit="img", disable=not progress or not paths,
               leave=False)  # fmt: skip
    try:
        if workers <= 1 or len(paths) < POOL_MIN_PER_WORKER * workers:
            for path in paths:
                yield _hash_one(path)
                bar.update(1)
            return
        from concurrent.futures import ProcessPoolExecutor

        chunk = max(1, min(32, len(paths) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_hash_one, paths, chunksize=chunk):
                yield result
                bar.update(1)
    finally:
        bar.close()


def hash_images(manifest: Manifest, *, recompute: bool = False, progress: bool = False,
                cache: str | Path | None = None, workers: int | None = None,
                ) -> tuple[Manifest, list[dict[str, str]], HashCounts]:  # fmt: skip
    """A copy of ``manifest`` with both hashes in every view whose image is on disk (only the
    missing ones unless ``recompute``), one problem ``{study_id, image_id, path, error}`` per
    image that could not be read (its hashes stay empty; nothing else stops), and the counts.

    ``cache`` is a :class:`HashCache` file (by default :func:`cache_path_for` the manifest's
    path, chosen by the CLI): hashes found there for the same path, size and mtime are not
    computed again, new ones are added. ``workers`` processes decode (default: the CPUs)."""
    workers = default_workers() if workers is None else max(1, int(workers))
    counts = HashCounts(workers=workers, cache=str(cache) if cache is not None else None)
    problems: list[dict[str, str]] = []
    todo = []
    for i, views in enumerate(manifest.df["views"]):
        for j, v in enumerate(views):
            if not v.get("path"):
                continue
            counts.images += 1
            if recompute or not has_hashes(v):
                todo.append((i, j))
            else:
                counts.in_manifest += 1
    if not todo:
        return manifest, problems, counts
    store = HashCache(cache)
    df = manifest.df.copy()
    df["views"] = [[dict(v) for v in views] for views in df["views"]]
    keys: list[tuple[str, tuple[int | None, int | None]]] = []
    fresh: list[tuple[int, int]] = []
    for i, j in todo:
        view = df["views"].iat[i][j]
        key, stamp = str(Path(view["path"]).resolve()), file_stamp(view["path"])
        found = None if recompute else store.get(key, stamp)
        if found is not None:
            view.update(found)
            counts.cached += 1
        else:
            fresh.append((i, j))
            keys.append((key, stamp))
    paths = [str(df["views"].iat[i][j]["path"]) for i, j in fresh]
    for (i, j), (key, stamp), result in zip(fresh, keys, _hash_paths(paths, workers, progress)):
        view = df["views"].iat[i][j]
        if isinstance(result, str):
            for name in HASH_FIELDS:
                view.pop(name, None)
            problems.append({"study_id": str(df["study_id"].iat[i]), "image_id": str(view["image_id"]),
                             "path": str(view["path"]), "error": result})  # fmt: skip
            counts.unreadable += 1
            continue
        view.update(result)
        store.put(key, stamp, result)
        counts.hashed += 1
    store.save()
    return manifest.replace(df=df), problems, counts


def add_image_hashes(manifest: Manifest, *, recompute: bool = False, progress: bool = False,
                     cache: str | Path | None = None, workers: int | None = None,
                     ) -> tuple[Manifest, list[dict[str, str]]]:  # fmt: skip
    """:func:`hash_images` without the counts: ``(manifest with hashes, unreadable images)``."""
    hashed, problems, _ = hash_images(manifest, recompute=recompute, progress=progress,
                                      cache=cache, workers=workers)  # fmt: skip
    return hashed, problems


@dataclass(frozen=True)
class ImageRef:
    """One hashed image of a manifest."""

    study_id: str
    patient_id: str
    split: str | None
    image_id: str
    path: str | None
    content: str
    phash: int

    def to_dict(self) -> dict[str, Any]:
        return {"study_id": self.study_id, "patient_id": self.patient_id, "split": self.split,
                "image_id": self.image_id, "path": self.path}  # fmt: skip


def image_refs(manifest: Manifest, splits: Iterable[str] | None = None) -> list[ImageRef]:
    """The hashed images of ``manifest`` (of the listed splits only, when given)."""
    keep = None if splits is None else set(splits)
    refs = []
    for rec in manifest.df[["study_id", "patient_id", "split", "views"]].itertuples(index=False):
        if keep is not None and rec.split not in keep:
            continue
        for v in rec.views:
            if has_hashes(v):
                refs.append(ImageRef(str(rec.study_id), str(rec.patient_id), rec.split,
                                     str(v["image_id"]), v.get("path"), v["content_hash"],
                                     int(v["phash"], 16)))  # fmt: skip
    return refs


def _pairs(left: Sequence[ImageRef], right: Sequence[ImageRef] | None, threshold: int,
           near: bool) -> Iterable[tuple[int, int, int]]:  # fmt: skip
    """(i, j, distance) of every pair within ``threshold`` (i < j when ``right`` is None);
    exact content matches have distance -1. Only exact matches when ``near`` is False."""
    other = left if right is None else right
    by_content: dict[str, list[int]] = {}
    for j, ref in enumerate(other):
        by_content.setdefault(ref.content, []).append(j)
    exact = set()
    for i, ref in enumerate(left):
        for j in by_content.get(ref.content, []):
            if right is None and j <= i:
                continue
            exact.add((i, j))
            yield i, j, -1
    if not near or not left or not other:
        return
    a, b = hash_words([r.phash for r in left]), hash_words([r.phash for r in other])
    block = max(1, 1_000_000 // max(1, len(b)))
    for start in range(0, len(a), block):
        dist = hamming(a[start : start + block], b)
        rows, cols = np.nonzero(dist <= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if (right is None and c <= i) or (i, c) in exact:
                continue
            yield i, c, int(dist[r, c])


@dataclass
class PairCounts:
    """Exact and near pairs of one kind, with a few examples."""

    exact: int = 0
    near: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, a: ImageRef, b: ImageRef, distance: int) -> None:
        if distance < 0:
            self.exact += 1
        else:
            self.near += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append({"a": a.to_dict(), "b": b.to_dict(),
                                  "match": "exact" if distance < 0 else f"near (distance {distance})"})  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "near": self.near, "examples": self.examples}


def manifest_overlap(manifest: Manifest, threshold: int = NEAR_THRESHOLD) -> dict[str, Any]:
    """Pairs of images of different studies in one manifest that are the same (exact) or near
    duplicates: across splits, across patients, and within one patient (follow-ups can look
    alike). Images without hashes are counted, not compared."""
    refs = image_refs(manifest)
    listed = sum(1 for views in manifest.df["views"] for v in views if v.get("path"))
    synthetic = manifest.images == PHANTOM  # phantoms look alike: near matches mean nothing
    near = not synthetic and len(refs) * (len(refs) - 1) // 2 <= MAX_NEAR_PAIRS
    kinds = {k: PairCounts() for k in ("across_splits", "across_patients", "same_patient")}
    involved: dict[str, set[int]] = {k: set() for k in kinds}
    for i, j, d in _pairs(refs, None, threshold, near):
        a, b = refs[i], refs[j]
        if a.study_id == b.study_id:
            continue
        hits = ["same_patient" if a.patient_id == b.patient_id else "across_patients"]
        if a.split and b.split and a.split != b.split:
            hits.append("across_splits")
        for kind in hits:
            kinds[kind].add(a, b, d)
            involved[kind] |= {i, j}
    return {"images": listed, "hashed": len(refs), "unhashed": listed - len(refs),
            "threshold": threshold, "near_searched": near,
            "near_skipped": ("synthetic phantom images look alike: exact copies only" if synthetic
                             else None if near else "too many images for the pairwise "
                             "near-duplicate search: exact copies only"),
            **{k: {**c.to_dict(), "images": len(involved[k])} for k, c in kinds.items()}}  # fmt: skip


def cross_overlap(external: Manifest, training: Manifest, threshold: int = NEAR_THRESHOLD,
                  splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:  # fmt: skip
    """How many images of ``external`` occur in ``training`` (its ``splits``): ``exact`` (the
    same pixels), ``near`` (a near duplicate, not exact), ``total`` (external images checked),
    per training split, with a few example pairs. Each external image counts once (exact
    before near)."""
    ext = image_refs(external)
    listed = sum(1 for views in external.df["views"] for v in views if v.get("path"))
    by_split: dict[str, dict[str, int]] = {}
    examples: list[dict[str, Any]] = []
    best: dict[int, int] = {}
    all_splits = [s for s in ("train", "val", "test") if s in set(training.df["split"].dropna())]
    for split in dict.fromkeys([*splits, *all_splits]):
        refs = image_refs(training, [split])
        near = len(ext) * len(refs) <= MAX_NEAR_PAIRS
        matched: dict[int, tuple[int, int]] = {}  # external image -> (distance, training image)
        for i, j, d in _pairs(ext, refs, threshold, near):
            if i not in matched or d < matched[i][0]:
                matched[i] = (d, j)
        by_split[split] = {"images": len(refs), "exact": sum(d < 0 for d, _ in matched.values()),
                           "near": sum(d >= 0 for d, _ in matched.values())}  # fmt: skip
        if split in splits:
            for i, (d, j) in sorted(matched.items(), key=lambda item: item[1][0]):
                if len(examples) < EXAMPLES:
                    examples.append({"external": ext[i].to_dict(), "training": refs[j].to_dict(),
                                     "match": "exact" if d < 0 else f"near (distance {d})"})  # fmt: skip
                best[i] = min(d, best.get(i, d))
    return {"exact": sum(d < 0 for d in best.values()), "near": sum(d >= 0 for d in best.values()),
            "total": len(ext), "unhashed": listed - len(ext), "training_splits": list(splits),
            "by_split": by_split, "threshold": threshold, "examples": examples}  # fmt: skip


def describe_manifest_overlap(report: dict[str, Any]) -> list[str]:
    """One line per finding of :func:`manifest_overlap` (empty when nothing is shared)."""
    lines = []
    names = {"across_splits": "shared across splits", "across_patients": "shared across patients",
             "same_patient": "alike within one patient (follow-ups?)"}  # fmt: skip
    for kind, name in names.items():
        block = report[kind]
        if block["exact"] or block["near"]:
            ex = "; ".join(f"{e['a']['image_id']} ({e['a']['split'] or '-'}) = {e['b']['image_id']} "
                           f"({e['b']['split'] or '-'}) {e['match']}" for e in block["examples"][:3])
            lines.append(f"image pairs {name}: {block['exact']} exact, {block['near']} near "
                         f"({block['images']} images), e.g. {ex}")
    return lines
