"""Evaluate an experiment directory: :func:`evaluate_experiment` evaluates every finished run of
a grid (:func:`cxrfuse.evaluation.run.evaluate_run`), then groups runs that differ only by
seed, builds the unimodal vs multimodal table, tests the fused model against the best unimodal
one (paired bootstrap, DeLong), counts complementarity and writes ``evaluation.json``,
``evaluation.csv`` and ``evaluation.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrfuse.evaluation.ablation import (
    complementarity,
    format_table,
    modality_name,
    modality_table,
)
from cxrfuse.evaluation.bootstrap import delong_test, paired_bootstrap, seed_summary
from cxrfuse.evaluation.metrics import (
    HEADLINE,
)
from cxrfuse.evaluation.plots import (
    plot_roc,
    plot_venn,
)
from cxrfuse.evaluation.run import ProbeCache, evaluate_run, evaluation_settings
from cxrfuse.evaluation.verdicts import (
    experiment_conclusion,
    paired_verdict,
)
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import ExperimentDir, RunDir, RunInfo, p_column, y_column
from cxrfuse.runtime import environment_info

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


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, Mapping):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(node, sort_keys=True, default=str)}


def run_settings(run: RunDir, info: RunInfo) -> dict[str, str]:
    """The run's configuration as flat ``key: json value`` pairs without seed, name, output
    paths and modalities (so runs of one setting differ only there)."""
    config = run.config_mapping() or {"task": info.task, "labels": info.labels,
                                      "manifest": info.manifest}  # fmt: skip
    flat = _flatten(config)
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

    Writes ``evaluation.json`` (everything below), ``evaluation.csv`` (one row per run; the
    grid columns of the training side's ``summary.csv`` kept) and ``evaluation.md``, plus per-setting ROC and Venn plots
    under ``plots/``. ``reuse`` keeps a run's ``metrics.json`` when it is newer than its
    predictions and used the same threshold method and bootstrap.
    """
    exp = ExperimentDir(exp_dir)
    run_dirs = exp.run_dirs()
    defaults = evaluation_settings(run_dirs[0])
    threshold = defaults["threshold"] if threshold is None else threshold
    n_boot = defaults["n_boot"] if n_boot is None else n_boot
    probes: ProbeCache = {}
    records = []
    for run in tqdm(run_dirs, desc="evaluate runs"):
        info = run.info()
        record: dict[str, Any] = {
            "run": info.name,
            "dir": run.path,
            "status": info.status,
            "error": info.error,
            "modalities": list(info.modalities),
            "seed": info.seed,
            "settings": run_settings(run, info),
        }
        if info.status == "finished":
            try:
                record["metrics"] = _cached_or_evaluate(run, threshold, n_boot, seed, reuse,
                                                        leakage, probes)  # fmt: skip
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
        _compare_setting(exp, name, [r for r in finished if r["setting"] == name], n_boot, seed)
        for name in dict.fromkeys(names)
    ]
    result = {
        "experiment": exp.name,
        "threshold_method": str(threshold),
        "n_boot": n_boot,
        "runs": [
            {
                k: (str(v.relative_to(exp.path)) if k == "dir" else v)
                for k, v in r.items()
                if k not in ("metrics", "settings")
            }
            | {"headline": r["metrics"]["test"]["headline"] if "metrics" in r else None,
               "verdicts": r["metrics"]["test"].get("verdicts", []) if "metrics" in r else []}
            for r in records
        ],
        "settings": comparisons,
        "verdicts": [{"run": r["run"], **v} for r in finished
                     for v in r["metrics"]["test"].get("verdicts", [])],
        "environment": environment_info(),
    }
    result["conclusion"] = experiment_conclusion(result, {r["run"]: r["metrics"] for r in finished})
    exp.write_evaluation(result)
    _write_tables(exp, records, comparisons, result["conclusion"], result["verdicts"])
    return result


