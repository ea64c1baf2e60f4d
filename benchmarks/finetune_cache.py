"""Fine-tuning with and without the decoded-image cache, on the same phantoms and machine.

Trains the same image-only fine-tuning run twice on full-resolution phantom PNGs: decoding
every view in every epoch, then with ``data.image_cache`` (decoded once, before training,
included in the timing). Prints seconds per run and per epoch and the speed-up.

    .venv/bin/python benchmarks/finetune_cache.py --studies 160 --image-size 1024 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def make_manifest(folder: Path, studies: int, image_size: int) -> Path:
    """``studies`` one-patient studies (PA + lateral phantoms), 60/20/20 train/val/test."""
    from _common import phantom_manifest

    splits = ["train", "train", "train", "val", "test"]
    records = [
        {"study_id": f"s{i:05d}", "patient_id": f"p{i:05d}", "split": splits[i % 5],
         "labels": {"Cardiomegaly": i % 2},
         "views": [{"image_id": f"i{i}", "path": None, "view": "PA"}]}
        for i in range(studies)
    ]  # fmt: skip
    phantom_manifest(folder, records, ["Cardiomegaly"], size=image_size, dataset="test")
    return folder / "manifest.parquet"


def run(manifest: Path, out: Path, epochs: int, input_size: int, cache: Path | None) -> float:
    from cxrfuse.config import validate_run
    from cxrfuse.training.runner import train_run

    config = validate_run({
        "name": "cached" if cache else "plain", "runs_dir": str(out), "seed": 0,
        "data": {"manifest": str(manifest), "task": "Cardiomegaly", "store": str(out / "store"),
                 "image_cache": str(cache) if cache else None},
        "image": {"encoder": "efficientnet-lite0", "input_size": input_size, "views": "mean"},
        "model": {"kind": "concat-mlp", "modalities": ["image"], "hidden": [64]},
        "training": {"mode": "finetune", "max_epochs": epochs, "batch_size": 16,
                     "early_stopping": None},
        "finetune": {"augment": {"hflip": 0.5, "rotate_deg": 5}},
    })  # fmt: skip
    start = time.perf_counter()
    train_run(config, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=160)
    parser.add_argument("--image-size", type=int, default=1024, help="phantom PNG side (px)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = make_manifest(root / "phantoms", args.studies, args.image_size)
        plain = run(manifest, root / "plain", args.epochs, args.input_size, None)
        cached = run(manifest, root / "cached", args.epochs, args.input_size, root / "cache")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; {args.studies} studies x 2 views of {args.image_size} px, "
          f"efficientnet-lite0 at {args.input_size} px, {args.epochs} epochs, val + test "
          "embedded after training (both runs)")  # fmt: skip
    print("\n| run | seconds | per epoch |\n|---|---:|---:|")
    for name, seconds in (("decode every epoch", plain), ("data.image_cache", cached)):
        print(f"| {name} | {seconds:.1f} | {seconds / args.epochs:.1f} |")
    print(f"\nspeed-up: {plain / cached:.2f}x (the cached run includes filling the cache)")


if __name__ == "__main__":
    main()
