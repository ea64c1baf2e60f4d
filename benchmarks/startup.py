"""Start-up CPU time of every CLI verb, side by side with ``python -c "import torch"``.

For each verb, in fresh subprocesses (``--repeats`` times, median of user + sys CPU seconds of
the child):

- ``help``: ``cxrfuse VERB --help`` (the CLI alone: Typer, Rich, the verb modules);
- ``start-up``: the CLI plus the library imports the verb's body makes before it does any
  work (the code a user waits for before ``predict`` reads its first image);

and ``import torch`` in the same run, so the ratio column holds on a loaded machine too.

    python benchmarks/startup.py                      # every verb, 3 repeats
    python benchmarks/startup.py --verbs predict,serve --repeats 5 --json out.json
    python benchmarks/startup.py --packages           # issue 22's goal: the packages alone

``--packages`` measures ``import cxrfuse.PACKAGE`` alone for the packages of issue 22's goal
(at most 1.5x ``import torch`` each), in the same run as ``import torch``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from _common import machine_line

ROOT = Path(__file__).resolve().parents[1]

VERBS: dict[str, tuple[list[str], str]] = {
    # verb: (argv after `cxrfuse`, the imports its body makes before any work); pipeline order
    "ingest iu-xray": (["ingest", "iu-xray"],
                       ("from cxrfuse.data.iu_xray import ingest_iu_xray\n"
                       "from cxrfuse.data.labels import parse_findings")),
    "split": (["split"], ("from cxrfuse.data import read_manifest\n"
                         "from cxrfuse.data.splits import assign_splits\n"
                         "from cxrfuse.stats import render_summary")),
    "stats": (["stats"], ("from cxrfuse.data import read_manifest\n"
                         "from cxrfuse.runtime import environment_info\n"
                         "from cxrfuse.stats import manifest_summary\n"
                         "from cxrfuse.text import TextConfig, audit_leakage")),
    "phantoms": (["phantoms"], "from cxrfuse.data.phantoms import make_phantoms"),
    "embed": (["embed"], "from cxrfuse.store import embed"),
    "train": (["train"], ("from cxrfuse.config import load_run_config\n"
                         "from cxrfuse.training import train_run")),
    "experiment": (["experiment"], "from cxrfuse.training import train_experiment"),
    "predict": (["predict"], "from cxrfuse.inference import Predictor"),
    "evaluate": (["evaluate"], ("from cxrfuse.evaluation import evaluate_run\n"
                               "from cxrfuse.rundir import RunDir")),
    "report": (["report"], "from cxrfuse.reporting import write_report"),
    "explain": (["explain"], "from cxrfuse.explain.runs import explain_run"),
    "serve": (["serve"], "from cxrfuse.serve import serve"),
    "clip train": (["clip", "train"], "from cxrfuse.clip.train import train_clip"),
    "generate score": (["generate", "score"], "from cxrfuse.generation import score_files"),
    "demo": (["demo"], "from cxrfuse.demo import run_demo"),
}  # fmt: skip
PACKAGES = ("inference", "serve", "evaluation")
"""The packages issue 22 holds to 1.5x the CPU time of ``import torch``."""
HEAVY = ("lightning", "torchmetrics", "transformers", "torchvision.models", "sklearn", "matplotlib",
         "scipy", "timm", "pandas", "fastapi")
"""Third-party modules reported when an import loads them."""
TRAINS = {"train", "experiment", "clip train", "demo"}
"""Verbs that train a model (Lightning at start-up is expected there)."""


def cpu_seconds(code: str | None = None, argv: list[str] | None = None) -> float:
    """User + sys CPU seconds of one fresh ``python -c CODE`` (or ``python -m cxrfuse.cli
    ARGV``) child process."""
    cmd = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m",
                                                                   "cxrfuse.cli", *(argv or [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[-1]!r} failed: {proc.stderr[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_cpu(repeats: int, **kwargs: object) -> float:
    return statistics.median(cpu_seconds(**kwargs) for _ in range(repeats))  # type: ignore[arg-type]


def measure(verbs: list[str], repeats: int) -> dict[str, object]:
    """The table's figures: torch's import first, then every verb."""
    load_before = os.getloadavg()[0]
    torch_s = median_cpu(repeats, code="import torch")
    rows = []
    for verb in verbs:
        argv, imports = VERBS[verb]
        help_s = median_cpu(repeats, argv=[*argv, "--help"])
        start_s = median_cpu(repeats, code=f"import cxrfuse.cli\n{imports}")
        modules = subprocess.run(
            [sys.executable, "-c", (f"import sys, cxrfuse.cli\n{imports}\n"
             "print(' '.join(m for m in ('lightning', 'torchmetrics', 'transformers', "
             "'torchvision.models', 'sklearn', 'matplotlib', 'scipy', 'timm') if m in sys.modules))")],
            capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()  # fmt: skip
        rows.append({"verb": verb, "help_cpu_s": round(help_s, 2), "startup_cpu_s": round(start_s, 2),
                     "ratio_to_torch": round(start_s / torch_s, 2), "trains": verb in TRAINS,
                     "heavy_modules": modules})  # fmt: skip
        print(f"{verb:>16}: help {help_s:5.2f} s, start-up {start_s:5.2f} s "
              f"({start_s / torch_s:.2f}x torch) {' '.join(modules)}", flush=True)
    return {"machine": machine_line(), "load_average_before": round(load_before, 1),
            "load_average_after": round(os.getloadavg()[0], 1), "repeats": repeats,
            "import_torch_cpu_s": round(torch_s, 2), "rows": rows}  # fmt: skip


def measure_packages(packages: list[str], repeats: int) -> dict[str, object]:
    """``import torch``, then ``import cxrfuse.PACKAGE`` for each package, fresh processes."""
    load_before = os.getloadavg()[0]
    torch_s = median_cpu(repeats, code="import torch")
    rows = []
    for package in packages:
        code = f"import cxrfuse.{package}"
        cpu = median_cpu(repeats, code=code)
        modules = subprocess.run(
            [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"],
            capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()  # fmt: skip
        rows.append({"package": package, "cpu_s": round(cpu, 2), "ratio_to_torch": round(cpu / torch_s, 2),
                     "heavy_modules": modules})  # fmt: skip
        print(f"{package:>16}: {cpu:5.2f} s ({cpu / torch_s:.2f}x torch) {' '.join(modules)}", flush=True)
    return {"machine": machine_line(), "load_average_before": round(load_before, 1),
            "load_average_after": round(os.getloadavg()[0], 1), "repeats": repeats,
            "import_torch_cpu_s": round(torch_s, 2), "packages": rows}  # fmt: skip


def markdown(result: dict[str, object]) -> str:
    head = (f"`import torch`: {result['import_torch_cpu_s']:.2f} s CPU (median of {result['repeats']}); "
            f"{result['machine']}, load average {result['load_average_before']} -> "
            f"{result['load_average_after']}.")
    if "packages" in result:
        lines = [head, "", "| import | CPU s | x `import torch` | heavy modules loaded |", "|---|---:|---:|---|"]
        lines += [f"| `cxrfuse.{row['package']}` | {row['cpu_s']:.2f} | {row['ratio_to_torch']:.2f} | "
                  f"{', '.join(row['heavy_modules']) or '-'} |" for row in result["packages"]]  # type: ignore[attr-defined]
        return "\n".join(lines)
    lines = [(f"`import torch`: {result['import_torch_cpu_s']:.2f} s CPU "
             f"(median of {result['repeats']}); {result['machine']}, load average "
             f"{result['load_average_before']} -> {result['load_average_after']}."), "",
             "| verb | `--help` CPU s | start-up CPU s | x `import torch` | heavy modules loaded |",
             "|---|---:|---:|---:|---|"]  # fmt: skip
    for row in result["rows"]:  # type: ignore[attr-defined]
        mark = " (trains)" if row["trains"] else ""
        lines.append(f"| `{row['verb']}`{mark} | {row['help_cpu_s']:.2f} | {row['startup_cpu_s']:.2f}"
                     f" | {row['ratio_to_torch']:.2f} | {', '.join(row['heavy_modules']) or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verbs", default=",".join(VERBS), help="comma-separated, as in VERBS")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--packages", action="store_true",
                        help=f"measure `import cxrfuse.X` for {', '.join(PACKAGES)} instead of the verbs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    verbs = [v.strip() for v in args.verbs.split(",") if v.strip()]
    unknown = [v for v in verbs if v not in VERBS]
    if unknown:
        parser.error(f"unknown verb(s) {unknown}; choose from {list(VERBS)}")
    if args.packages:
        result = measure_packages(list(PACKAGES), max(1, args.repeats))
    else:
        result = measure(verbs, max(1, args.repeats))
    print()
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
