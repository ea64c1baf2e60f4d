"""Evaluate run and experiment directories (layout: the run-directory contract, see
``docs/evaluation.md``).

:func:`evaluate_run` reads ``run.json`` and ``predictions.parquet``, chooses thresholds on the
validation split, scores the test split with bootstrap intervals, runs the leakage probe for
text models, draws the plots and writes ``metrics.json`` (and the thresholds into
``model.json``). :func:`evaluate_experiment` does that for every finished run of a grid, then
groups runs that differ only by seed, builds the unimodal vs multimodal table, tests the fused
model against the best unimodal one (paired bootstrap, DeLong) and counts complementarity.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from cxrfuse.data.manifest import label_slug, read_manifest
from cxrfuse.encoders.files import write_json as write_json_atomic
from cxrfuse.evaluation.ablation import (
    complementarity,
    format_table,
    leakage_probe,
    modality_name,
    modality_table,
    shuffle_sensitivity,
)
from cxrfuse.evaluation.bootstrap import bootstrap_ci, delong_test, paired_bootstrap, seed_summary
from cxrfuse.evaluation.metrics import HEADLINE, choose_thresholds, compute_metrics
from cxrfuse.evaluation.plots import (
    plot_confusion,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_training_curves,
    plot_venn,
)
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.text import TextConfig

PACKAGES = ("cxrfuse", "numpy", "pandas", "scikit-learn", "scipy", "torch", "matplotlib")
IGNORED_KEYS = {
    "seed",
    "name",
    "out",
    "output",
    "output_dir",
    "out_dir",
    "run_dir",
    "runs_dir",
    "dir",
}


# ------------------------------------------------------------------------------ files
def write_json(path: Path, payload: Any) -> Path:
    """Indented strict JSON (NaN/inf as null), written atomically."""
    return write_json_atomic(path, payload, indent=2)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: missing (is this a cxrfuse run directory?)") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory, checked for the fields evaluation needs."""
    path = Path(run_dir) / "run.json"
    run = read_json(path)
    from cxrfuse.clip.checkpoint import CLIP_TASK

    if run.get("task") == CLIP_TASK:
        raise DataError(f"{run_dir}: a CLIP run; evaluate it with `cxrfuse clip retrieve`, "
                        "`cxrfuse clip zero-shot` or `cxrfuse clip probe`, then `cxrfuse report`")
    for key in ("labels", "modalities"):
        if not run.get(key):
            raise DataError(f"{path}: field {key!r} is missing or empty")
    return run


def read_predictions(run_dir: str | Path, labels: Sequence[str]) -> pd.DataFrame:
    """``predictions.parquet``, checked for the contract's columns."""
    path = Path(run_dir) / "predictions.parquet"
    if not path.exists():
        raise DataError(f"{path}: missing; the run has no predictions to evaluate")
    frame = pd.read_parquet(path)
    wanted = ["study_id", "split"] + [f"{k}__{label_slug(n)}" for n in labels for k in ("y", "p")]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    for split in ("val", "test"):
        if not (frame["split"] == split).any():
            raise DataError(
                f"{path}: no rows with split == {split!r} "
                "(thresholds come from val, metrics from test)"
            )
    return frame


def split_arrays(
    frame: pd.DataFrame, labels: Sequence[str], split: str
) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """(y_true, y_prob, study ids) of one split."""
    part = frame[frame["split"] == split]
    y = part[[f"y__{label_slug(n)}" for n in labels]].to_numpy(dtype=np.float64)
    p = part[[f"p__{label_slug(n)}" for n in labels]].to_numpy(dtype=np.float64)
    return y, p, part["study_id"].astype(str).reset_index(drop=True)


