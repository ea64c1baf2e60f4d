"""CLIP on phantoms: val InfoNCE before/after, retrieval R@1/5/10 vs chance, probe and zero-shot.

Builds a phantom set from the IU X-ray reports torchxrayvision ships (real reports, synthetic
label-conditioned images), trains the CLIP model with the offline encoders (efficientnet-lite0
+ all-MiniLM-L6-v2), then runs retrieval, zero-shot and the linear probe. Beside retrieval it
prints the *label ceiling* that ``run_retrieval`` computes: the expected Recall@K of an oracle
that knows the labels (phantom images carry nothing of a report but its labels).

    .venv/bin/python benchmarks/clip_phantoms.py --studies 1000 --size 128 --epochs 10
    # the RESULTS.md setting: every study that draws a lesion, 256 px, image tower locked (LiT)
    .venv/bin/python benchmarks/clip_phantoms.py --lesions-only --studies 0 --size 256 \
        --epochs 20 --freeze-image-blocks all --freeze-text-blocks 4 --lr 2e-5 --head-lr 1e-4

Writes ``<out>/clip_phantoms.json`` and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cxrfuse.clip.probe import run_probe
from cxrfuse.clip.retrieval import run_retrieval
from cxrfuse.clip.train import train_clip
from cxrfuse.clip.zero_shot import run_zero_shot
from cxrfuse.config.clip import validate_clip_config
from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.data.phantoms import PhantomConfig, lesion_kind, make_phantoms
from cxrfuse.data.splits import assign_splits


def build_phantoms(out: Path, studies: int, size: int, lesions_only: bool, seed: int) -> Path:
    manifest, _ = ingest_iu_xray()
    df = manifest.df
    if lesions_only:
        drawn = [c for n, c in zip(manifest.labels, manifest.label_columns) if lesion_kind(n)]
        df = df[(df[drawn].fillna(0) > 0).any(axis=1)]
    if studies and studies < len(df):
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), studies, replace=False))]
    manifest = assign_splits(manifest.replace(df=df.copy()), (0.7, 0.1, 0.2), seed=seed,
                             task="multilabel")  # fmt: skip
    make_phantoms(manifest, out / "phantoms", PhantomConfig(size=size, lateral=False))
    return out / "phantoms" / "manifest.parquet"


def blocks(value: str) -> int | str:
    """A freeze_blocks value: a number of blocks, or 'all'."""
    return value if value == "all" else int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmark-output/clip"))
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--freeze-image-blocks", type=blocks, default=0,
                        help="N or 'all' (lock the tower: features once, projection trains)")
    parser.add_argument("--freeze-text-blocks", type=blocks, default=4, help="N or 'all'")
    parser.add_argument("--lesions-only", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = build_phantoms(args.out, args.studies, args.size, args.lesions_only, args.seed)
    config = validate_clip_config({
        "name": "clip-phantoms", "runs_dir": str(args.out / "runs"), "seed": args.seed,
        "offline": True,
        "data": {"manifest": str(manifest_path), "task": "multilabel"},
        "image": {"input_size": args.size, "freeze_blocks": args.freeze_image_blocks},
        "text": {"max_length": 128, "freeze_blocks": args.freeze_text_blocks},
        "training": {"batch_size": args.batch_size, "max_epochs": args.epochs, "lr": args.lr,
                     "head_lr": args.head_lr, "progress": True},
        "probe": {"task": "multilabel" if args.lesions_only else "normal-abnormal", "n_boot": 200},
    })  # fmt: skip
    t0 = time.perf_counter()
    run_dir = train_clip(config)
    train_s = time.perf_counter() - t0
    info = json.loads((run_dir / "run.json").read_text())
    retrieval = run_retrieval(run_dir)
    ceiling = retrieval["label_ceiling"]
    zero_shot = run_zero_shot(run_dir)
    probe = run_probe(run_dir)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "studies": info["n"], "size": args.size, "lesions_only": args.lesions_only,
        "locked": info["locked"], "lr": args.lr, "head_lr": args.head_lr,
        "epochs": args.epochs, "kept_epoch": info["kept_epoch"], "train_s": round(train_s, 1),
        "val_loss": info["val_loss"], "retrieval": retrieval, "label_ceiling": ceiling,
        "zero_shot": {k: v["auroc"] for k, v in zero_shot["labels"].items()},
        "zero_shot_macro": zero_shot["macro_auroc"],
        "probe": {k: {"auroc": v["headline"]["auroc"], "ci": v["ci"].get("auroc")}
                  for k, v in probe["probes"].items()},
    }  # fmt: skip
    (args.out / "clip_phantoms.json").write_text(json.dumps(result, indent=2, default=str))
    ks = config.retrieval.ks
    print(f"\n## CLIP on phantoms ({result['machine']})\n")
    print(f"train/val/test {info['n']}, {args.size} px, {args.epochs} epochs "
          f"(kept {info['kept_epoch']}), {train_s:.0f} s")
    print(f"val InfoNCE: {info['val_loss']['before']:.3f} -> {info['val_loss']['after']:.3f}\n")
    print("| retrieval (test) | " + " | ".join(f"R@{k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    rows = (("image -> report", retrieval["image_to_text"]),
            ("report -> image", retrieval["text_to_image"]),
            ("label ceiling", ceiling["image_to_text"]), ("chance", retrieval["chance"]))
    for name, values in rows:
        print(f"| {name} | " + " | ".join(f"{values[k]:.3f}" for k in ks) + " |")
    print(f"\nzero-shot macro AUROC {zero_shot['macro_auroc']}")
    for k, v in result["probe"].items():
        print(f"probe {k}: AUROC {v['auroc']:.3f}")


if __name__ == "__main__":
    main()
