"""Evaluate run and experiment directories (read and written through :mod:`cxrfuse.rundir`).

:func:`evaluate_run` reads ``run.json`` and ``predictions.parquet``, chooses thresholds on the
validation split, scores the test split with bootstrap intervals, runs the leakage probe for
text models, draws the plots and writes ``metrics.json`` (and the thresholds into
``model.json``). :func:`evaluate_experiment` does that for every finished run of a grid, then
groups runs that differ only by seed, builds the unimodal vs multimodal table, tests the fused
model against the best unimodal one (paired bootstrap, DeLong) and counts complementarity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrfuse.data import check_patient_leakage
from cxrfuse.data.manifest import read_manifest
from cxrfuse.evaluation.ablation import (
    complementarity,
    format_table,
    leakage_probe,
    modality_name,
    modality_table,
    shuffle_sensitivity,
)
from cxrfuse.evaluation.bootstrap import bootstrap_ci, delong_test, paired_bootstrap, seed_summary
from cxrfuse.evaluation.metrics import (
    HEADLINE,
    choose_thresholds,
    compute_metrics,
    parse_threshold,
)
from cxrfuse.evaluation.plots import (
    plot_confusion,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_venn,
)
from cxrfuse.evaluation.subgroups import study_attributes, subgroup_metrics
from cxrfuse.evaluation.verdicts import (
    baselines,
    experiment_conclusion,
    paired_verdict,
    run_verdicts,
)
from cxrfuse.inference import load_run
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import ExperimentDir, RunDir, RunInfo, p_column, y_column
from cxrfuse.rundir.layout import RUN_PLOTS
from cxrfuse.runtime import environment_info, now_iso
from cxrfuse.text import TextConfig

EVALUATED_KINDS = ("head", "finetune")
ProbeCache = dict[str, dict[str, Any]]
"""Leakage probes already run in this process, keyed by manifest, text configuration, task."""
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


# ------------------------------------------------------------------------------ inputs
def split_arrays(
    frame: pd.DataFrame, labels: Sequence[str], split: str
) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """(y_true, y_prob, study ids) of one split."""
    part = frame[frame["split"] == split]
    y = part[[y_column(n) for n in labels]].to_numpy(dtype=np.float64)
    p = part[[p_column(n) for n in labels]].to_numpy(dtype=np.float64)
    return y, p, part["study_id"].astype(str).reset_index(drop=True)


def text_config_of(run: RunDir) -> TextConfig | None:
    """The text configuration a run's model reads (its sidecar's), None for image-only runs."""
    text = run.sidecar().text if run.sidecar_path.is_file() else None
    if text is None and run.config_path.is_file():
        config = run.run_config()
        return config.text.text_config() if "text" in config.model.modalities else None
    return None if text is None else TextConfig(**text.text_config)


# ------------------------------------------------------------------------------ one run
def run_leakage_probe(info: RunInfo, run: RunDir, cache: ProbeCache | None = None, *,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:  # fmt: skip
    """The leakage probe of a run that reads text, ``{"skipped": reason}``, or None (no text).

    ``cache`` (e.g. one per experiment) reuses a probe of the same manifest, text and task.
    """
    if "text" not in info.modalities:
        return None
    config = text_config_of(run)
    if config is None:
        return {"skipped": "no text configuration found in model.json or config.yaml"}
    if not info.manifest:
        return {"skipped": "run.json names no manifest"}
    task = info.task
    path = resolve_manifest(info.manifest, run.path)
    stamp = path.stat().st_mtime if path.exists() else None
    key = json.dumps([str(path), stamp, config.model_dump(), task, n_boot, seed], sort_keys=True)
    cache = {} if cache is None else cache
    if key not in cache:
        try:
            manifest = read_manifest(path)
            cache[key] = leakage_probe(
                manifest,
                config,
                task if task in manifest.tasks or task in manifest.labels else info.labels,
                n_boot=n_boot,
                seed=seed,
            )
        except CxrfuseError as exc:
            return {"skipped": str(exc)}
    return cache[key]


def resolve_manifest(path: str | Path, run_dir: Path) -> Path:
    """A path from run.json: as written, else relative to the run directory."""
    path = Path(path)
    return path if path.exists() or path.is_absolute() else (run_dir / path)


def evaluation_settings(run: RunDir) -> dict[str, Any]:
    """``threshold`` and ``n_boot`` of the run config's ``evaluation`` section."""
    section = run.run_config().evaluation
    return {"threshold": section.threshold, "n_boot": int(section.n_boot)}


