"""Experiment tracking through Lightning's own loggers (MLflow, TensorBoard, CSV).

While a run trains, :func:`make_logger` gives the ``Trainer`` its logger: the resolved config
(flattened) as parameters, and :class:`HistoryLogging` logs every epoch's train and val
metrics (``train/loss``, ``val/auroc``, ... at step = epoch). Where the run was logged is
kept in ``tracking.json``, so that :func:`log_evaluation` (after ``metrics.json`` is
written) adds the test metrics with their intervals, the verdicts when the evaluation wrote
any, and the artifacts (report.html, the model card, plots) to the same tracker run.

The logger itself is built by :func:`cxrfuse.rundir.tracking.make_tracker` (shared with
``generate finetune``). MLflow writes to a local SQLite store (``mlruns.db`` beside the runs
dir, no server) unless ``tracking.uri`` or ``$MLFLOW_TRACKING_URI`` names another; artifacts
go to ``mlartifacts/`` beside a SQLite store.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from cxrfuse.config import ClipConfig, RunConfig, default_mlflow_uri
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import RunDir, layout
from cxrfuse.rundir.tracking import DEFAULT_EXPERIMENT, flatten, make_tracker
from cxrfuse.rundir.tracking import mlflow_logger as _mlflow_logger

__all__ = ["DEFAULT_EXPERIMENT", "HistoryLogging", "evaluation_metric_values", "flatten", "log_evaluation",
           "make_logger", "mlflow_uri", "read_record", "run_artifacts", "verdict_tags"]


def mlflow_uri(config: RunConfig | ClipConfig) -> str:
    """The MLflow tracking URI of a run (see :class:`~cxrfuse.config.TrackingConfig`)."""
    return config.tracking.uri or default_mlflow_uri(config.runs_dir)


def make_logger(config: RunConfig | ClipConfig, run: RunDir) -> Any:
    """The Lightning logger of ``config.tracking`` (``None`` for ``none``), with the config
    logged as parameters; ``tracking.json`` records where it writes
    (:func:`cxrfuse.rundir.tracking.make_tracker`)."""
    return make_tracker(config.tracking, run.path, name=config.name,
                        params=config.model_dump(mode="json"), runs_dir=config.runs_dir,
                        tags={"cxrfuse.run_dir": str(run.path.resolve())})  # fmt: skip


class HistoryLogging(pl.Callback):
    """Logs each epoch's rows of ``module.history`` (train and val, every metric) to the
    trainer's loggers at step = epoch, as ``<split>/<metric>``."""

    def __init__(self) -> None:
        self._done = 0

    def _flush(self, trainer: Any, module: Any) -> None:
        history = getattr(module, "history", [])
        for row in history[self._done:]:
            metrics = {f"{row['split']}/{k}": float(v) for k, v in row.items()
                       if k not in ("epoch", "split") and _finite(v)}  # fmt: skip
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=int(row["epoch"]))
        self._done = len(history)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        self._flush(trainer, module)

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self._flush(trainer, module)

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        self._flush(trainer, module)
        for logger in trainer.loggers:
            logger.save()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def evaluation_metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``metrics.json`` as flat tracker metrics: ``test/macro/auroc`` with ``.../low`` and
    ``.../high`` (the bootstrap interval), per label, and the val-chosen thresholds."""
    out: dict[str, float] = {}
    test = metrics.get("test", {})
    for name, value in (test.get("macro") or {}).items():
        if _finite(value):
            out[f"test/macro/{name}"] = float(value)
    for label, row in (test.get("per_label") or {}).items():
        for name, value in row.items():
            if name in ("n", "positives", "threshold") or not _finite(value):
                continue
            out[f"test/{label}/{name}"] = float(value)
    for key, interval in (metrics.get("ci") or {}).items():
        key = key.removeprefix("label/")
        for end in ("low", "high"):
            if isinstance(interval, Mapping) and _finite(interval.get(end)):
                out[f"test/{key}/{end}"] = float(interval[end])
    for label, value in (metrics.get("thresholds") or {}).items():
        if _finite(value):
            out[f"threshold/{label}"] = float(value)
    leakage = metrics.get("leakage") or {}
    gap = leakage.get("gap") if isinstance(leakage, Mapping) else None
    if _finite(gap):
        out["leakage/gap"] = float(gap)
    return {k.replace(" ", "_"): v for k, v in out.items()}


def verdict_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """``test.verdicts`` of ``metrics.json`` (when the evaluation wrote any) as tags."""
    verdicts = (metrics.get("test") or {}).get("verdicts")
    if not verdicts:
        return {}
    if isinstance(verdicts, Mapping):
        items: Iterator[tuple[str, Any]] = iter(verdicts.items())
    else:
        items = ((_verdict_name(v, i), v) for i, v in enumerate(verdicts))
    out: dict[str, str] = {}
    for name, value in items:
        if isinstance(value, Mapping) and isinstance(value.get("message"), str):
            text = value["message"]
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
        key = f"verdict.{re.sub(r'[^A-Za-z0-9_ ./-]', '_', name)}"
        while key in out:  # the same label and kind twice
            key += "_"
        out[key] = text[:5000]
    return out


def _verdict_name(verdict: Any, index: int) -> str:
    """A verdict's tag name: its ``name``, else ``<label>.<kind>`` (``Nodule.chance``), else
    its position."""
    if isinstance(verdict, Mapping):
        if verdict.get("name"):
            return str(verdict["name"])
        parts = [str(verdict[k]) for k in ("label", "kind") if verdict.get(k)]
        if parts:
            return ".".join(parts)
    return str(index)


def run_artifacts(run: RunDir) -> list[Path]:
    """The files a tracker run gets: report.html, the model card, metrics.json, the plots."""
    files = [run.report_html, run.path / layout.MODEL_CARD, run.metrics_path]
    files += sorted(run.plots_dir.glob("*.png")) if run.plots_dir.is_dir() else []
    return [p for p in files if p.is_file()]


def read_record(run: RunDir) -> dict[str, Any] | None:
    """``tracking.json`` of a run, or ``None`` when it was not tracked."""
    path = run.path / layout.TRACKING
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CxrfuseError(f"{path}: unreadable tracking record ({err})") from err


def log_evaluation(run_dir: str | Path) -> dict[str, Any] | None:
    """Add a run's evaluation (test metrics + intervals, verdicts, artifacts) to the tracker
    run it trained in; ``None`` when the run was not tracked or has no ``metrics.json``."""
    run = RunDir(run_dir)
    record = read_record(run)
    if record is None or not run.metrics_path.is_file():
        return None
    metrics = json.loads(run.metrics_path.read_text(encoding="utf-8"))
    values = evaluation_metric_values(metrics)
    tags = verdict_tags(metrics)
    artifacts = run_artifacts(run)
    if record["kind"] == "mlflow":
        logger = _mlflow_logger(record["uri"], record["experiment"], None, record["run_id"])
        logger.log_metrics(values)
        client = logger.experiment
        for key, value in tags.items():
            client.set_tag(record["run_id"], key, value)
        for path in artifacts:
            folder = "plots" if path.parent == run.plots_dir else None
            client.log_artifact(record["run_id"], str(path), folder)
        logger.finalize("success")
    else:
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        if record["kind"] == "tensorboard":
            logger = TensorBoardLogger(save_dir=str(run.path), name=layout.LOGS,
                                       version="tensorboard", default_hp_metric=False)  # fmt: skip
            if tags:
                for key, text in tags.items():
                    logger.experiment.add_text(key, text)
        else:
            logger = CSVLogger(save_dir=str(run.path), name=layout.LOGS,
                               version="csv-evaluation")  # a reopened CSV logger would overwrite
            if tags:
                logger.log_hyperparams(tags)
        logger.log_metrics(values, step=0)
        logger.finalize("success")
        artifacts = []  # the run directory itself holds them
    return {"kind": record["kind"], "metrics": len(values), "verdicts": len(tags),
            "artifacts": [p.name for p in artifacts]}  # fmt: skip