def _cached_or_evaluate(
    run: RunDir, threshold: str | float, n_boot: int, seed: int, reuse: bool, leakage: bool,
    probes: ProbeCache,
) -> dict[str, Any]:  # fmt: skip
    if (
        reuse
        and run.has_metrics()
        and run.metrics_path.stat().st_mtime >= run.predictions_path.stat().st_mtime
    ):
        cached = run.metrics()
        settings = (cached.threshold_method, cached.n_boot, cached.bootstrap_seed)
        if cached.test.verdicts is not None and settings == (str(threshold), n_boot, seed):
            return cached.as_result()
    return evaluate_run(run, threshold, n_boot, seed, leakage=leakage, probe_cache=probes)


def _test_frame(record: Mapping[str, Any]) -> pd.DataFrame:
    labels = record["metrics"]["labels"]
    frame = RunDir(record["dir"]).predictions(labels)
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
    ycols = [y_column(n) for n in labels]
    pcols = [p_column(n) for n in labels]
    return (
        fa.loc[shared, ycols].to_numpy(float),
        fa.loc[shared, pcols].to_numpy(float),
        fb.loc[shared, pcols].to_numpy(float),
        labels,
    )


def _thresholds(record: Mapping[str, Any]) -> np.ndarray:
    return np.array([record["metrics"]["thresholds"][n] for n in record["metrics"]["labels"]])


def _compare_setting(
    exp: ExperimentDir, name: str, runs: list[dict[str, Any]], n_boot: int, seed: int
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
                    exp.plots_dir / f"{slug}_venn.png",
                    title=f"Correct (study, label) pairs, seed {first['seed']}",
                ).relative_to(exp.path)
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
            .loc[shared, [y_column(n) for n in labels]]
            .to_numpy(float)
        )
        probs = {
            m: f.loc[shared, [p_column(n) for n in labels]].to_numpy(float)
            for m, f in frames.items()
        }
        roc = plot_roc(
            y,
            probs,
            labels,
            exp.plots_dir / f"{slug}_roc.png",
            title=f"ROC by modality (test, {name})",
        )
        out["plots"].append(str(roc.relative_to(exp.path)))
    return out


def _write_tables(
    exp: ExperimentDir, records: list[dict[str, Any]], comparisons: list[dict[str, Any]],
    conclusion: str = "", verdicts: Sequence[Mapping[str, Any]] = (),
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
            row["verdicts"] = ",".join(dict.fromkeys(
                v["kind"] for v in r["metrics"]["test"].get("verdicts", [])))  # fmt: skip
        rows.append(row)
    ours = pd.DataFrame(rows)
    theirs = exp.summary()  # the training side's run table (read, never written here)
    if theirs is not None and "run" in theirs.columns:  # keep its grid columns
        keep = [c for c in theirs.columns if c not in ours.columns or c == "run"]
        ours = theirs[keep].merge(ours, on="run", how="outer")
    exp.write_evaluation_tables(ours, summary_markdown(exp.name, ours, comparisons, conclusion,
                                                       verdicts))


def summary_markdown(name: str, runs: pd.DataFrame, comparisons: list[dict[str, Any]],
                     conclusion: str = "", verdicts: Sequence[Mapping[str, Any]] = ()) -> str:  # fmt: skip
    """The experiment summary as Markdown: the conclusion and the verdicts, per setting the
    modality table, paired tests and complementarity, then every run."""
    lines = [f"# Experiment {name}: summary", ""]
    if conclusion:
        lines += [f"**Conclusion.** {conclusion}", ""]
    lines += [f"> **Warning ({v['run']}):** {v['message']}" for v in verdicts]
    lines += [""] if verdicts else []
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
        for c in ("run", "setting", "modalities", "seed", "status", "auroc", "f1", "exact_match",
                  "verdicts")
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
                "AUROC reading": _reading(a, t["studies"]),
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


def _reading(diff: Mapping[str, Any], n: int) -> str:
    status = paired_verdict(diff, n, "fusion adds")["status"] if diff else "unclear"
    return {"evidence": "fusion helps", "against": "fusion hurts"}.get(
        status, "no evidence (too few studies to tell)")


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
