"""Grids of runs: every run of an experiment config trained in turn (finished runs with the
same config are skipped, a failed run is recorded and the grid goes on), then
``summary.csv`` (one row per run) and ``summary.md`` (mean and sd over seeds)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrfuse.config import ExperimentConfig, RunConfig, value_slug
from cxrfuse.data import check_patient_leakage
from cxrfuse.data.manifest import read_manifest
from cxrfuse.files import folder_lock
from cxrfuse.problems import CxrfuseError, os_fault
from cxrfuse.rundir import ExperimentDir, RunDir, p_column, y_column
from cxrfuse.store import StudyArrays
from cxrfuse.training.data import build_study_arrays
from cxrfuse.training.inputs import StoredEmbeddings
from cxrfuse.training.module import epoch_metrics
from cxrfuse.training.runner import train_run

log = logging.getLogger(__name__)


def train_experiment(
    experiment: ExperimentConfig,
    *,
    progress: bool = True,
    after_run: Callable[[Path], None] | None = None,
    console: Any = None,
) -> Path:
    """Train every run of the grid (skipping finished ones), then write the summary tables.

    ``after_run(run_dir)`` runs after each newly finished run (e.g. evaluation). A run that
    raises is recorded as failed and the grid goes on.
    """
    exp = ExperimentDir(experiment.experiment_dir)
    with folder_lock(exp.path, "the experiment directory"):
        return _train_locked(experiment, exp, progress, after_run, console)


def _train_locked(experiment: ExperimentConfig, exp: ExperimentDir, progress: bool,
                  after_run: Callable[[Path], None] | None, console: Any) -> Path:  # fmt: skip
    exp.write_config(experiment)
    say = console.print if console is not None else log.info
    runs = experiment.expand()
    for manifest in sorted({str(config.data.manifest) for config in runs}):
        if Path(manifest).is_file():  # a missing one fails each run, named
            check_patient_leakage(read_manifest(manifest), manifest)
    arrays = ArraysCache(runs, progress)
    for i, config in enumerate(runs, 1):
        prefix = f"[{i}/{len(runs)}] {config.name}"
        run = RunDir(config.run_dir)
        if run.status() == "finished" and same_except_tracking(run, config):
            if after_run is not None and not run.metrics_path.is_file():
                say(f"{prefix}: finished before without metrics (killed during evaluation?); "
                    "evaluating")  # fmt: skip
                after_run(config.run_dir)
            else:
                say(f"{prefix}: finished before, skipped")
            continue
        try:
            train_run(config, progress=progress, source=arrays.source(config))
        except Exception as err:  # a failed run must not stop the grid
            if os_fault(err) is not None:
                raise  # a full disk or a read-only folder would fail every run after it
            say(f"{prefix}: FAILED ({type(err).__name__}: {err})")
            continue
        say(f"{prefix}: finished")
        if after_run is not None:
            after_run(config.run_dir)
    write_summary(experiment, runs)
    return exp.path


def _inputs_key(config: RunConfig) -> str:
    """What a run's study arrays depend on, besides its modalities."""
    return json.dumps([str(config.data.manifest), str(config.data.store), config.data.task,
                       config.image.model_dump(mode="json"), config.text.model_dump(mode="json")],
                      sort_keys=True)  # fmt: skip


class ArraysCache:
    """The study arrays of an experiment's runs, assembled once for all the runs that read the
    same manifest, store, task and image and text sides (seeds, losses, heads, modalities),
    with every modality any of them reads; each run gets them restricted to its own
    modalities (no copy). Only the arrays of the latest inputs are kept."""

    def __init__(self, runs: Sequence[RunConfig], progress: bool) -> None:
        self.progress = progress
        self.modalities: dict[str, set[str]] = {}
        for config in runs:
            if config.training.mode == "embeddings":
                key = _inputs_key(config)
                self.modalities.setdefault(key, set()).update(config.model.modalities)
        self.built: dict[str, StudyArrays] = {}

    def source(self, config: RunConfig) -> StoredEmbeddings | None:
        """The run's input source on the shared arrays; None (the run builds its own) for a
        fine-tuning run or when assembling fails (the run then fails with the error)."""
        if config.training.mode != "embeddings":
            return None
        key = _inputs_key(config)
        if key not in self.built:
            every = sorted(self.modalities[key])
            union = config.model_copy(update={
                "model": config.model.model_copy(update={"modalities": every})})  # fmt: skip
            try:
                self.built = {key: build_study_arrays(union, progress=self.progress)}
            except Exception:  # noqa: BLE001 - train_run meets it again and records it
                self.built = {}
                return None
        return StoredEmbeddings(config, self.progress,
                                only_modalities(self.built[key], config.model.modalities))


