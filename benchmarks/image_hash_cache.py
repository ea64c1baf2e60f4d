"""Image hashing for the overlap check at MIMIC-CXR scale: workers, the hash cache, reduced decodes.

Two image sets, both from the real NIH ChestX-ray14 sample (310 radiographs, 512 px PNG):

- ``nih``: the PNGs as they are;
- ``mimic``: the first ``--mimic`` of them upscaled (bicubic) to MIMIC-CXR-JPG's usual
  3056 x 2544 and saved as JPEG q95 (real anatomy, MIMIC's pixel count and format).

For each set: images/s of :func:`cxrfuse.data.image_hashes.hash_images` with 1 and 2 worker
processes on a cold cache, and with a warm cache (every image a cache hit); the projection to
MIMIC-CXR's 377,110 images uses the ``mimic`` rates. Then, per large JPEG, where the time goes
(full decode, SHA-256, perceptual hash from the full pixels, and a PIL ``draft`` reduced decode
+ perceptual hash), and whether the draft hash would make the same near-duplicate decisions:
the distances of re-encoded / cropped copies to their originals and of distinct originals to
each other, full vs draft, and every pair whose decision (distance <= threshold) flips.

    PYTHONPATH=src .venv/bin/python benchmarks/image_hash_cache.py [--data ../shared/data/nih-cxr14-sample] [--mimic 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_line
from PIL import Image

MIMIC_IMAGES = 377_110
MIMIC_SIZE = (2544, 3056)  # width, height (PIL order)


def _manifest(paths: list[Path]):  # a cxrfuse Manifest
    from cxrfuse.data import Manifest

    records = [{"study_id": f"s{i}", "patient_id": f"p{i}",
                "views": [{"image_id": p.stem, "path": str(p), "view": "PA"}]}
               for i, p in enumerate(paths)]  # fmt: skip
    return Manifest.from_records(records, dataset="nih", labels=[])


def _rates(name: str, paths: list[Path], tmp: Path) -> dict[str, float]:
    from cxrfuse.data.image_hashes import hash_images

    manifest = _manifest(paths)
    hash_images(_manifest(paths[:1]), workers=1)  # imports (scipy.fft) outside the timings
    out: dict[str, float] = {}
    results = {}
    for workers in (1, 2):
        cache = tmp / f"{name}-{workers}.image-hashes.parquet"
        t0 = time.perf_counter()
        hashed, problems, counts = hash_images(manifest, workers=workers, cache=cache)
        out[f"cold_{workers}"] = len(paths) / (time.perf_counter() - t0)
        assert counts.hashed == len(paths) and not problems
        results[workers] = hashed.df["views"].tolist()
        t0 = time.perf_counter()
        _, _, counts = hash_images(manifest, workers=workers, cache=cache)
        out[f"warm_{workers}"] = len(paths) / (time.perf_counter() - t0)
        assert counts.cached == len(paths) and counts.hashed == 0
    assert results[1] == results[2], "workers=1 and workers=2 disagree"
    return out


def _draft_phash(path: Path, side: int) -> int:
    from cxrfuse.data.image_hashes import perceptual_hash

    with Image.open(path) as img:
        img.draft("L", (side, side))
        img.load()
        return perceptual_hash(img.convert("L"))


def _breakdown(paths: list[Path]) -> dict[str, float]:
    from cxrfuse.data.image_hashes import content_hash, perceptual_hash
    from cxrfuse.data.images import decode_native, native_gray8

    t = {"decode": 0.0, "sha": 0.0, "phash_full": 0.0, "draft": 0.0}
    for p in paths:
        t0 = time.perf_counter()
        px = decode_native(p)
        t1 = time.perf_counter()
        content_hash(px)
        t2 = time.perf_counter()
        perceptual_hash(native_gray8(px))
        t3 = time.perf_counter()
        _draft_phash(p, 256)
        t4 = time.perf_counter()
        t["decode"] += t1 - t0
        t["sha"] += t2 - t1
        t["phash_full"] += t3 - t2
        t["draft"] += t4 - t3
    return {k: 1000 * v / len(paths) for k, v in t.items()}


def _decisions(paths: list[Path], tmp: Path) -> dict[str, object]:
    """Full-decode vs draft perceptual hashes: distances and flipped near-duplicate decisions."""
    from cxrfuse.data.image_hashes import NEAR_THRESHOLD, hamming, hash_words, perceptual_hash
    from cxrfuse.data.images import decode_native, native_gray8

    def full(p: Path) -> int:
        return perceptual_hash(native_gray8(decode_native(p)))

    originals_full = [full(p) for p in paths]
    originals_draft = [_draft_phash(p, 256) for p in paths]
    self_dist = [(a ^ b).bit_count() for a, b in zip(originals_full, originals_draft)]
    flips, copy_dists = 0, {"full": [], "draft": []}
    for i, p in enumerate(paths):
        img = Image.open(p).convert("L")
        w, h = img.size
        copies = {"q75": img, "crop3": img.crop((int(w * 0.015), int(h * 0.015), w - int(w * 0.015), h - int(h * 0.015))),
                  "crop5": img.crop((int(w * 0.025), int(h * 0.025), w - int(w * 0.025), h - int(h * 0.025)))}  # fmt: skip
        for name, c in copies.items():
            q = tmp / f"copy-{i}-{name}.jpg"
            c.save(q, quality=75 if name == "q75" else 95)
            df = (full(q) ^ originals_full[i]).bit_count()
            dd = (_draft_phash(q, 256) ^ originals_draft[i]).bit_count()
            copy_dists["full"].append(df)
            copy_dists["draft"].append(dd)
            flips += (df <= NEAR_THRESHOLD) != (dd <= NEAR_THRESHOLD)
    a, b = hash_words(originals_full), hash_words(originals_draft)
    iu = np.triu_indices(len(paths), 1)
    dist_full, dist_draft = hamming(a, a)[iu], hamming(b, b)[iu]
    pair_flips = int(((dist_full <= NEAR_THRESHOLD) != (dist_draft <= NEAR_THRESHOLD)).sum())
    return {"full_vs_draft_same_image": (min(self_dist), float(np.median(self_dist)), max(self_dist)),
            "copy_decision_flips": flips, "copies": len(copy_dists["full"]),
            "copies_found_full": sum(d <= NEAR_THRESHOLD for d in copy_dists["full"]),
            "copies_found_draft": sum(d <= NEAR_THRESHOLD for d in copy_dists["draft"]),
            "distinct_pairs": len(dist_full), "distinct_pair_flips": pair_flips,
            "closest_distinct_full": int(dist_full.min()), "closest_distinct_draft": int(dist_draft.min())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14-sample")
    parser.add_argument("--mimic", type=int, default=60, help="How many MIMIC-sized JPEGs to make.")
    parser.add_argument("--limit", type=int, default=310, help="NIH PNGs to use.")
    args = parser.parse_args()
    pngs = sorted((args.data / "images").glob("*.png"))[: args.limit]
    print(machine_line())
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        big = []
        for p in pngs[: args.mimic]:
            q = tmp / f"{p.stem}.jpg"
            Image.open(p).convert("L").resize(MIMIC_SIZE, Image.Resampling.BICUBIC).save(q, quality=95)
            big.append(q)
        for name, paths in (("nih", pngs), ("mimic", big)):
            r = _rates(name, paths, tmp)
            print(f"{name}: {len(paths)} images; images/s cold 1 worker {r['cold_1']:.1f}, cold 2 workers "
                  f"{r['cold_2']:.1f}, warm 1 {r['warm_1']:.0f}, warm 2 {r['warm_2']:.0f}")
            if name == "mimic":
                for w in (1, 2):
                    print(f"  MIMIC-CXR {MIMIC_IMAGES:,} images, {w} worker(s): cold "
                          f"{MIMIC_IMAGES / r[f'cold_{w}'] / 3600:.1f} h, warm {MIMIC_IMAGES / r[f'warm_{w}']:.0f} s")
        b = _breakdown(big[:20])
        print("per 3056x2544 JPEG, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()))
        print("draft vs full perceptual hash:", _decisions(big, tmp))


if __name__ == "__main__":
    main()
