"""Every stage of cxrfuse at MIMIC-CXR scale on one machine (issue 24): CPU time, wall time and
peak RSS per stage, and how they grow with the number of studies.

A synthetic MIMIC-CXR-JPG tree of N studies is written with the helpers of the test fixture
``tests/data/mimic_tree.py`` (its CSV / gzip / study-folder layout and CheXpert columns): about
3.5 studies a patient, 1-4 views a study (PA, AP, LATERAL), tiny identical JPEG files, CheXpert
labels drawn at MIMIC-like prevalences and reports assembled from sentence pools that follow
the labels (so masking and the audit have real work). The texts and labels are synthetic;
the code paths are the real ones. Stages, each in a fresh child process (so peak RSS is the
stage's own; it includes the interpreter and imports, ``rss_before_mb`` is the child's RSS
before the stage's work):

- ``ingest``: ``ingest_mimic_cxr`` (all views) + writing the manifest;
- ``split``: ``assign_splits`` (patient level, the 14-label task) + writing it;
- ``stats``: the default ``cxrfuse stats`` leakage audit: findings+impression, masking on, one
  audit per task (15 tasks); ``audit_ms_per_report`` is its CPU time per study with a report;
- ``assembly`` (``mean`` of views), ``assembly-attention`` (every view, one study of 12 views)
  and ``training``: ``benchmarks/_head_training.py`` (``measure_assembly``, ``measure``:
  ``assembly_rss_ratio``, ``attention_rss_ratio``, ``train_ratio``), skipped with a note if
  absent;
- ``evaluation``: ``bootstrap_ci`` (1,000 replicates, 14 labels) on a test set of 20 % of N;
- ``retrieval``: ``retrieve`` + ``nearest_reports`` as ``generate retrieval`` runs them, the
  bank the training reports with random 1024-d vectors, 3,000 queries, k = 5, medoid.

    python benchmarks/scale.py                       # 10k, 50k, 228k studies
    python benchmarks/scale.py --studies 10000 50000 --json scale.json
    python benchmarks/scale.py --dry-run             # 2k studies, every stage, about a minute
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine_line

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (10_000, 50_000, 228_000)
DRY_RUN_SIZE = 2_000
STAGES = ("ingest", "split", "stats", "assembly", "assembly-attention", "training", "evaluation",
          "retrieval")
PREVALENCE = {  # share of studies positive per CheXpert label, roughly MIMIC-CXR's
    "Atelectasis": 0.20, "Cardiomegaly": 0.20, "Consolidation": 0.05, "Edema": 0.12,
    "Enlarged Cardiomediastinum": 0.03, "Fracture": 0.02, "Lung Lesion": 0.03,
    "Lung Opacity": 0.23, "Pleural Effusion": 0.24, "Pleural Other": 0.01, "Pneumonia": 0.07,
    "Pneumothorax": 0.05, "Support Devices": 0.29,
}
POSITIVE = {
    "Atelectasis": ["Streaky opacities at the left base likely reflect atelectasis.",
                    "Mild bibasilar atelectasis."],
    "Cardiomegaly": ["The heart is moderately enlarged.", "Moderate cardiomegaly is unchanged."],
    "Consolidation": ["Focal consolidation in the right lower lobe."],
    "Edema": ["Mild pulmonary vascular congestion and interstitial edema."],
    "Enlarged Cardiomediastinum": ["The mediastinum is widened."],
    "Fracture": ["Healed left rib fractures are again noted."],
    "Lung Lesion": ["A 1.2 cm nodule projects over the right upper lobe."],
    "Lung Opacity": ["Patchy opacity in the left lower lobe."],
    "Pleural Effusion": ["Small right pleural effusion.", "Moderate bilateral pleural effusions."],
    "Pleural Other": ["Biapical pleural thickening."],
    "Pneumonia": ["Findings concerning for pneumonia."],
    "Pneumothorax": ["Small left apical pneumothorax."],
    "Support Devices": ["Endotracheal tube terminates 4 cm above the carina.",
                        "Right internal jugular central venous catheter tip in the SVC."],
}
NEGATIVE = ["No pleural effusion or pneumothorax.", "No focal consolidation.",
            "Heart size is normal.", "The lungs are clear.", "No acute osseous abnormality.",
            "Mediastinal and hilar contours are unremarkable.", "No pulmonary edema."]
OTHER = ["Comparison is made to the prior study from ___.", "The patient is rotated.",
         "Degenerative changes of the thoracic spine.", "Surgical clips in the upper abdomen.",
         "Lung volumes are low.", "Dr. ___ was notified at 10:30."]


def _fixture() -> Any:
    """``tests/data/mimic_tree.py`` as a module (the tests folder is not a package)."""
    path = ROOT / "tests" / "data" / "mimic_tree.py"
    spec = importlib.util.spec_from_file_location("cxrfuse_mimic_tree_fixture", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ---------------------------------------------------------------------------- the tree
def write_tree(root: Path, n: int, seed: int = 0) -> Path:
    """A synthetic MIMIC-CXR-JPG tree of ``n`` studies under ``root`` (kept when complete)."""
    import zipfile

    import numpy as np

    fx = _fixture()
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    subjects = 10_000_000 + np.sort(rng.integers(0, max(1, n * 2 // 7), size=n))
    studies = 50_000_000 + np.arange(n)
    views = rng.choice([1, 2, 3, 4], size=n, p=[0.45, 0.46, 0.07, 0.02])
    labels = list(fx.CHEXPERT)
    raw = np.full((n, len(labels)), "", dtype=object)
    positive = np.zeros((n, len(labels)), dtype=bool)
    for j, name in enumerate(labels):
        if name in PREVALENCE:
            draw = rng.random(n)
            positive[:, j] = draw < PREVALENCE[name]
            raw[positive[:, j], j] = "1.0"
            raw[(draw >= PREVALENCE[name]) & (draw < PREVALENCE[name] + 0.03), j] = "-1.0"
            raw[(draw > 0.9), j] = "0.0"
    none = ~positive.any(axis=1)
    raw[none, labels.index("No Finding")] = "1.0"
    jpeg = root / "tiny.jpg"
    fx._jpeg(jpeg, 128)
    data = jpeg.read_bytes()
    meta, split, chexpert, sections = [], [], [], []
    kinds = ["train"] * 98 + ["validate", "test"]
    for i in range(n):
        subject, study = int(subjects[i]), int(studies[i])
        folder = root / "files" / fx._study_dir(subject, study)
        folder.mkdir(parents=True, exist_ok=True)
        part = kinds[int(rng.integers(0, 100))]
        for v in range(int(views[i])):
            dicom = f"{study:x}-{v}"
            view = ("PA", "LATERAL", "AP", "LL")[v]
            (folder / f"{dicom}.jpg").write_bytes(data)
            meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},3056,2544,"
                        f"2150{i % 10}506,213014.531")  # fmt: skip
            split.append([dicom, str(study), str(subject), part])
        chexpert.append([str(subject), str(study), *raw[i]])
        found = [s for j, name in enumerate(labels) if positive[i, j]
                 for s in POSITIVE[name][: 1 + int(rng.integers(0, len(POSITIVE[name])))]]
        calm = [NEGATIVE[k] for k in rng.choice(len(NEGATIVE), size=3, replace=False)]
        extra = [OTHER[k] for k in rng.choice(len(OTHER), size=2, replace=False)]
        impression = found[0] if found else "No acute cardiopulmonary process."
        sections.append((subject, study, " ".join([extra[0], *found, *calm, extra[1]]), impression))
    header = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,"
              "Columns,StudyDate,StudyTime")  # fmt: skip
    fx._write_text(root / "mimic-cxr-2.0.0-metadata.csv", "\n".join([header, *meta]) + "\n", True)
    fx._write_text(root / "mimic-cxr-2.0.0-chexpert.csv",
                   fx._csv(["subject_id", "study_id", *labels], chexpert), True)
    fx._write_text(root / "mimic-cxr-2.0.0-split.csv",
                   fx._csv(["dicom_id", "study_id", "subject_id", "split"], split), True)
    with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as archive:
        for subject, study, findings, impression in sections:
            text = (f"                                 FINAL REPORT\n INDICATION:  ___ with cough.\n\n"
                    f" FINDINGS:\n\n {findings}\n\n IMPRESSION:\n\n {impression}\n")  # fmt: skip
            archive.writestr(f"files/{fx._study_dir(subject, study)}.txt", text)
    done.write_text(str(n))
    return root


# ---------------------------------------------------------------------------- stages
def _stage_ingest(work: Path, n: int) -> dict[str, Any]:
    from cxrfuse.data.mimic_cxr import ingest_mimic_cxr

    manifest, _ = ingest_mimic_cxr(work / "tree", views=None)
    manifest.save(work / "ingested.parquet")
    return {"manifest_studies": len(manifest.df)}


def _stage_split(work: Path, n: int) -> dict[str, Any]:
    from cxrfuse.data import read_manifest
    from cxrfuse.data.splits import assign_splits

    manifest = assign_splits(read_manifest(work / "ingested.parquet"), seed=0, task="chexpert")
    manifest.save(work / "split.parquet")
    return {"train_studies": int((manifest.df["split"] == "train").sum())}


def _stage_stats(work: Path, n: int) -> dict[str, Any]:
    from cxrfuse.data import read_manifest
    from cxrfuse.text import TextConfig, audit_leakage

    manifest = read_manifest(work / "split.parquet")
    config = TextConfig(sections=["findings", "impression"], mask_labels=True)
    cpu = time.process_time()
    audits = [audit_leakage(manifest, config, task=t) for t in manifest.tasks]
    cpu = time.process_time() - cpu
    reports = int(manifest.has_report().sum())
    return {"audits": len(audits), "reports": reports,
            "audit_ms_per_report": round(1000 * cpu / max(1, reports), 3),
            "surviving_label_hits": sum(a.total_surviving for a in audits)}  # fmt: skip


def _stage_evaluation(work: Path, n: int) -> dict[str, Any]:
    import numpy as np

    from cxrfuse.evaluation.bootstrap import bootstrap_ci

    rng = np.random.default_rng(0)
    m = max(100, n // 5)
    y = (rng.random((m, 14)) < 0.2).astype(np.float64)
    p = np.clip(0.35 * y + 0.65 * rng.random((m, 14)), 0, 1)
    bootstrap_ci(y, p, 0.5, [f"l{j}" for j in range(14)], n_boot=1000, seed=0)
    return {"test_studies": m, "replicates": 1000, "labels": 14}


def _stage_retrieval(work: Path, n: int) -> dict[str, Any]:
    import numpy as np

    from cxrfuse.data import read_manifest
    from cxrfuse.generation.retrieval import SearchSpace, nearest_reports, retrieve, train_reports

    manifest = read_manifest(work / "split.parquet")
    reports = train_reports(manifest)
    ids = manifest.df["study_id"].astype(str).to_numpy()
    split = manifest.df["split"].to_numpy()
    bank = [i for i, s in enumerate(ids) if split[i] == "train" and s in reports]
    query = [i for i in range(len(ids)) if split[i] != "train"][:3000]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(ids), 1024), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    space = SearchSpace([ids[i] for i in query], vectors[query], [ids[i] for i in bank],
                        vectors[bank], "random 1024-d")  # fmt: skip
    del vectors
    frame = retrieve(space, manifest, k=5, consensus="medoid")
    nearest_reports(space, manifest)
    return {"bank": len(bank), "queries": len(frame), "k": 5, "consensus": "medoid"}


def _head_training() -> Any:
    """``benchmarks/_head_training.py`` (assembly and training figures), or None if absent."""
    try:
        import _head_training
    except ImportError:
        return None
    return _head_training


def _call(fn: Any, n: int, work: Path, **extra: Any) -> dict[str, Any]:
    """``fn(n_studies, ...)`` with the keyword arguments it accepts among folder / work dir."""
    params = inspect.signature(fn).parameters
    kwargs = {k: str(work / "assembly") for k in ("folder",) if k in params}
    kwargs.update({k: v for k, v in extra.items() if k in params})
    if kwargs:
        (work / "assembly").mkdir(exist_ok=True)
    return fn(n, **kwargs)


def _external_stage(stage: str, work: Path, n: int) -> dict[str, Any]:
    """Assembly or training through ``_head_training`` (it runs its own fresh processes)."""
    module = _head_training()
    if module is None:
        return {"status": "missing", "note": "benchmarks/_head_training.py is absent"}
    start = time.perf_counter()
    if stage in ("assembly", "assembly-attention"):
        views = "attention" if stage == "assembly-attention" else "mean"
        out = _call(module.measure_assembly, n, work, views=views)
        return {"status": "ok", "wall_s": round(time.perf_counter() - start, 2),
                "cpu_s": out.get("assembly_cpu_seconds"),
                "peak_rss_mb": _mb(out.get("assembly_peak_rss")), **out}  # fmt: skip
    out = _call(module.measure, n, work)
    return {"status": "ok", "wall_s": round(time.perf_counter() - start, 2),
            "cpu_s": out.get("train_cpu_seconds"), "peak_rss_mb": _mb(out.get("train_rss")),
            **out}  # fmt: skip


def _mb(value: Any) -> float | None:
    return None if value is None else round(float(value) / 2**20, 1)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # kB on Linux


STAGE_IMPORTS = {
    "ingest": ["cxrfuse.data.mimic_cxr"],
    "split": ["cxrfuse.data", "cxrfuse.data.splits"],
    "stats": ["cxrfuse.data", "cxrfuse.text"],
    "evaluation": ["numpy", "cxrfuse.evaluation.bootstrap"],
    "retrieval": ["numpy", "cxrfuse.data", "cxrfuse.generation.retrieval"],
}


def run_stage(stage: str, work: Path, n: int) -> dict[str, Any]:
    """In this (child) process: one stage, timed after its imports (``rss_before_mb``: the
    process's peak RSS then)."""
    for module in STAGE_IMPORTS.get(stage, []):
        importlib.import_module(module)
    before = _peak_rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu, wall = usage.ru_utime + usage.ru_stime, time.perf_counter()
    figures = globals()[f"_stage_{stage}"](work, n)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"status": "ok", "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu, 2),
            "wall_s": round(time.perf_counter() - wall, 2), "peak_rss_mb": _peak_rss_mb(),
            "rss_before_mb": before, **figures}  # fmt: skip


