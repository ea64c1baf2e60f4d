"""The folders inside a run or experiment directory (generation outputs, external
validations) and what every directory class shares: the base class, the JSON and Parquet
readers that name the file they refuse, and the predictions column names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel, ValidationError

from cxrfuse.data.manifest import label_slug
from cxrfuse.files import atomic_path, write_json, write_text
from cxrfuse.problems import DataError
from cxrfuse.rundir import layout
from cxrfuse.rundir.models import LoraRunInfo

M = TypeVar("M", bound=BaseModel)


def y_column(label: str) -> str:
    """The predictions.parquet column of a label's truth (``y__<slug>``; NaN unknown)."""
    return f"y__{label_slug(label)}"


def p_column(label: str) -> str:
    """The predictions.parquet column of a label's positive-class probability."""
    return f"p__{label_slug(label)}"


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_bytes())  # bytes: UTF-8, UTF-16 or UTF-32 (RFC 8259)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    except RecursionError as err:
        raise DataError(f"{path}: JSON nested too deeply (arrays or objects inside each other "
                        f"hundreds of levels down); {what}") from err


def _validated(model: type[M], raw: Any, path: Path) -> M:
    """``model`` from ``raw``, or a DataError naming the file and the first bad field."""
    if not isinstance(raw, Mapping):
        raise DataError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(f"{path}: field {field!r}: {first['msg']}") from None


class _Dir:
    """What every directory class shares: its path, name, ``repr``, ``os.fspath`` and the
    files that several of them hold (plots, report)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    plots_dir = property(lambda self: self.path / layout.PLOTS)
    report_html = property(lambda self: self.path / layout.REPORT_HTML)
    report_md = property(lambda self: self.path / layout.REPORT_MD)

    def subgroup_plot(self, attribute: str) -> Path:
        """The plot of one subgroup attribute under ``plots/``."""
        return self.plots_dir / layout.SUBGROUP_PLOT.format(attribute=attribute.replace(" ", "_"))

    def _write_table(self, path: Path, frame: pd.DataFrame, *, csv: bool = False) -> Path:
        """``frame`` as Parquet (or CSV, without the index), atomically."""
        with atomic_path(path) as tmp:
            if csv:
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
        return path



class GenerationDir(_Dir):
    """Generated reports of one generator, their scores and, for a LoRA run, its adapter.
    Every file of a generation directory is written here (or, for the adapter and checkpoint
    folders, at the paths named here)."""

    generated_path = property(lambda self: self.path / layout.GENERATED)
    settings_path = property(lambda self: self.path / layout.GENERATION_SETTINGS)
    scores_path = property(lambda self: self.path / layout.SCORES)
    scores_md = property(lambda self: (self.path / layout.SCORES).with_suffix(".md"))
    study_labels_path = property(lambda self: self.path / layout.STUDY_LABELS)
    study_scores_path = property(lambda self: self.path / layout.STUDY_SCORES)
    adapter_dir = property(lambda self: self.path / layout.ADAPTER)
    lora_info_path = property(lambda self: self.path / layout.LORA_INFO)
    epochs_path = property(lambda self: self.path / layout.EPOCHS)
    curves_path = property(lambda self: self.path / layout.CURVES)

    def exists(self) -> bool:
        return self.generated_path.is_file()

    def write_generated(self, frame: pd.DataFrame, settings: Mapping[str, Any]) -> Path:
        """``generated.parquet`` (the frame) and ``generation.json`` (``settings``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        table = frame.copy()
        table.attrs = {}
        self._write_table(self.generated_path, table)
        write_json(self.settings_path, dict(settings), indent=2)
        return self.generated_path

    def generated(self) -> pd.DataFrame:
        path = self.generated_path
        if not path.is_file():
            raise DataError(f"{path}: missing; is {self.path} a `cxrfuse generate` output?")
        frame = _read_parquet(path)
        missing = [c for c in ("study_id", "generated", "reference") if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
        return frame

    def settings(self) -> dict[str, Any]:
        return _read_json(self.settings_path, "the generation settings")

    def write_scores(self, payload: Mapping[str, Any], markdown: str | None,
                     study_labels: pd.DataFrame | None = None) -> Path:  # fmt: skip
        """``scores.json`` + ``scores.md`` (unless ``markdown`` is None) and
        ``study_labels.csv``."""
        self.path.mkdir(parents=True, exist_ok=True)
        if study_labels is not None:
            self._write_table(self.study_labels_path, study_labels, csv=True)
        if markdown is not None:
            write_text(self.scores_md, markdown)
        return write_json(self.scores_path, dict(payload), indent=2)

    def write_study_scores(self, frame: pd.DataFrame) -> Path:
        """``study_scores.parquet``: per study and system."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self._write_table(self.study_scores_path, frame)

    def has_scores(self) -> bool:
        return self.scores_path.is_file()

    def scores(self) -> dict[str, Any]:
        return _read_json(self.scores_path, f"run `cxrfuse generate score` on {self.path}")

    def write_lora_info(self, info: LoraRunInfo) -> Path:
        """``finetune.json`` of a LoRA fine-tuning."""
        self.path.mkdir(parents=True, exist_ok=True)
        return write_json(self.lora_info_path, info.model_dump(mode="json"), indent=2)

    def lora_info(self) -> LoraRunInfo | None:
        """``finetune.json`` (typed), or None when the folder has none; a DataError names a
        file that is not one."""
        if not self.lora_info_path.is_file():
            return None
        return _validated(LoraRunInfo, _read_json(self.lora_info_path, "the fine-tuning record"),
                          self.lora_info_path)  # fmt: skip


class ExternalDir(_Dir):
    """One external validation of a run: results, predictions, plots."""

    result_path = property(lambda self: self.path / layout.EXTERNAL_RESULT)
    markdown_path = property(lambda self: (self.path / layout.EXTERNAL_RESULT).with_suffix(".md"))
    predictions_path = property(lambda self: self.path / layout.EXTERNAL_PREDICTIONS)

    def plot(self, index: int) -> Path:
        """Plot ``index`` of :data:`layout.EXTERNAL_PLOTS` (ROC, reliability before, after)."""
        return self.plots_dir / layout.EXTERNAL_PLOTS[index]

    def exists(self) -> bool:
        return self.result_path.is_file()

    def write(self, result: Mapping[str, Any], markdown: str, predictions: pd.DataFrame) -> Path:
        """``external_predictions.parquet``, ``external.md`` and ``external.json`` (last)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_table(self.predictions_path, predictions)
        write_text(self.markdown_path, markdown)
        return write_json(self.result_path, dict(result), indent=2)

    def result(self) -> dict[str, Any]:
        return _read_json(self.result_path, f"run `cxrfuse evaluate RUN --on MANIFEST --out {self.path}`")

    def predictions(self) -> pd.DataFrame:
        if not self.predictions_path.is_file():
            raise DataError(f"{self.predictions_path}: missing")
        return pd.read_parquet(self.predictions_path)



def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file of a run directory; an unreadable one is a DataError naming it."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({err}); rerun the step that "
                        "wrote it") from err

