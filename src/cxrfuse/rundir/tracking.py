"""The experiment trackers (Lightning's own loggers: MLflow, TensorBoard, CSV) of any folder
that trains: a run directory (``training``, ``clip``) or a LoRA generation directory
(``generation``, which may not import ``training``).

:func:`make_tracker` builds the logger of a :class:`~cxrfuse.config.TrackingConfig`, logs the
parameters and records where it writes in the folder's ``tracking.json``, so a later stage
(``training.tracking.log_evaluation``) adds to the same tracker run. MLflow writes to a local
SQLite store (``mlruns.db`` beside the runs dir, no server) unless ``tracking.uri`` or
``$MLFLOW_TRACKING_URI`` names another; artifacts go to ``mlartifacts/`` beside a SQLite store.
TensorBoard and CSV write under the folder's ``logs/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrfuse.config import TrackingConfig, default_mlflow_uri
from cxrfuse.files import write_json
from cxrfuse.problems import ConfigError
from cxrfuse.rundir import layout

DEFAULT_EXPERIMENT = "cxrfuse"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and ``None`` become strings."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def artifact_location(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite MLflow store (None: the store's own default)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def mlflow_logger(uri: str, experiment: str, run_name: str | None, run_id: str | None,
                  tags: Mapping[str, str] | None = None) -> Any:  # fmt: skip
    """Lightning's ``MLFlowLogger`` (a new run, or ``run_id`` reopened)."""
    from lightning.pytorch.loggers import MLFlowLogger

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri,
                            tags=dict(tags or {}) or None, run_id=run_id,
                            artifact_location=artifact_location(uri))  # fmt: skip
    except ModuleNotFoundError as err:
        raise ConfigError("tracking.kind 'mlflow' needs the mlflow package "
                          "(pip install mlflow-skinny)") from err


def make_tracker(tracking: TrackingConfig, folder: Path, *, name: str | None,
                 params: Mapping[str, Any], runs_dir: str | Path,
                 tags: Mapping[str, str] | None = None) -> Any:  # fmt: skip
    """The Lightning logger of ``tracking`` (``None`` for ``none``) for the folder ``folder``,
    with ``params`` (flattened) logged; ``folder/tracking.json`` records where it writes.
    ``runs_dir``: the MLflow store defaults to ``mlruns.db`` beside it."""
    if tracking.kind == "none":
        return None
    if tracking.kind == "mlflow":
        uri = tracking.uri or default_mlflow_uri(runs_dir)
        experiment = tracking.experiment or DEFAULT_EXPERIMENT
        logger = mlflow_logger(uri, experiment, name, None, {**tracking.tags, **dict(tags or {})})
        record = {"kind": "mlflow", "uri": uri, "experiment": experiment,
                  "run_id": logger.run_id}  # fmt: skip
    elif tracking.kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(save_dir=str(folder), name=layout.LOGS, version="tensorboard",
                                   default_hp_metric=False)  # fmt: skip
        record = {"kind": "tensorboard", "log_dir": logger.log_dir}
    else:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(save_dir=str(folder), name=layout.LOGS, version="csv")
        record = {"kind": "csv", "log_dir": logger.log_dir}
    logger.log_hyperparams(flatten(params))
    write_json(folder / layout.TRACKING, record, indent=2)
    return logger