def _child(stage: str, work: Path, n: int) -> dict[str, Any]:
    """``run_stage`` in a fresh interpreter (its own peak RSS)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, __file__, "--stage", stage, "--work", str(work),
                           "--studies", str(n)], capture_output=True, text=True, env=env,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        return {"status": "failed", "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_size(n: int, work: Path, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Every stage at ``n`` studies; the tree is kept under ``work`` for a rerun."""
    start = time.perf_counter()
    write_tree(work / "tree", n)
    out: dict[str, Any] = {"studies": n, "tree_seconds": round(time.perf_counter() - start, 1)}
    for stage in stages:
        if stage in ("assembly", "assembly-attention", "training"):
            try:
                out[stage] = _external_stage(stage, work, n)
            except Exception as err:  # noqa: BLE001 - a failed stage is a result; the rest run
                out[stage] = {"status": "failed", "error": f"{type(err).__name__}: {err}"[-2000:]}
        else:
            out[stage] = _child(stage, work, n)
        print(f"  {n} studies, {stage}: {_brief(out[stage])}", file=sys.stderr, flush=True)
    out["audit_ms_per_report"] = out.get("stats", {}).get("audit_ms_per_report")
    out["assembly_rss_ratio"] = out.get("assembly", {}).get("assembly_rss_ratio")
    out["attention_rss_ratio"] = out.get("assembly-attention", {}).get("assembly_rss_ratio")
    out["train_ratio"] = out.get("training", {}).get("train_ratio")
    return out


