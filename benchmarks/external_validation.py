"""External validation end to end: a head trained on IU-labelled phantoms, scored on the real
NIH ChestX-ray14 sample (310 radiographs) ingested through ``cxrfuse ingest csv``.

What it shows: the cost of each step (ingest, embedding the external set through the store,
the rerun that reuses it, metrics with intervals and subgroups), and what external validation
is for: a model that looks fine on its internal test set (synthetic phantoms) and says nothing
on real radiographs. Image-only run: EfficientNet-Lite0 with its ImageNet weights (offline
package), mean of the views, 224 px.

    .venv/bin/python benchmarks/external_validation.py [--studies 200] [--n-boot 500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrfuse.config import RunConfig, load_table_spec
from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.data.splits import assign_splits
from cxrfuse.data.table_ingest import ingest_table
from cxrfuse.evaluation import evaluate_external
from cxrfuse.evaluation.external import side_by_side_frame
from cxrfuse.evaluation.subgroups import subgroup_table
from cxrfuse.training import train_run

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14-sample"
LABELS = ["abnormal", "Cardiomegaly", "Pleural Effusion"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        iu, _ = ingest_iu_xray()
        df = iu.df
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(np.flatnonzero(df["label_abnormal"].notna()), args.studies, replace=False))
        small = iu.replace(df=df.iloc[rows].reset_index(drop=True), tasks={"three": LABELS})
        small = assign_splits(small, (0.6, 0.2, 0.2), seed=0, task="abnormal")
        make_phantoms(small, root / "phantoms", PhantomConfig(size=256, seed=0, lateral=False), progress=False)
        config = RunConfig(
            name="image", runs_dir=str(root / "runs"),
            data={"manifest": str(root / "phantoms" / "manifest.parquet"), "task": "three",
                  "store": str(root / "store")},
            model={"modalities": ["image"]},
            image={"encoder": "efficientnet-lite0", "weights": "default", "input_size": 224},
            training={"max_epochs": 30}, evaluation={"n_boot": args.n_boot},
        )  # fmt: skip
        start = time.perf_counter()
        run = train_run(config, progress=False)
        times["train (embed phantoms + fit)"] = time.perf_counter() - start
        spec = load_table_spec(None, {
            "table": str(NIH / "labels.csv"), "images": str(NIH / "images"), "dataset": "nih-cxr14",
            "image": "Image Index", "patient": "Patient ID", "view": "View Position",
            "labels": {n: {"column": "Finding Labels", "positive": [n], "delimiter": "|"}
                       for n in ("Effusion", "Cardiomegaly", "No Finding")},
            "demographics": {"age": "Patient Age", "sex": "Patient Gender"},
        })  # fmt: skip
        start = time.perf_counter()
        nih, log = ingest_table(spec)
        path = nih.save(root / "nih.parquet")
        times["ingest csv (310 rows)"] = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluate_external(run, path, n_boot=args.n_boot, recalibration="platt")
        times["evaluate --on (embed 310 PNGs, metrics, subgroups, recalibration)"] = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_external(run, path, root / "again", n_boot=args.n_boot)
        times["evaluate --on again (store reused)"] = time.perf_counter() - start
    print(json.dumps({k: round(v, 1) for k, v in times.items()}, indent=2))
    print(f"ingest problems: {log.counts()}")
    print(side_by_side_frame(result["side_by_side"]).to_markdown(index=False))
    table = subgroup_table(result["subgroups"])
    print(table[table["attribute"].isin(["sex", "age band", "view"])].to_markdown(index=False))
    r = result["recalibration"]
    print("ECE before/after Platt:", {n: (round(r["before"]["per_label"][n]["ece"], 3),
                                         round(r["after"]["per_label"][n]["ece"], 3)) for n in result["labels"]})
    for warning in r["warnings"]:
        print("recalibration:", warning)


if __name__ == "__main__":
    main()