def environment() -> dict[str, Any]:
    """Python, platform and package versions of the evaluating process."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": versions,
    }


def text_config_of(run_dir: str | Path) -> TextConfig | None:
    """The run's text configuration: ``model.json`` ``text.text_config``, else the first mapping
    with ``sections`` in ``config.yaml``; None when neither has one."""
    run_dir = Path(run_dir)
    candidates: list[Any] = []
    if (run_dir / "model.json").exists():
        text = read_json(run_dir / "model.json").get("text") or {}
        candidates.append(text.get("text_config"))
    if (run_dir / "config.yaml").exists():
        candidates.extend(
            _find_mappings(yaml.safe_load((run_dir / "config.yaml").read_text()), "sections")
        )
    for candidate in candidates:
        if isinstance(candidate, Mapping) and candidate.get("sections"):
            known = {k: v for k, v in candidate.items() if k in TextConfig.model_fields}
            return TextConfig(**known)
    return None


def _find_mappings(node: Any, key: str) -> list[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        found = [node] if key in node else []
        for value in node.values():
            found.extend(_find_mappings(value, key))
        return found
    if isinstance(node, list):
        return [m for item in node for m in _find_mappings(item, key)]
    return []


# ------------------------------------------------------------------------------ one run
_PROBE_CACHE: dict[str, dict[str, Any]] = {}


def run_leakage_probe(run: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The leakage probe of a run that reads text, ``{"skipped": reason}``, or None (no text)."""
    if "text" not in run["modalities"]:
        return None
    config = text_config_of(run_dir)
    if config is None:
        return {"skipped": "no text configuration found in model.json or config.yaml"}
    manifest_path = run.get("manifest")
    if not manifest_path:
        return {"skipped": "run.json names no manifest"}
    task = run.get("task")
    path = _resolve(manifest_path, run_dir)
    stamp = path.stat().st_mtime if path.exists() else None
    key = json.dumps([str(path), stamp, config.model_dump(), task], sort_keys=True)
    if key not in _PROBE_CACHE:
        try:
            manifest = read_manifest(path)
            _PROBE_CACHE[key] = leakage_probe(
                manifest,
                config,
                task if task in manifest.tasks or task in manifest.labels else run["labels"],
            )
        except CxrfuseError as exc:
            return {"skipped": str(exc)}
    return _PROBE_CACHE[key]


def _resolve(path: str | Path, run_dir: Path) -> Path:
    """A path from run.json: as written, else relative to the run directory."""
    path = Path(path)
    return path if path.exists() or path.is_absolute() else (run_dir / path)


def evaluation_settings(run_dir: str | Path) -> dict[str, Any]:
    """``threshold`` and ``n_boot`` from the ``evaluation`` section of the run's ``config.yaml``
    (defaults ``"f1"`` and 1000 when absent)."""
    path = Path(run_dir) / "config.yaml"
    section = (yaml.safe_load(path.read_text()) or {}).get("evaluation") if path.exists() else None
    section = section if isinstance(section, Mapping) else {}
    return {"threshold": section.get("threshold", "f1"), "n_boot": int(section.get("n_boot", 1000))}