def evaluate_run(
    run_dir: str | Path | RunDir,
    threshold: str | float | None = None,
    n_boot: int | None = None,
    seed: int = 0,
    *,
    shuffle: Sequence[str] = (),
    repeats: int = 5,
    leakage: bool = True,
    plots: bool = True,
    probe_cache: ProbeCache | None = None,
) -> dict[str, Any]:
    """Evaluate one finished run; writes ``metrics.json``, the plots (and ``ablation.json``
    when ``shuffle`` names modalities) and returns the metrics dict.

    Thresholds are chosen on the val split with ``threshold`` (``"f1"``, ``"youden"``, ``"0.5"``
    or a number) and applied to test; intervals are percentile bootstraps over test studies
    (``n_boot=0``: none). ``None`` takes the value from the run config's ``evaluation`` section.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    info = run.require(EVALUATED_KINDS, finished=False, action="`cxrfuse evaluate`")
    defaults = evaluation_settings(run)
    threshold = defaults["threshold"] if threshold is None else threshold
    n_boot = defaults["n_boot"] if n_boot is None else n_boot
    if shuffle:  # fail before the work, not after it
        check_shuffle(info, run, shuffle)
    info = run.require(EVALUATED_KINDS, action="`cxrfuse evaluate`")
    if info.manifest and resolve_manifest(info.manifest, run.path).is_file():
        path = resolve_manifest(info.manifest, run.path)
        check_patient_leakage(read_manifest(path), path)
    labels = list(info.labels)
    if not labels or not info.modalities:
        raise DataError(f"{run.info_path}: fields 'labels' and 'modalities' must not be empty")
    frame = run.predictions(labels)
    val_y, val_p, _ = split_arrays(frame, labels, "val")
    test_y, test_p, test_ids = split_arrays(frame, labels, "test")
    thresholds, warnings = choose_thresholds(val_y, val_p, threshold, labels)
    result: dict[str, Any] = {
        "run": info.name,
        "task": info.task,
        "labels": labels,
        "modalities": list(info.modalities),
        "seed": info.seed,
        "images": info.images,
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
        "evaluated": now_iso(),
        "environment": environment_info(),
    }
    result["test"]["baselines"] = baselines(test_y, labels)
    result["test"]["verdicts"] = run_verdicts(
        test_y, test_p, thresholds, labels, y_val=val_y, ci=result["ci"],
        threshold_method=parse_threshold(threshold), n_boot=n_boot, seed=seed,
        fit=info.fit.model_dump() if info.fit else None,
    )
    if leakage:
        result["leakage"] = run_leakage_probe(info, run, probe_cache, seed=seed,
                                              n_boot=max(n_boot, LEAKAGE_MIN_BOOT))  # fmt: skip
    if plots:
        result["plots"] = _run_plots(run, result, test_y, test_p)
    result["subgroups"] = run_subgroups(run, info, test_y, test_p, thresholds, test_ids,
                                        n_boot=min(n_boot, SUBGROUP_BOOT), seed=seed, plots=plots)
    run.write_metrics(result)
    run.set_thresholds(result["thresholds"], str(threshold))
    if shuffle:
        result["shuffle"] = shuffle_run(run, shuffle, repeats=repeats, seed=seed,
                                        thresholds=thresholds, n_boot=n_boot)  # fmt: skip
    return result


LEAKAGE_MIN_BOOT = 200
"""Resamples of the leakage probe's paired interval even when ``n_boot`` is 0 (its warning
needs the interval; the probe's bootstrap takes well under a second)."""
SUBGROUP_BOOT = 200
"""Bootstrap resamples per subgroup (at most; each subgroup is resampled on its own)."""


def run_subgroups(run: RunDir, info: RunInfo, y: np.ndarray, p: np.ndarray, thresholds: np.ndarray,
                  study_ids: pd.Series, *, n_boot: int, seed: int, plots: bool) -> dict[str, Any]:  # fmt: skip
    """Test-set metrics per sex, age band, view and dataset (the attributes the run's manifest
    has), or ``{"skipped": reason}`` when the manifest cannot be read."""
    if not info.manifest:
        return {"skipped": "run.json names no manifest"}
    try:
        manifest = read_manifest(resolve_manifest(info.manifest, run.path))
    except CxrfuseError as exc:
        return {"skipped": str(exc)}
    attributes = study_attributes(manifest, list(study_ids))
    result = subgroup_metrics(y, p, thresholds, list(info.labels), attributes, n_boot=n_boot,
                              seed=seed, plot_path=run.subgroup_plot if plots else None)  # fmt: skip
    result["plots"] = [str(Path(x).relative_to(run.path)) for x in result["plots"]]
    return result


def _run_plots(
    run: RunDir, result: Mapping[str, Any], test_y: np.ndarray, test_p: np.ndarray
) -> list[str]:
    out = run.plots_dir
    name = modality_name(result["modalities"])
    labels = result["labels"]
    roc, pr, confusion, reliability = (out / f for f in RUN_PLOTS)
    paths = [
        plot_roc(test_y, {name: test_p}, labels, roc),
        plot_pr(test_y, {name: test_p}, labels, pr),
        plot_confusion(result["test"]["per_label"], confusion),
        plot_reliability(result["test"]["per_label"], reliability),
    ]
    if run.training_curves.exists():  # drawn by training (its one writer), listed here
        paths.append(run.training_curves)
    return [str(p.relative_to(run.path)) for p in paths]


def check_shuffle(info: RunInfo, run: RunDir, modalities: Sequence[str]) -> None:
    """Raise unless the run uses every modality to shuffle."""
    unused = [m for m in modalities if m not in info.modalities]
    if unused:
        raise CxrfuseError(f"{run.path}: cannot shuffle {unused}: the run uses only "
                           f"{info.modalities}")  # fmt: skip


def shuffle_run(
    run_dir: str | Path | RunDir,
    modalities: Sequence[str],
    *,
    repeats: int = 5,
    seed: int = 0,
    thresholds: np.ndarray | float | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Bimodal sensitivity test of a trained run; merges the results into ``ablation.json``
    and returns them (each drop with its paired-bootstrap interval over ``n_boot`` resamples
    of the test studies)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    info = run.require(EVALUATED_KINDS, action="a shuffle test")
    check_shuffle(info, run, modalities)
    if thresholds is None:
        stored = run.metrics().thresholds if run.has_metrics() else {}
        thresholds = np.array([stored.get(n, 0.5) for n in info.labels])
    model = load_run(run)
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
            labels=info.labels,
            n_boot=n_boot,
        )
        for m in modalities
    }
    run.merge_ablation("shuffle", results)
    return results


# ------------------------------------------------------------------------------ experiments
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
