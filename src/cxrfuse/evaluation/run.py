"""Evaluate run and experiment directories (read and written through :mod:`cxrfuse.rundir`).

:func:`evaluate_run` reads ``run.json`` and ``predictions.parquet``, chooses thresholds on the
validation split, scores the test split with bootstrap intervals, runs the leakage probe for
text models, draws the plots and writes ``metrics.json`` (and the thresholds into
``model.json``). Experiments (grids of runs): :mod:`cxrfuse.evaluation.experiment`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfuse.data import check_patient_leakage
from cxrfuse.data.manifest import read_manifest
from cxrfuse.evaluation.ablation import (
    leakage_probe,
    modality_name,
    shuffle_sensitivity,
)
from cxrfuse.evaluation.bootstrap import bootstrap_ci
from cxrfuse.evaluation.metrics import (
    choose_thresholds,
    compute_metrics,
    parse_threshold,
)
from cxrfuse.evaluation.plots import (
    plot_confusion,
    plot_pr,
    plot_reliability,
    plot_roc,
)
from cxrfuse.evaluation.subgroups import study_attributes, subgroup_metrics
from cxrfuse.evaluation.verdicts import (
    baselines,
    run_verdicts,
)
from cxrfuse.inference import load_run
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import RunDir, RunInfo, p_column, y_column
from cxrfuse.rundir.layout import RUN_PLOTS
from cxrfuse.runtime import environment_info, now_iso
from cxrfuse.text import TextConfig

EVALUATED_KINDS = ("head", "finetune")
ProbeCache = dict[str, dict[str, Any]]
"""Leakage probes already run in this process, keyed by manifest, text configuration, task."""


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
