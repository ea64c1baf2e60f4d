"""How fast fusion heads train on cached embeddings (the issue 4 speed targets).

a) one run, 40 epochs, on 3,955 studies (the IU X-ray size): random embeddings shaped like
   the design-000 design (two 1024-d DenseNet-121 views averaged + a 768-d BioBERT vector,
   concat-MLP 256), no early stopping; or, with ``--config``, a real run config whose
   embeddings are already in the store (e.g. after ``cxrfuse demo``).
b) the 12-run grid of design 004 (configs/mimic-pneumonia-grid.yaml: BCE/focal x full/75:25 x
   image/text/multimodal, late fusion 256-d, batch 64, up to 15 epochs with early stopping) on
   25,000 phantom-sized studies of random embeddings (2048-d ResNet-50 frontal view + 768-d
   report vector; 10 % positives as in MIMIC pneumonia vs no finding; a weak signal in both).

Small heads gain nothing from intra-op threads; on a busy 2-core machine two threads were 17x
slower than one (452 s vs 27 s for a), load average 11), hence ``--threads 1`` by default.
The timings include everything ``train_run`` does: Lightning setup, every epoch with
validation and metrics, predictions, epochs.csv, the curves PNG and the safetensors head.

    .venv/bin/python benchmarks/train_speed.py            # a) and b)
    .venv/bin/python benchmarks/train_speed.py --only a --config configs/iu-binary-views-mean.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrfuse.config import RunConfig, load_experiment_config
from cxrfuse.rundir import RunDir
from cxrfuse.store import StudyArrays
from cxrfuse.training import StoredEmbeddings, train_run

ROOT = Path(__file__).resolve().parents[1]


def random_arrays(n: int, views: int, image_dim: int, text_dim: int, prevalence: float,
                  seed: int = 0) -> StudyArrays:
    """Random study embeddings with a weak label signal in both modalities."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(np.float32)
    image = rng.normal(size=(n, views, image_dim)).astype(np.float32)
    image[:, :, :8] += 0.4 * y[:, None, None]
    text = rng.normal(size=(n, text_dim)).astype(np.float32)
    text[:, :8] += 0.4 * y[:, None]
    split = rng.choice(np.array(["train", "val", "test"], dtype=object), size=n, p=[0.7, 0.1, 0.2])
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    return StudyArrays(ids, ids.copy(), split, y[:, None], ["pneumonia"], image,
                       np.ones((n, views), bool), text, np.ones(n, bool), images_kind="none")


def _train(config: RunConfig, arrays: StudyArrays, run_dir: Path) -> dict:
    """Train on the given arrays; returns run.json as a mapping."""
    source = StoredEmbeddings(config, progress=False, arrays=arrays)
    train_run(config, progress=False, source=source, run_dir=run_dir)
    return RunDir(run_dir).info().model_dump()


def bench_single(config_path: str | None) -> dict:
    if config_path:
        from cxrfuse.config import load_run_config
        from cxrfuse.training.data import build_study_arrays

        config = load_run_config(config_path, ["training.max_epochs=40", "training.early_stopping=null"])
        arrays = build_study_arrays(config, progress=False)
        source = f"store embeddings of {config_path}"
    else:
        config = RunConfig(name="speed-a", model={"kind": "concat-mlp", "hidden": [256]},
                           image={"views": "mean"},
                           training={"max_epochs": 40, "early_stopping": None, "batch_size": 64})
        arrays = random_arrays(3955, 2, 1024, 768, prevalence=0.65)
        source = "random embeddings (2 x 1024-d views, 768-d text)"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = _train(config, arrays, Path(tmp))
        total = time.perf_counter() - start
    return {"benchmark": "a) 40 epochs, one run", "source": source, "studies": len(arrays),
            "train_studies": info["n"]["train"], "epochs": info["fit"]["epochs_run"],
            "seconds": round(total, 2)}


def bench_grid(n: int) -> dict:
    experiment = load_experiment_config(ROOT / "configs" / "mimic-pneumonia-grid.yaml")
    arrays = random_arrays(n, 1, 2048, 768, prevalence=0.10)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for config in experiment.expand():
            t0 = time.perf_counter()
            run_dir = Path(tmp) / config.name
            run_dir.mkdir()
            info = _train(config, arrays, run_dir)
            runs.append({"run": config.name, "epochs": info["fit"]["epochs_run"],
                         "train_studies": info["n"]["train"],
                         "seconds": round(time.perf_counter() - t0, 2)})
            print(f"  {config.name:32s} {runs[-1]['epochs']:2d} epochs "
                  f"{runs[-1]['train_studies']:6d} train studies {runs[-1]['seconds']:7.1f} s",
                  flush=True)
        total = time.perf_counter() - start
    return {"benchmark": "b) 12-run design-004 grid", "studies": n, "runs": runs,
            "seconds": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["a", "b"])
    parser.add_argument("--config", help="a run config whose embeddings are in the store (for a)")
    parser.add_argument("--grid-studies", type=int, default=25_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 is fastest for small heads on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    print(f"machine: {machine}")
    results = []
    if args.only in (None, "a"):
        results.append(bench_single(args.config))
        print(json.dumps(results[-1]))
    if args.only in (None, "b"):
        results.append(bench_grid(args.grid_studies))
        print(f"12-run grid on {args.grid_studies} studies: {results[-1]['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
