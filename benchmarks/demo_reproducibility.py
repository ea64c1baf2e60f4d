"""Is the demo reproducible? Run `cxrfuse demo` under several settings and compare predictions.

Each variant is a clean demo into its own folder with some environment variables set
(torch thread count, or PyTorch / oneDNN / MKL limited to AVX2 kernels, as a CPU without
AVX-512 would run). Every run's ``predictions.parquet`` is compared with the reference
variant's (the first): bit-identical or the largest |difference| in probability, and the
test AUROC / F1 of each run side by side, plus the epoch early stopping kept.

    .venv/bin/python benchmarks/demo_reproducibility.py --out /tmp/demo-repro      # ~4 demos
    .venv/bin/python benchmarks/demo_reproducibility.py --out /tmp/demo-repro --only reference,again
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

VARIANTS: dict[str, dict[str, str]] = {
    "reference": {},
    "again": {},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "4 threads": {"OMP_NUM_THREADS": "4"},
    "AVX2 kernels": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
EXPERIMENT = Path("runs") / "iu-normal-abnormal"


def run_variant(name: str, env: dict[str, str], out: Path) -> Path:
    """A clean demo of one variant (skipped when its report exists)."""
    folder = out / name.replace(" ", "-")
    if not (folder / EXPERIMENT / "report.html").is_file():
        cli = Path(sys.executable).with_name("cxrfuse")
        log = out / f"{folder.name}.log"
        with log.open("w") as handle:
            subprocess.run([str(cli), "demo", "--out", str(folder)], check=True,
                           env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
    return folder


def run_rows(folder: Path) -> dict[str, dict]:
    """Per run: predictions, test AUROC and F1 of the first label, the kept epoch."""
    rows = {}
    for run in sorted((folder / EXPERIMENT / "runs").iterdir()):
        metrics = json.loads((run / "metrics.json").read_text())
        info = json.loads((run / "run.json").read_text())
        label = metrics["labels"][0]
        per_label = metrics["test"]["per_label"][label]
        rows[run.name] = {
            "predictions": pd.read_parquet(run / "predictions.parquet"),
            "auroc": per_label.get("auroc"),
            "f1": per_label.get("f1"),
            "best_epoch": (info.get("fit") or {}).get("best_epoch"),
        }
    return rows


def compare(reference: dict[str, dict], other: dict[str, dict]) -> list[dict]:
    table = []
    for name, ref in reference.items():
        row = other[name]
        a, b = ref["predictions"], row["predictions"]
        numeric = a.select_dtypes("number").columns
        diff = float((a[numeric] - b[numeric]).abs().max().max())
        table.append({
            "run": name,
            "identical": a.equals(b),
            "max |dp|": f"{diff:.2g}",
            "AUROC": f"{ref['auroc']:.3f} -> {row['auroc']:.3f}",
            "F1": f"{ref['f1']:.3f} -> {row['f1']:.3f}",
            "kept epoch": f"{ref['best_epoch']} -> {row['best_epoch']}",
        })  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="", help="comma-separated variant names")
    args = parser.parse_args()
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    folders = {name: run_variant(name, VARIANTS[name], args.out) for name in names}
    reference = run_rows(folders[names[0]])
    for name in names[1:]:
        print(f"\n### {names[0]} vs {name}\n")
        print(pd.DataFrame(compare(reference, run_rows(folders[name]))).to_markdown(index=False))


if __name__ == "__main__":
    main()
