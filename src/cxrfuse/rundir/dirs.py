"""Run and experiment directories: the only code that knows their file names.

Every reader and writer of a run directory goes through :class:`RunDir` (one run) or
:class:`ExperimentDir` (a grid of runs). Writes are atomic (temp file, fsync, rename), so a
killed process never leaves half a file; JSON is strict (NaN as null). Paths that a sidecar
names (a fine-tuned encoder, a fitted text state) are resolved inside the run directory or
refused (:meth:`RunDir.inside`). The folders a run or experiment holds (generation outputs,
external validations) and the shared base class are in :mod:`cxrfuse.rundir.folders`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from cxrfuse.config import (
    ClipConfig,
    ExperimentConfig,
    RunConfig,
    validate_clip_config,
    validate_run,
)
from cxrfuse.files import atomic_path, write_json, write_text
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import layout
from cxrfuse.rundir.folders import (
    ExternalDir,
    GenerationDir,
    _Dir,
    _read_json,
    _read_parquet,
    _validated,
    p_column,
    y_column,
)
from cxrfuse.rundir.models import (
    CLIP_FORMAT,
    HEAD_FORMAT,
    KIND_VERBS,
    ClipSidecar,
    HeadSidecar,
    Metrics,
    RunInfo,
    RunKind,
    TextState,
)


class RunDir(_Dir):
    """One run directory (``runs/<name>/``); see :mod:`cxrfuse.rundir.layout` for its files."""

    # ------------------------------------------------------------------ locations
    config_path = property(lambda self: self.path / layout.CONFIG)
    info_path = property(lambda self: self.path / layout.RUN_INFO)
    sidecar_path = property(lambda self: self.path / layout.SIDECAR)
    weights_path = property(lambda self: self.path / layout.WEIGHTS)
    encoder_weights_path = property(lambda self: self.path / layout.ENCODER_WEIGHTS)
    predictions_path = property(lambda self: self.path / layout.PREDICTIONS)
    epochs_path = property(lambda self: self.path / layout.EPOCHS)
    metrics_path = property(lambda self: self.path / layout.METRICS)
    ablation_path = property(lambda self: self.path / layout.ABLATION)
    checkpoints_dir = property(lambda self: self.path / layout.CHECKPOINTS)
    text_model_dir = property(lambda self: self.path / layout.TEXT_MODEL)
    attribution_dir = property(lambda self: self.path / layout.ATTRIBUTION)
    training_curves = property(lambda self: self.plots_dir / layout.TRAINING_CURVES)
    clip_curves = property(lambda self: self.plots_dir / layout.CURVES)

    def generation_dirs(self) -> list[GenerationDir]:
        """The generation directories stored under this run (``generation/<name>/``)."""
        root = self.path / layout.GENERATION
        return [GenerationDir(p.parent) for p in sorted(root.glob(f"*/{layout.GENERATED}"))]

    def generation_dir(self, name: str) -> GenerationDir:
        return GenerationDir(self.path / layout.GENERATION / name)

    def external_dirs(self) -> list[ExternalDir]:
        """The external validations stored under this run (``external/<name>/``)."""
        root = self.path / layout.EXTERNAL
        return [ExternalDir(p.parent) for p in sorted(root.glob(f"*/{layout.EXTERNAL_RESULT}"))]

    def external_dir(self, name: str) -> ExternalDir:
        return ExternalDir(self.path / layout.EXTERNAL / name)

    def explain_dir(self, method: str) -> Path:
        """Where ``cxrfuse explain --method METHOD`` writes its overlays."""
        return self.path / layout.EXPLAIN / method

    def pointing_game_files(self) -> list[tuple[str, Path]]:
        """(method, ``scores`` folder) of every scored explanation, sorted."""
        found = sorted((self.path / layout.EXPLAIN).glob(
            f"*/{layout.EXPLAIN_SCORES}/{layout.POINTING_GAME}.csv"))  # fmt: skip
        return [(p.parent.parent.name, p.parent) for p in found]

    def inside(self, relative: str | Path, what: str) -> Path:
        """``relative`` (a path a sidecar names) inside this run directory, or a DataError.

        Absolute paths and paths that leave the directory (``../x``, symlinks out of it) are
        refused, so a model file can never make cxrfuse read elsewhere.
        """
        rel = Path(relative)
        root = self.path.resolve()
        target = (root / rel).resolve()
        if rel.is_absolute() or (target != root and root not in target.parents):
            raise DataError(f"{self.sidecar_path}: {what} {str(relative)!r} is not a file "
                            f"inside the run directory {self.path}")  # fmt: skip
        return target

    # ------------------------------------------------------------------ run.json
    def exists(self) -> bool:
        return self.info_path.is_file()

    def info(self) -> RunInfo:
        """The run's ``run.json``; errors name the file and field."""
        if not self.info_path.is_file():
            raise DataError(f"{self.path}: not a finished run (no {self.info_path.name}; is this "
                            "a cxrfuse run directory?)")  # fmt: skip
        raw = _read_json(self.info_path, "is this a cxrfuse run directory?")
        if isinstance(raw, Mapping) and "kind" not in raw and "name" in raw:
            try:
                return RunInfo.from_legacy(dict(raw))
            except ValidationError as err:
                raise DataError(f"{self.info_path}: {err.errors()[0]['msg']}") from None
        return _validated(RunInfo, raw, self.info_path)

    def status(self) -> str | None:
        """``running`` / ``finished`` / ``failed``; None when there is no readable run.json."""
        try:
            return self.info().status
        except CxrfuseError:
            return None

    def kind(self) -> RunKind | None:
        """``head`` / ``finetune`` / ``clip``; None when there is no readable run.json."""
        try:
            return self.info().kind
        except CxrfuseError:
            return None

    def write_info(self, info: RunInfo) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return write_json(self.info_path, info.model_dump(mode="json", exclude_none=True),
                          indent=2)  # fmt: skip

    def require(self, kinds: Sequence[RunKind] = ("head", "finetune", "clip"), *,
                finished: bool = True, action: str = "this") -> RunInfo:  # fmt: skip
        """run.json, checked to be of one of ``kinds`` (and finished): otherwise one clear
        error that says what the run's kind supports."""
        info = self.info()
        if info.kind not in kinds:
            raise DataError(f"{self.path}: a {info.kind} run; {action} needs a "
                            f"{' or '.join(kinds)} run. For this run use: "
                            f"{KIND_VERBS[info.kind]}")  # fmt: skip
        if finished and info.status != "finished":
            detail = f" (error: {info.error})" if info.error else ""
            raise DataError(f"{self.info_path}: status is {info.status!r}, not 'finished'"
                            f"{detail}")  # fmt: skip
        return info

    # ------------------------------------------------------------------ config.yaml
    def write_config(self, config: RunConfig | ClipConfig) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return write_text(self.config_path, config.to_yaml())

    def config_mapping(self) -> dict[str, Any]:
        """The raw mapping of ``config.yaml`` (empty when there is none)."""
        if not self.config_path.is_file():
            return {}
        try:
            raw = yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as err:
            raise DataError(f"{self.config_path}: not valid YAML ({err})") from err
        return raw if isinstance(raw, dict) else {}

    def run_config(self) -> RunConfig:
        """The run config of a head or fine-tune run."""
        if not self.config_path.is_file():
            raise DataError(f"{self.config_path}: missing; is {self.path} a cxrfuse run?")
        return validate_run(self.config_mapping(), str(self.config_path))

    def clip_config(self) -> ClipConfig:
        """The config of a CLIP run."""
        if not self.config_path.is_file():
            raise DataError(f"{self.config_path}: missing; is {self.path} a `cxrfuse clip "
                            "train` run?")  # fmt: skip
        return validate_clip_config(self.config_mapping(), str(self.config_path))

    def same_config(self, config: RunConfig) -> bool:
        """Whether config.yaml holds exactly ``config`` (a rerun may skip the run)."""
        return self.config_mapping() == config.model_dump(mode="json")

    # ------------------------------------------------------------------ model.json + weights
    def write_sidecar(self, sidecar: HeadSidecar | ClipSidecar) -> Path:
        payload = sidecar.model_dump(mode="json", by_alias=True)
        return write_json(self.sidecar_path, payload, indent=2)

    def sidecar(self) -> HeadSidecar:
        """``model.json`` of a head or fine-tune run."""
        raw = _read_json(self.sidecar_path, "is this a finished cxrfuse run directory?")
        if isinstance(raw, Mapping) and raw.get("format") != HEAD_FORMAT:
            raise DataError(f"{self.sidecar_path}: format {raw.get('format')!r}, expected "
                            f"{HEAD_FORMAT!r}")  # fmt: skip
        return _validated(HeadSidecar, raw, self.sidecar_path)

    def clip_sidecar(self) -> ClipSidecar:
        """``model.json`` of a CLIP run."""
        raw = _read_json(self.sidecar_path, f"is {self.path} a finished `cxrfuse clip train` run?")
        if isinstance(raw, Mapping) and raw.get("format") != CLIP_FORMAT:
            raise DataError(f"{self.sidecar_path}: format {raw.get('format')!r}, expected "
                            f"{CLIP_FORMAT!r}")  # fmt: skip
        return _validated(ClipSidecar, raw, self.sidecar_path)

    def set_thresholds(self, thresholds: Mapping[str, float], method: str) -> None:
        """Store the val-chosen decision thresholds (and how) in ``model.json``."""
        if self.sidecar_path.is_file():
            sidecar = self.sidecar()
            sidecar.thresholds = {k: float(v) for k, v in thresholds.items()}
            sidecar.threshold_method = str(method)
            self.write_sidecar(sidecar)

    def write_weights(self, state: Mapping[str, Any], *, encoder: bool = False,
                      metadata: Mapping[str, str] | None = None) -> Path:  # fmt: skip
        """A state_dict as safetensors: the head's (``model.safetensors``) or the fine-tuned
        encoder's (``encoder.safetensors``)."""
        path = self.encoder_weights_path if encoder else self.weights_path
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        return path

    def read_weights(self, file: str | None = None, *, what: str = "model weights") -> dict:
        """A state_dict from ``model.safetensors`` (or ``file``, inside the run directory)."""
        path = self.inside(file, what) if file else self.weights_path
        if not path.is_file():
            raise DataError(f"{path}: missing ({what}); did the run finish writing its weights?")
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable safetensors file ({err})") from err

    def write_text_state(self, payload: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
                         ) -> TextState:  # fmt: skip
        """Store a fitted text encoder's state (JSON + safetensors arrays)."""
        write_json(self.path / layout.TEXT_STATE_JSON, dict(payload))
        with atomic_path(self.path / layout.TEXT_STATE_TENSORS) as tmp:
            save_numpy({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        return TextState(json=layout.TEXT_STATE_JSON, tensors=layout.TEXT_STATE_TENSORS)

    def read_text_state(self, state: TextState) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(payload, arrays) of :meth:`write_text_state`, from inside this run directory."""
        json_path = self.inside(state.json_file, "text.state.json")
        tensors = self.inside(state.tensors, "text.state.tensors")
        payload = _read_json(json_path, "the fitted text encoder state")
        if not isinstance(payload, dict):
            raise DataError(f"{json_path}: not a text encoder state")
        try:
            arrays = load_numpy(str(tensors))
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{tensors}: not a readable safetensors file ({err})") from err
        return payload, arrays

    # ------------------------------------------------------------------ tables
    def write_predictions(self, frame: pd.DataFrame) -> Path:
        return self._write_table(self.predictions_path, frame)

    def predictions(self, labels: Sequence[str], splits: Iterable[str] = ("val", "test")
                    ) -> pd.DataFrame:  # fmt: skip
        """``predictions.parquet``, checked for the contract's columns and the splits."""
        path = self.predictions_path
        if not path.is_file():
            raise DataError(f"{path}: missing; the run has no predictions to evaluate")
        frame = _read_parquet(path)
        wanted = ["study_id", "split"] + [c for n in labels for c in (y_column(n), p_column(n))]
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        for split in splits:
            if not (frame["split"] == split).any():
                raise DataError(f"{path}: no rows with split == {split!r} (thresholds come "
                                "from val, metrics from test)")  # fmt: skip
        return frame

    def write_epochs(self, frame: pd.DataFrame) -> Path:
        return self._write_table(self.epochs_path, frame, csv=True)

    def epochs(self) -> pd.DataFrame | None:
        return pd.read_csv(self.epochs_path) if self.epochs_path.is_file() else None

    def clear_checkpoints(self) -> None:
        """Delete the training checkpoints (no pickled checkpoint stays behind)."""
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)

    # ------------------------------------------------------------------ analyses
    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        return write_json(self.metrics_path, dict(metrics), indent=2)

    def has_metrics(self) -> bool:
        return self.metrics_path.is_file()

    def metrics(self) -> Metrics:
        """``metrics.json``, validated (``.test`` typed; ``.as_result()`` the mapping
        ``evaluate_run`` returns)."""
        raw = _read_json(self.metrics_path, f"run `cxrfuse evaluate {self.path}` first")
        return _validated(Metrics, raw, self.metrics_path)

    def ablation(self) -> dict[str, Any]:
        return _read_json(self.ablation_path, "ablation") if self.ablation_path.is_file() else {}

    def merge_ablation(self, section: str, results: Mapping[str, Any]) -> Path:
        """Add ``results`` under ``section`` of ``ablation.json`` (other results are kept)."""
        ablation = self.ablation()
        ablation.setdefault(section, {}).update(results)
        return write_json(self.ablation_path, ablation, indent=2)

    def analysis_path(self, name: str) -> Path:
        """The file of a CLIP analysis or generation result (``layout.RETRIEVAL`` ...)."""
        return self.path / name

    def write_analysis(self, name: str, payload: Mapping[str, Any],
                       markdown: str | None = None) -> Path:  # fmt: skip
        """``name`` (a JSON file of the layout) and, with ``markdown``, its ``.md`` twin."""
        path = write_json(self.analysis_path(name), dict(payload), indent=2)
        if markdown is not None:
            write_text(path.with_suffix(".md"), markdown)
        return path

    def analysis(self, name: str) -> dict[str, Any] | None:
        """A stored analysis result, None when that analysis has not run."""
        path = self.analysis_path(name)
        return _read_json(path, name) if path.is_file() else None


class ExperimentDir(_Dir):
    """A grid of runs: ``experiment.yaml``, ``runs/<name>/`` and the tables across them."""

    config_path = property(lambda self: self.path / layout.EXPERIMENT_CONFIG)
    runs_path = property(lambda self: self.path / layout.RUNS)
    summary_csv = property(lambda self: self.path / layout.SUMMARY_CSV)
    summary_md = property(lambda self: self.path / layout.SUMMARY_MD)
    evaluation_path = property(lambda self: self.path / layout.EVALUATION)
    evaluation_csv = property(lambda self: self.path / layout.EVALUATION_CSV)
    evaluation_md = property(lambda self: self.path / layout.EVALUATION_MD)
    backbones_csv = property(lambda self: self.path / f"{layout.BACKBONES}.csv")
    backbones_md = property(lambda self: self.path / f"{layout.BACKBONES}.md")

    def run(self, name: str) -> RunDir:
        return RunDir(self.runs_path / name)

    def generation_dir(self, name: str) -> GenerationDir:
        """Reports generated from the experiment's data (``generation/<name>/``)."""
        return GenerationDir(self.path / layout.GENERATION / name)

    def generation_dirs(self) -> list[GenerationDir]:
        root = self.path / layout.GENERATION
        return [GenerationDir(p.parent) for p in sorted(root.glob(f"*/{layout.GENERATED}"))]

    def run_dirs(self) -> list[RunDir]:
        """The experiment's runs: ``runs/*/run.json`` (or ``*/run.json``), sorted."""
        found = sorted(p.parent for p in self.path.glob(f"{layout.RUNS}/*/{layout.RUN_INFO}"))
        found = found or sorted(p.parent for p in self.path.glob(f"*/{layout.RUN_INFO}"))
        if not found:
            raise DataError(f"{self.path}: no run directories ({layout.RUNS}/*/"
                            f"{layout.RUN_INFO}) found")  # fmt: skip
        return [RunDir(p) for p in found]

    def write_config(self, experiment: ExperimentConfig) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return write_text(self.config_path, yaml.safe_dump(experiment.model_dump(mode="json"),
                                                           sort_keys=False))  # fmt: skip

    def write_summary(self, table: pd.DataFrame, markdown: str) -> None:
        """The training side's run table (``training.experiment`` only)."""
        self._write_table(self.summary_csv, table, csv=True)
        write_text(self.summary_md, markdown)

    def write_evaluation_tables(self, table: pd.DataFrame, markdown: str) -> None:
        """The evaluation's run table and Markdown (``evaluation`` only)."""
        self._write_table(self.evaluation_csv, table, csv=True)
        write_text(self.evaluation_md, markdown)

    def evaluation_table(self) -> pd.DataFrame | None:
        return pd.read_csv(self.evaluation_csv) if self.evaluation_csv.is_file() else None

    def summary(self) -> pd.DataFrame | None:
        return pd.read_csv(self.summary_csv) if self.summary_csv.is_file() else None

    def write_evaluation(self, evaluation: Mapping[str, Any]) -> Path:
        return write_json(self.evaluation_path, dict(evaluation), indent=2)

    def has_evaluation(self) -> bool:
        return self.evaluation_path.is_file()

    def evaluation(self) -> dict[str, Any]:
        return _read_json(self.evaluation_path, f"run `cxrfuse evaluate {self.path}` first")


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a run.json (any kind, any status)."""
    return (Path(path) / layout.RUN_INFO).is_file()
