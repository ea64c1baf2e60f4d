"""Embedding cost is linear in the number of images and peak memory is flat.

Draws N small phantom images once (64 px by default: the point is the store's bookkeeping,
not the model), then embeds the first n of them for several n, each in a fresh process,
with a cheap encoder (efficientnet-lite0, offline ImageNet weights, 32 px input), and
reports seconds per 1,000 images and the peak resident memory of the embedding process
(``resource.getrusage``; DataLoader workers reported apart). Target: peak RSS < 3 GB at
50,000 images.

    .venv/bin/python benchmarks/embed_memory.py                 # 50,000 images
    .venv/bin/python benchmarks/embed_memory.py --n 20000 --steps 2000,5000,20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_data(folder: Path, n_images: int, size: int) -> Path:
    """A phantom manifest with ``n_images`` images (two views per study)."""
    from _common import phantom_manifest

    path = folder / "manifest.parquet"
    if path.is_file():
        return path
    records = [
        {
            "study_id": f"S{i:06d}",
            "patient_id": f"P{i:06d}",
            "indication": f"cough {i}",
            "split": "train",
            "labels": {"abnormal": i % 2},
        }
        for i in range(-(-n_images // 2))
    ]
    phantom_manifest(folder, records, ["abnormal"], size=size, progress=True)
    return path


def child(manifest_path: str, n: int, store: str, args: argparse.Namespace) -> dict:
    """Embed the studies holding the first ``n`` images; runs in its own process."""
    import torch

    from cxrfuse.data.manifest import read_manifest
    from cxrfuse.encoders import create_image_encoder
    from cxrfuse.store import embed_images

    torch.set_num_threads(os.cpu_count() or 1)
    manifest = read_manifest(manifest_path)
    manifest = manifest.replace(df=manifest.df.iloc[: n // 2].reset_index(drop=True))
    encoder = create_image_encoder(args.encoder, weights="default", input_size=args.input_size)
    start = time.perf_counter()
    store = embed_images(
        manifest, encoder, store, batch_size=args.batch_size, num_workers=args.workers,
        progress=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    kib = 1024
    return {
        "n_images": len(store),
        "seconds": elapsed,
        "s_per_1k": 1000 * elapsed / max(1, len(store)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="largest number of images")
    parser.add_argument("--steps", default="", help="comma-separated n values (default: 3 steps)")
    parser.add_argument("--image-size", type=int, default=64, help="phantom PNG side (px)")
    parser.add_argument("--input-size", type=int, default=32, help="encoder input side (px)")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--data", type=Path, default=None, help="reuse phantoms in this folder")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST", "N", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2], args)))
        return

    steps = [int(s) for s in args.steps.split(",") if s] or [args.n // 10, args.n // 2, args.n]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "phantoms"
        start = time.perf_counter()
        manifest_path = make_data(data, max(steps), args.image_size)
        print(f"phantoms: {max(steps)} images of {args.image_size} px "
              f"({time.perf_counter() - start:.0f} s to draw)", flush=True)  # fmt: skip
        rows = []
        for n in steps:
            command = [sys.executable, __file__, "--child", str(manifest_path), str(n),
                       str(Path(tmp) / f"store-{n}")]  # fmt: skip
            for name in ("encoder", "input_size", "batch_size", "workers"):
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    import torch

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"torch {torch.__version__}; encoder {args.encoder} at {args.input_size} px, "
          f"batch {args.batch_size}, {args.workers} worker(s)")  # fmt: skip
    print("| images | seconds | s / 1k images | peak RSS (MB) | peak worker RSS (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n_images']:,} | {r['seconds']:.1f} | {r['s_per_1k']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_worker_rss_mb']:.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