def evaluate_run(
    run_dir: str | Path,
    threshold: str | float | None = None,
    n_boot: int | None = None,
    seed: int = 0,
    *,
    shuffle: Sequence[str] = (),
    repeats: int = 5,
    leakage: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate one finished run; writes ``metrics.json``, ``plots/*.png`` (and ``ablation.json``
    when ``shuffle`` names modalities) and returns the metrics dict.

    Thresholds are chosen on the val split with ``threshold`` (``"f1"``, ``"youden"``, ``"0.5"``
    or a number) and applied to test; intervals are percentile bootstraps over test studies
    (``n_boot=0``: none). ``None`` takes the value from the run config's ``evaluation`` section.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    defaults = evaluation_settings(run_dir)
    threshold = defaults["threshold"] if threshold is None else threshold
    n_boot = defaults["n_boot"] if n_boot is None else n_boot
    if shuffle:  # fail before the work, not after it
        check_shuffle(run, run_dir, shuffle)
    if run.get("status") != "finished":
        raise DataError(
            f"{run_dir / 'run.json'}: status is {run.get('status')!r}, not 'finished'"
            + (f" (error: {run['error']})" if run.get("error") else "")
        )
    labels = list(run["labels"])
    frame = read_predictions(run_dir, labels)
    val_y, val_p, _ = split_arrays(frame, labels, "val")
    test_y, test_p, _ = split_arrays(frame, labels, "test")
    thresholds, warnings = choose_thresholds(val_y, val_p, threshold, labels)
    result: dict[str, Any] = {
        "run": run.get("name", run_dir.name),
        "task": run.get("task"),
        "labels": labels,
        "modalities": list(run["modalities"]),
        "seed": run.get("seed"),
        "images": run.get("images"),
        "threshold_method": str(threshold),
        "thresholds": dict(zip(labels, thresholds.tolist())),
        "threshold_warnings": warnings,
        "n_boot": n_boot,
        "bootstrap_seed": seed,
        "val": compute_metrics(val_y, val_p, thresholds, labels),
        "test": compute_metrics(test_y, test_p, thresholds, labels),
        "ci": bootstrap_ci(test_y, test_p, thresholds, labels, n_boot=n_boot, seed=seed)
        if n_boot
        else {},
        "evaluated": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
    }
    if leakage:
        result["leakage"] = run_leakage_probe(run, run_dir)
    if plots:
        result["plots"] = _run_plots(run_dir, result, test_y, test_p)
    write_json(run_dir / "metrics.json", result)
    _store_thresholds(run_dir, result["thresholds"])
    if shuffle:
        result["shuffle"] = shuffle_run(
            run_dir, shuffle, repeats=repeats, seed=seed, thresholds=thresholds
        )
    return result


def _run_plots(
    run_dir: Path, result: Mapping[str, Any], test_y: np.ndarray, test_p: np.ndarray
) -> list[str]:
    out = run_dir / "plots"
    name = modality_name(result["modalities"])
    labels = result["labels"]
    paths = [
        plot_roc(test_y, {name: test_p}, labels, out / "roc.png"),
        plot_pr(test_y, {name: test_p}, labels, out / "pr.png"),
        plot_confusion(result["test"]["per_label"], out / "confusion.png"),
        plot_reliability(result["test"]["per_label"], out / "reliability.png"),
    ]
    if (run_dir / "epochs.csv").exists():
        paths.append(plot_training_curves(run_dir / "epochs.csv", out / "training_curves.png"))
    return [str(p.relative_to(run_dir)) for p in paths]


def _store_thresholds(run_dir: Path, thresholds: Mapping[str, float]) -> None:
    path = run_dir / "model.json"
    if path.exists():
        sidecar = read_json(path)
        sidecar["thresholds"] = dict(thresholds)
        write_json(path, sidecar)


def require_load_run() -> Any:
    """:func:`cxrfuse.training.load_run`, or a clear error when this cxrfuse has none."""
    try:
        from cxrfuse.training import load_run  # type: ignore[attr-defined]
    except ImportError as exc:
        raise CxrfuseError(
            "shuffling a modality needs the trained model, and this cxrfuse has no "
            "cxrfuse.training.load_run to rebuild it yet"
        ) from exc
    return load_run


def check_shuffle(run: Mapping[str, Any], run_dir: Path, modalities: Sequence[str]) -> Any:
    """Raise unless the run uses every modality to shuffle and its model can be loaded;
    returns :func:`cxrfuse.training.load_run`."""
    unused = [m for m in modalities if m not in run["modalities"]]
    if unused:
        raise CxrfuseError(
            f"{run_dir}: cannot shuffle {unused}: the run uses only {run['modalities']}"
        )
    return require_load_run()


def shuffle_run(
    run_dir: str | Path,
    modalities: Sequence[str],
    *,
    repeats: int = 5,
    seed: int = 0,
    thresholds: np.ndarray | float | None = None,
) -> dict[str, Any]:
    """Bimodal sensitivity test of a trained run (needs :func:`cxrfuse.training.load_run`);
    merges the results into ``ablation.json`` and returns them."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    load_run = check_shuffle(run, run_dir, modalities)
    if thresholds is None:
        metrics_path = run_dir / "metrics.json"
        stored = read_json(metrics_path)["thresholds"] if metrics_path.exists() else {}
        thresholds = np.array([stored.get(n, 0.5) for n in run["labels"]])
    model = load_run(run_dir)
    inputs, y = model.split_inputs("test")
    results = {
        m: shuffle_sensitivity(
            model.predict_proba,
            inputs,
            y,
            m,
            repeats=repeats,
            seed=seed,
            thresholds=thresholds,
            labels=run["labels"],
        )
        for m in modalities
    }
    path = run_dir / "ablation.json"
    ablation = read_json(path) if path.exists() else {}
    ablation.setdefault("shuffle", {}).update(results)
    write_json(path, ablation)
    return results


# ------------------------------------------------------------------------------ experiments
def find_runs(exp_dir: str | Path) -> list[Path]:
    """Run directories of an experiment: ``runs/*/run.json`` (or ``*/run.json``), sorted."""
    exp_dir = Path(exp_dir)
    found = sorted(p.parent for p in exp_dir.glob("runs/*/run.json")) or sorted(
        p.parent for p in exp_dir.glob("*/run.json")
    )
    if not found:
        raise DataError(f"{exp_dir}: no run directories (runs/*/run.json) found")
    return found


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, Mapping):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(node, sort_keys=True, default=str)}


def run_settings(run_dir: Path, run: Mapping[str, Any]) -> dict[str, str]:
    """The run's configuration as flat ``key: json value`` pairs without seed, name, output
    paths and modalities (so runs of one setting differ only there)."""
    path = run_dir / "config.yaml"
    config = (
        yaml.safe_load(path.read_text())
        if path.exists()
        else {"task": run.get("task"), "labels": run.get("labels"), "manifest": run.get("manifest")}
    )
    flat = _flatten(config or {})
    return {
        k: v
        for k, v in flat.items()
        if k.rsplit(".", 1)[-1] not in IGNORED_KEYS and "modalit" not in k.rsplit(".", 1)[-1]
    }


def _setting_names(settings: list[dict[str, str]]) -> list[str]:
    """Short names for settings: the keys whose values differ between them."""
    keys = sorted({k for s in settings for k in s})
    varying = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    if not varying:
        return ["all runs"] * len(settings)
    return [
        ", ".join(f"{k.rsplit('.', 1)[-1]}={json.loads(s[k]) if k in s else '-'}" for k in varying)
        for s in settings
    ]


def evaluate_experiment(
    exp_dir: str | Path,
    threshold: str | float | None = None,
    n_boot: int | None = None,
    seed: int = 0,
    *,
    reuse: bool = True,
    leakage: bool = True,
) -> dict[str, Any]:
    """Evaluate every finished run of an experiment and compare modalities.

    Writes ``evaluation.json`` (everything below), ``summary.csv`` (one row per run; columns
    the training side wrote are kept) and ``summary.md``, plus per-setting ROC and Venn plots
    under ``plots/``. ``reuse`` keeps a run's ``metrics.json`` when it is newer than its
    predictions and used the same threshold method and bootstrap.
    """
    exp_dir = Path(exp_dir)
    run_dirs = find_runs(exp_dir)
    defaults = evaluation_settings(run_dirs[0])
    threshold = defaults["threshold"] if threshold is None else threshold
    n_boot = defaults["n_boot"] if n_boot is None else n_boot
    records = []
    for run_dir in tqdm(run_dirs, desc="evaluate runs"):
        run = read_json(run_dir / "run.json")
        record: dict[str, Any] = {
            "run": run.get("name", run_dir.name),
            "dir": run_dir,
            "status": run.get("status"),
            "error": run.get("error"),
            "modalities": list(run.get("modalities") or []),
            "seed": run.get("seed"),
            "settings": run_settings(run_dir, run),
        }
        if run.get("status") == "finished":
            try:
                record["metrics"] = _cached_or_evaluate(
                    run_dir, threshold, n_boot, seed, reuse, leakage
                )
            except CxrfuseError as exc:  # one broken run must not stop the others
                record["status"], record["error"] = "evaluation failed", str(exc)
        records.append(record)
    finished = [r for r in records if "metrics" in r]
    settings: list[dict[str, str]] = []
    for r in finished:
        if r["settings"] not in settings:
            settings.append(r["settings"])
    names = _setting_names(settings)
    for r in records:
        r["setting"] = names[settings.index(r["settings"])] if r["settings"] in settings else None
    comparisons = [
        _compare_setting(exp_dir, name, [r for r in finished if r["setting"] == name], n_boot, seed)
        for name in dict.fromkeys(names)
    ]
    result = {
        "experiment": exp_dir.name,
        "threshold_method": str(threshold),
        "n_boot": n_boot,
        "runs": [
            {
                k: (str(v.relative_to(exp_dir)) if k == "dir" else v)
                for k, v in r.items()
                if k not in ("metrics", "settings")
            }
            | {"headline": r["metrics"]["test"]["headline"] if "metrics" in r else None}
            for r in records
        ],
        "settings": comparisons,
        "environment": environment(),
    }
    write_json(exp_dir / "evaluation.json", result)
    _write_summary(exp_dir, records, comparisons)
    return result


def _cached_or_evaluate(
    run_dir: Path, threshold: str | float, n_boot: int, seed: int, reuse: bool, leakage: bool
) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if (
        reuse
        and path.exists()
        and path.stat().st_mtime >= (run_dir / "predictions.parquet").stat().st_mtime
    ):
        cached = read_json(path)
        if (cached.get("threshold_method"), cached.get("n_boot"), cached.get("bootstrap_seed")) == (
            str(threshold),
            n_boot,
            seed,
        ):
            return cached
    return evaluate_run(run_dir, threshold, n_boot, seed, leakage=leakage)


def _test_frame(record: Mapping[str, Any]) -> pd.DataFrame:
    labels = record["metrics"]["labels"]
    frame = read_predictions(record["dir"], labels)
    return frame[frame["split"] == "test"].set_index(
        frame.loc[frame["split"] == "test", "study_id"].astype(str)
    )


def _pair(
    a: Mapping[str, Any], b: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Test labels and both models' probabilities on the studies the two runs share."""
    labels = a["metrics"]["labels"]
    if list(b["metrics"]["labels"]) != list(labels):
        raise DataError(f"runs {a['run']} and {b['run']} have different labels")
    fa, fb = _test_frame(a), _test_frame(b)
    shared = fa.index.intersection(fb.index)
    ycols = [f"y__{label_slug(n)}" for n in labels]
    pcols = [f"p__{label_slug(n)}" for n in labels]
    return (
        fa.loc[shared, ycols].to_numpy(float),
        fa.loc[shared, pcols].to_numpy(float),
        fb.loc[shared, pcols].to_numpy(float),
        labels,
    )


def _thresholds(record: Mapping[str, Any]) -> np.ndarray:
    return np.array([record["metrics"]["thresholds"][n] for n in record["metrics"]["labels"]])


def _compare_setting(
    exp_dir: Path, name: str, runs: list[dict[str, Any]], n_boot: int, seed: int
) -> dict[str, Any]:
    """Modality table, fused vs best unimodal tests and complementarity for one setting."""
    table = modality_table(runs)
    out: dict[str, Any] = {
        "setting": name,
        "runs": [r["run"] for r in runs],
        "modality_table": table.to_dict("records"),
        "paired": [],
        "complementarity": [],
        "plots": [],
    }
    by_modality: dict[str, dict[Any, dict[str, Any]]] = {}
    for r in runs:
        by_modality.setdefault(modality_name(r["modalities"]), {})[r["seed"]] = r
    unimodal = {m: rs for m, rs in by_modality.items() if m in ("Image", "Text")}
    fused = by_modality.get("Multimodal", {})
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-") or "all"
    if fused and unimodal:
        best = max(
            unimodal,
            key=lambda m: (
                seed_summary(
                    [r["metrics"]["test"]["headline"]["auroc"] for r in unimodal[m].values()]
                )["mean"]
                or -1
            ),
        )
        out["best_unimodal"] = best
        for s, f in sorted(fused.items(), key=lambda kv: str(kv[0])):
            if s not in unimodal[best]:
                continue
            u = unimodal[best][s]
            y, pf, pu, labels = _pair(f, u)
            test = {
                "seed": s,
                "fused": f["run"],
                "unimodal": u["run"],
                "studies": len(y),
                "bootstrap": paired_bootstrap(
                    y, pf, pu, _thresholds(f), _thresholds(u), labels, n_boot=n_boot, seed=seed
                )
                if n_boot
                else {},
                "delong": {},
            }
            for j, label in enumerate(labels):
                known = ~np.isnan(y[:, j])
                if len(np.unique(y[known, j])) == 2:
                    test["delong"][label] = delong_test(y[:, j], pf[:, j], pu[:, j])
            out["paired"].append(test)
    if "Image" in unimodal and "Text" in unimodal:
        for s in sorted(set(unimodal["Image"]) & set(unimodal["Text"]), key=str):
            image, text = unimodal["Image"][s], unimodal["Text"][s]
            y, pi, pt, _ = _pair(image, text)
            counts = complementarity(y, pi, pt, _thresholds(image), _thresholds(text))
            out["complementarity"].append(
                {"seed": s, "image": image["run"], "text": text["run"], **counts}
            )
        first = out["complementarity"][0]
        out["plots"].append(
            str(
                plot_venn(
                    first["pairs"],
                    exp_dir / "plots" / f"{slug}_venn.png",
                    title=f"Correct (study, label) pairs, seed {first['seed']}",
                ).relative_to(exp_dir)
            )
        )
    first_seed = {m: rs[min(rs, key=str)] for m, rs in by_modality.items()}
    if first_seed:
        frames = {m: _test_frame(r) for m, r in first_seed.items()}
        shared = next(iter(frames.values())).index
        for frame in frames.values():
            shared = shared.intersection(frame.index)
        labels = next(iter(first_seed.values()))["metrics"]["labels"]
        y = (
            next(iter(frames.values()))
            .loc[shared, [f"y__{label_slug(n)}" for n in labels]]
            .to_numpy(float)
        )
        probs = {
            m: f.loc[shared, [f"p__{label_slug(n)}" for n in labels]].to_numpy(float)
            for m, f in frames.items()
        }
        roc = plot_roc(
            y,
            probs,
            labels,
            exp_dir / "plots" / f"{slug}_roc.png",
            title=f"ROC by modality (test, {name})",
        )
        out["plots"].append(str(roc.relative_to(exp_dir)))
    return out


def _write_summary(
    exp_dir: Path, records: list[dict[str, Any]], comparisons: list[dict[str, Any]]
) -> None:
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "run": r["run"],
            "setting": r.get("setting"),
            "modalities": "+".join(r["modalities"]),
            "seed": r["seed"],
            "status": r["status"],
            "error": r.get("error"),
        }
        if "metrics" in r:
            for m in (*HEADLINE, "exact_match"):
                row[m] = r["metrics"]["test"]["headline"].get(m)
                ci = r["metrics"]["ci"].get(f"headline/{m}", {})
                row[f"{m}_low"], row[f"{m}_high"] = ci.get("low"), ci.get("high")
        rows.append(row)
    ours = pd.DataFrame(rows)
    path = exp_dir / "summary.csv"
    if path.exists():  # keep the grid columns the experiment runner wrote
        theirs = pd.read_csv(path)
        key = "name" if "name" in theirs.columns else "run" if "run" in theirs.columns else None
        if key:
            theirs = theirs.rename(columns={key: "run"})
            keep = [c for c in theirs.columns if c not in ours.columns or c == "run"]
            ours = theirs[keep].merge(ours, on="run", how="outer")
    ours.to_csv(path, index=False)
    (exp_dir / "summary.md").write_text(summary_markdown(exp_dir.name, ours, comparisons))