def only_modalities(arrays: StudyArrays, modalities: Sequence[str]) -> StudyArrays:
    """``arrays`` without the modalities a run does not read (the same arrays, not copies)."""
    info = {**arrays.info, "stores": dict(arrays.info.get("stores", {}))}
    change: dict[str, Any] = {"info": info}
    for side, keys in (("image", ("image", "image_mask")), ("text", ("text", "text_mask"))):
        if side not in modalities:
            change.update(dict.fromkeys(keys))
            info.pop(side, None)
            info["stores"][side] = None
    if "text" not in modalities:
        change["text_encoder"] = None
    return replace(arrays, **change)


def same_except_tracking(run: RunDir, config: RunConfig) -> bool:
    """Whether config.yaml holds ``config`` up to its ``tracking`` section (where a run is
    logged does not change the model, so it is no reason to retrain)."""
    try:
        stored = dict(run.config_mapping())
    except CxrfuseError:
        return False
    current = config.model_dump(mode="json")
    stored.pop("tracking", None)
    current.pop("tracking", None)
    return stored == current


def test_metrics(run: RunDir) -> dict[str, float]:
    """Headline test metrics (threshold 0.5, macro over labels) of a finished run."""
    try:
        labels = run.require(("head", "finetune")).labels
        frame = run.predictions(labels, splits=("test",))
    except CxrfuseError:
        return {}
    test = frame[frame["split"] == "test"]
    scores = epoch_metrics(test[[y_column(n) for n in labels]].to_numpy(),
                           test[[p_column(n) for n in labels]].to_numpy())  # fmt: skip
    return {f"test_{k}": v for k, v in scores.items()}


def write_summary(experiment: ExperimentConfig, runs: Sequence[RunConfig]) -> pd.DataFrame:
    """``summary.csv`` (one row per run) and ``summary.md`` (mean ± sd over seeds)."""
    rows = []
    for config in runs:
        run = RunDir(config.run_dir)
        try:
            info = run.info().model_dump()
        except CxrfuseError:
            info = {}
        row: dict[str, Any] = {"run": config.name}
        for key, value in experiment.grid_values(config).items():
            row[key] = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        row.update(modalities="+".join(config.model.modalities), seed=config.seed,
                   status=info.get("status", "missing"), error=info.get("error"))
        fit = info.get("fit") or {}
        row.update(best_epoch=fit.get("best_epoch"), best_val_loss=fit.get("best_val_loss"),
                   timing_s=info.get("timing_s"))
        row.update(test_metrics(run))
        rows.append(row)
    table = pd.DataFrame(rows)
    ExperimentDir(experiment.experiment_dir).write_summary(table, summary_markdown(experiment, table))
    return table


def summary_markdown(experiment: ExperimentConfig, table: pd.DataFrame) -> str:
    """Mean ± sd over seeds of the headline test metrics, per grid point."""
    metrics = [c for c in table.columns if c.startswith("test_")]
    keys = [k for k in experiment.grid if k in table.columns and k != "model.modalities"]
    group = ["modalities", *keys]
    lines = [f"# {experiment.name}", "",
             (f"{len(table)} run(s), {int((table['status'] == 'finished').sum())} finished; "
             f"seeds {experiment.seeds}. Test metrics at threshold 0.5, macro over labels; "
             "mean ± sd over seeds (sd 0 for one seed)."), ""]
    done = table[table["status"] == "finished"].copy()
    for key in keys:  # readable grid values: full / sub75, focal, lr0.001
        done[key] = [value_slug(key, yaml.safe_load(str(v))) for v in done[key]]
    if not done.empty and metrics:
        agg = []
        for values, part in done.groupby(group, sort=False, dropna=False):
            values = values if isinstance(values, tuple) else (values,)
            row = dict(zip(group, values)) | {"n_seeds": len(part)}
            for m in metrics:
                x = part[m].astype(float)
                row[m.removeprefix("test_")] = f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0.0:.3f}"
            agg.append(row)
        lines.append(pd.DataFrame(agg).to_markdown(index=False))
    failed = table[table["status"] != "finished"]
    if not failed.empty:
        lines += ["", "## Runs not finished", ""]
        lines += [f"- {r.run}: {r.status} {r.error or ''}" for r in failed.itertuples()]
    return "\n".join(lines) + "\n"