def _brief(result: dict[str, Any]) -> str:
    if result.get("status") != "ok":
        return f"{result.get('status')}: {str(result.get('note') or result.get('error'))[-300:]}"
    return f"{result.get('cpu_s')} s CPU, {result.get('wall_s')} s wall, {result.get('peak_rss_mb')} MB"


def growth(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Growth exponent of CPU time and peak RSS per stage between consecutive sizes:
    log(ratio of the figure) / log(ratio of the studies); 1.0 is linear."""
    out: dict[str, dict[str, float | None]] = {}
    for a, b in itertools.pairwise(results):
        step = math.log(b["studies"] / a["studies"])
        for stage in STAGES:
            ra, rb = a.get(stage, {}), b.get(stage, {})
            key = f"{stage} {a['studies']}->{b['studies']}"
            out[key] = {}
            for figure in ("cpu_s", "peak_rss_mb"):
                x, y = ra.get(figure), rb.get(figure)
                out[key][figure] = round(math.log(y / x) / step, 2) if x and y else None
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    """The results table: one row per stage, one column per size."""
    head = "| stage | " + " | ".join(f"{r['studies']:,} studies" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for stage in STAGES:
        cells = []
        for r in results:
            s = r.get(stage, {})
            cells.append(f"{s.get('cpu_s')} s CPU, {s.get('wall_s')} s wall, {s.get('peak_rss_mb')} MB"
                         if s.get("status") == "ok" else str(s.get("status", "not run")))  # fmt: skip
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    for key in ("audit_ms_per_report", "assembly_rss_ratio", "attention_rss_ratio", "train_ratio"):
        lines.append(f"| {key} | " + " | ".join(str(r.get(key)) for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--dry-run", action="store_true", help=f"{DRY_RUN_SIZE} studies, every stage")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--work", type=Path, help="keep the trees here (default: a temporary folder)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.work, args.studies[0])))
        return
    sizes = [DRY_RUN_SIZE] if args.dry_run else sorted(args.studies)
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    with tempfile.TemporaryDirectory(prefix="cxrfuse-scale-") as tmp:
        base = args.work or Path(tmp)
        results = []
        for n in sizes:
            work = base / f"n{n}"
            work.mkdir(parents=True, exist_ok=True)
            results.append(measure_size(n, work, stages))
    report = {"machine": machine_line(), "dry_run": args.dry_run, "sizes": {str(r["studies"]): r for r in results},
              "growth": growth(results)}  # fmt: skip
    print(markdown(results))
    for key, value in report["growth"].items():
        print(f"growth {key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