def summary_markdown(name: str, runs: pd.DataFrame, comparisons: list[dict[str, Any]]) -> str:
    """The experiment summary as Markdown: per setting the modality table, paired tests and
    complementarity, then every run."""
    lines = [f"# Experiment {name}: summary", ""]
    for comp in comparisons:
        intro = (
            "Unimodal vs multimodal (test; mean ± sd across seeds, or the 95 % bootstrap "
            "interval for one seed):"
        )
        lines += [
            f"## Setting: {comp['setting']}",
            "",
            intro,
            "",
            format_table(pd.DataFrame(comp["modality_table"])).to_markdown(index=False),
            "",
        ]
        if comp.get("paired"):
            lines += [PAIRED_INTRO, "", paired_table(comp).to_markdown(index=False), ""]
        if comp.get("complementarity"):
            lines += [
                COMPLEMENTARITY_INTRO,
                "",
                complementarity_table(comp).to_markdown(index=False),
                "",
            ]
    cols = [
        c
        for c in ("run", "setting", "modalities", "seed", "status", "auroc", "f1", "exact_match")
        if c in runs.columns
    ]
    lines += ["## Runs", "", runs[cols].to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines)


PAIRED_INTRO = (
    "Fused vs best unimodal model, paired on the same test studies (difference fused - unimodal, "
    "95 % paired-bootstrap interval and p-value; DeLong's test per label for AUROC):"
)
COMPLEMENTARITY_INTRO = (
    "Complementarity of the unimodal models at val-chosen thresholds (pairs: known "
    "(study, label); studies: every label right):"
)


