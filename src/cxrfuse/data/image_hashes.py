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

Near-duplicate search compares every pair (numpy popcount, in blocks); beyond
:data:`MAX_NEAR_PAIRS` pairs only exact matches are searched and the report says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrfuse.data.images import decode_native, native_gray8
from cxrfuse.data.manifest import HASH_FIELDS, Manifest
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
CACHE_NAME = "image-hashes.json"
"""File name of the on-demand hash cache in a folder (evaluate: the embedding store)."""
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


def add_image_hashes(manifest: Manifest, *, recompute: bool = False, progress: bool = False,
                     cache_dir: str | Path | None = None) -> tuple[Manifest, list[dict[str, str]]]:  # fmt: skip
    """A copy of ``manifest`` with both hashes in every view whose image is on disk (only the
    missing ones unless ``recompute``), and one problem ``{study_id, image_id, path, error}``
    per image that could not be read (its hashes stay empty; nothing else stops).

    With ``cache_dir``, hashes computed here are kept in ``cache_dir/image-hashes.json`` keyed
    by the file's absolute path, size and modification time, so a manifest that does not store
    them is decoded once, not at every call."""
    from tqdm.auto import tqdm

    from cxrfuse.files import file_stamp, write_json

    problems: list[dict[str, str]] = []
    todo = [(i, j) for i, views in enumerate(manifest.df["views"]) for j, v in enumerate(views)
            if v.get("path") and (recompute or not has_hashes(v))]
    if not todo:
        return manifest, problems
    cache_path = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    cache = _read_cache(cache_path) if cache_path is not None and not recompute else {}
    fresh = 0
    df = manifest.df.copy()
    df["views"] = [[dict(v) for v in views] for views in df["views"]]
    for i, j in tqdm(todo, desc="hash images", unit="img", disable=not progress):
        view = df["views"].iat[i][j]
        key, stamp = str(Path(view["path"]).resolve()), list(file_stamp(view["path"]))
        entry = cache.get(key)
        if entry and entry[:3] == [*stamp, HASH_VERSION]:
            view.update(content_hash=entry[3], phash=entry[4])
            continue
        try:
            hashes = hash_file(view["path"])
        except (OSError, ValueError, DataError, Image.DecompressionBombError) as err:
            for name in HASH_FIELDS:
                view.pop(name, None)
            problems.append({"study_id": str(df["study_id"].iat[i]), "image_id": str(view["image_id"]),
                             "path": str(view["path"]), "error": str(err).splitlines()[0]})  # fmt: skip
            continue
        view.update(hashes)
        cache[key] = [*stamp, HASH_VERSION, hashes["content_hash"], hashes["phash"]]
        fresh += 1
    if cache_path is not None and fresh:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache_path, cache)
        except OSError:
            pass  # a cache that cannot be written only costs time
    return manifest.replace(df=df), problems


def _read_cache(path: Path) -> dict[str, list[Any]]:
    """The hash cache at ``path``; empty when it is missing or unreadable (it is only a cache)."""
    import json

    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


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
