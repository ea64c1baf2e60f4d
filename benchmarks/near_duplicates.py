"""Near-duplicate detector (cxrfuse.data.image_hashes) on real radiographs: recall, false matches, time.

Every image of the NIH ChestX-ray14 sample (310 real radiographs, 512 px PNG) is copied with
each transform below; recall is the share of copies whose perceptual-hash distance to their
original is within the threshold (and, for the lossless ones, whose content hash is equal).
The false-match rate is the share of the ~48k pairs of distinct originals within the
threshold. Distinct originals of one patient are reported apart (the sample has none when
every patient appears once). Time: decoding plus both hashes per original file.

    PYTHONPATH=src .venv/bin/python benchmarks/near_duplicates.py [--data ../shared/data/nih-cxr14-sample] [--limit N]
"""

from __future__ import annotations

import argparse
import io
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from cxrfuse.data.image_hashes import (
    NEAR_THRESHOLD,
    PHASH_LOW,
    content_hash,
    hamming,
    hash_file,
    hash_words,
    perceptual_hash,
)
from cxrfuse.data.images import decode_native, native_gray8

THRESHOLDS = (16, 24, 32, 40, 48, 56, 64)


def _png(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(quality: int) -> Callable[[Image.Image], bytes]:
    def f(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    return f


def _resize(scale: float) -> Callable[[Image.Image], bytes]:
    return lambda img: _png(img.resize((round(img.width * scale), round(img.height * scale)),
                                       Image.Resampling.LANCZOS))


def _crop(fraction: float) -> Callable[[Image.Image], bytes]:
    """``fraction`` of the width and of the height cut off, half at each edge."""
    def f(img: Image.Image) -> bytes:
        dx, dy = round(img.width * fraction / 2), round(img.height * fraction / 2)
        return _png(img.crop((dx, dy, img.width - dx, img.height - dy)))
    return f


def _sixteen(img: Image.Image) -> bytes:
    wide = np.asarray(img, dtype=np.uint16) * 257
    return _png(Image.fromarray(wide))


def _brighter(img: Image.Image) -> bytes:
    return _png(Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + 10, 0, 255).astype(np.uint8)))


TRANSFORMS: dict[str, tuple[Callable[[Image.Image], bytes], bool]] = {
    # name: (transform, lossless: the content hash must match too)
    "byte-identical copy": (lambda img: b"", True),  # replaced by the file bytes below
    "PNG re-saved (compress 1)": (lambda img: _png(img, compress_level=1), True),
    "JPEG q95": (_jpeg(95), False),
    "JPEG q75": (_jpeg(75), False),
    "JPEG q50": (_jpeg(50), False),
    "resized 50 %": (_resize(0.5), False),
    "resized 25 %": (_resize(0.25), False),
    "cropped 2 % (1 % per edge)": (_crop(0.02), False),
    "cropped 3 %": (_crop(0.03), False),
    "cropped 5 %": (_crop(0.05), False),
    "16-bit PNG (x257)": (_sixteen, False),
    "brightness +10 levels": (_brighter, False),
    "mirrored (not a copy)": (lambda img: _png(ImageOps.mirror(img)), False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "nih-cxr14-sample")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N images (a quick check).")
    args = parser.parse_args()
    labels = pd.read_csv(args.data / "labels.csv").head(args.limit)
    paths = [args.data / "images" / name for name in labels["Image Index"]]
    start = time.perf_counter()
    hashes = [hash_file(p) for p in paths]
    per_image = (time.perf_counter() - start) / len(paths)
    originals = hash_words([int(h["phash"], 16) for h in hashes])
    contents = [h["content_hash"] for h in hashes]

    rows = []
    for name, (transform, lossless) in TRANSFORMS.items():
        dist, same = [], 0
        for path, h, ph in zip(paths, contents, originals):
            data = path.read_bytes() if name == "byte-identical copy" else transform(Image.open(path).convert("L"))
            pixels = decode_native(io.BytesIO(data))  # type: ignore[arg-type]
            same += content_hash(pixels) == h
            copy = hash_words([perceptual_hash(native_gray8(pixels))])
            dist.append(int(hamming(copy, ph[None, :])[0, 0]))
        d = np.array(dist)
        rows.append({"copy": name, "exact (content hash)": f"{same}/{len(d)}",
                     "median distance": int(np.median(d)), "max": int(d.max()),
                     **{f"<= {t}": f"{np.mean(d <= t):.3f}" for t in THRESHOLDS}})  # fmt: skip
    recall = pd.DataFrame(rows)

    pair = hamming(originals, originals)
    iu = np.triu_indices(len(originals), 1)
    distinct = pair[iu]
    patients = labels["Patient ID"].astype(str).to_numpy()
    same_patient = patients[iu[0]] == patients[iu[1]]
    exact_pairs = sum(contents[i] == contents[j] for i, j in zip(*iu))
    false = pd.DataFrame([{"pairs": kind, "n": int(mask.sum()),
                           "min distance": int(distinct[mask].min()) if mask.any() else "-",
                           **{f"<= {t}": int((distinct[mask] <= t).sum()) for t in THRESHOLDS}}
                          for kind, mask in (("distinct patients", ~same_patient),
                                             ("same patient", same_patient))])  # fmt: skip
    print(f"# near duplicates: {len(paths)} NIH images, {platform.machine()}, {PHASH_LOW * PHASH_LOW}-bit perceptual hash, threshold in use {NEAR_THRESHOLD}")
    print(f"decode + content hash + perceptual hash: {per_image * 1000:.1f} ms per image (512 px PNG)")
    print(f"exact (content-hash) pairs among the originals: {exact_pairs}")
    print("\nrecall: share of copies within each Hamming distance of their original\n")
    print(recall.to_markdown(index=False))
    print(f"\nfalse matches: pairs of distinct originals within each distance "
          f"(of {len(distinct):,}; rate at the threshold {NEAR_THRESHOLD}: "
          f"{np.mean(distinct <= NEAR_THRESHOLD):.2e})\n")
    print(false.to_markdown(index=False))
    q = np.percentile(distinct, [0.1, 1, 5, 50])
    print(f"\ndistances between distinct originals: 0.1 % {q[0]:.0f}, 1 % {q[1]:.0f}, 5 % {q[2]:.0f}, median {q[3]:.0f}")


if __name__ == "__main__":
    main()