def paired_table(comp: Mapping[str, Any]) -> pd.DataFrame:
    """One row per seed: fused - best unimodal differences with intervals and p-values."""
    rows = []
    for t in comp.get("paired", []):
        a, f = t["bootstrap"].get("auroc", {}), t["bootstrap"].get("f1", {})
        rows.append(
            {
                "seed": t["seed"],
                "fused": t["fused"],
                "vs": t["unimodal"],
                "studies": t["studies"],
                "AUROC diff": _diff(a),
                "p (bootstrap)": _p(a.get("p")),
                "F1 diff": _diff(f),
                "p (F1)": _p(f.get("p")),
                "DeLong p per label": ", ".join(f"{k} {_p(v['p'])}" for k, v in t["delong"].items())
                or "-",
            }
        )
    return pd.DataFrame(rows)


def _diff(d: Mapping[str, Any]) -> str:
    if d.get("diff") is None:
        return "-"
    ci = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("low") is not None else ""
    return f"{d['diff']:+.3f}{ci}"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def complementarity_table(comp: Mapping[str, Any]) -> pd.DataFrame:
    """One row per seed and unit (pairs, studies): both right, only text, only image, neither."""
    return pd.DataFrame(
        [
            {
                "seed": c["seed"],
                "unit": unit,
                "both right": c[unit]["both"],
                "only text": c[unit]["only_text"],
                "only image": c[unit]["only_image"],
                "neither": c[unit]["neither"],
                "total": c[unit]["total"],
            }
            for c in comp.get("complementarity", [])
            for unit in ("pairs", "studies")
        ]
    )
