"""Run and experiment configs: pydantic models of the YAML files, overrides, grid expansion.

A **run config** (:class:`RunConfig`) says everything one trained model depends on: data
(manifest, task, store, subsampling), the image and text sides (encoder, its offline
substitute, view fusion, report sections), the fusion head, training (optimiser, schedule,
loss, early stopping, precision, devices), fine-tuning and evaluation settings. An
**experiment config** (:class:`ExperimentConfig`) is a base run config plus a grid of dotted
keys and a list of seeds; :meth:`ExperimentConfig.expand` gives one run config per grid point
and seed, with readable names (``multimodal-focal-sub75-seed0``).

Every model forbids unknown keys. :func:`load_config` re-raises validation errors as
:class:`~cxrfuse.problems.ConfigError` naming the file, the key path (``training.loss.kind``)
and the allowed values or keys. ``overrides`` (``--set key.path=value``) are parsed as YAML
and applied before validation.

Example::

    config = load_run_config("configs/iu-binary-views-mean.yaml", ["training.max_epochs=5"])
    config = apply_offline(config)      # swap in efficientnet-lite0 / minilm / tfidf
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, field_validator, model_validator

from cxrfuse.config.common import (
    MAX_SEED,
    Strict,
    check_folder_name,
    validate_config,
)
from cxrfuse.data.views import ViewMode
from cxrfuse.text import TextConfig
from cxrfuse.vocab import PRE_READ_SECTIONS, Section

Modality = Literal["image", "text"]
EXPERIMENT_RUNS_FOLDER = "runs"
"""Where an experiment keeps its run directories (``<runs_dir>/<experiment>/runs/<run>``);
:data:`cxrfuse.rundir.layout.RUNS` is this folder."""


# ----------------------------------------------------------------------------- sections


class SubsampleConfig(Strict):
    """Seeded subsampling of the training split to a target positive fraction.

    ``positive_fraction: 0.25`` gives the 75:25 negative:positive ratio of design 004: every
    positive study is kept and negatives are drawn (or, when there are too few negatives,
    positives are drawn). For multilabel tasks a study counts as positive when any label is.
    ``seed`` defaults to the run seed.
    """

    positive_fraction: float = Field(gt=0.0, lt=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class DataConfig(Strict):
    """Which studies, labels and embedding store a run uses."""

    manifest: str = "demo-output/phantoms/manifest.parquet"
    task: str = "normal-abnormal"
    store: str = "demo-output/store"
    subsample: SubsampleConfig | None = None
    sampler: Literal["none", "weighted"] = "none"
    image_cache: str | None = Field(
        None, description="decoded-image cache folder (as `cxrfuse embed --cache`): fine-tuning "
        "decodes each image once into it and reads pixels from it in every epoch"
    )


class ImageSideConfig(Strict):
    """The image encoder (frozen, embeddings from the store) and how views are fused."""

    encoder: str = "xrv-densenet121-nih"
    offline_encoder: str = "efficientnet-lite0"
    weights: str = "default"
    input_size: int | None = Field(None, ge=16)
    views: ViewMode = "mean"
    fit: Literal["pad", "crop"] = Field(
        "pad", description="how a non-square image becomes the encoder's square input: pad "
        "(letterboxed, nothing dropped; new runs) or crop (central square, as runs and stores "
        "before this option); a square image is the same under both")
    embed_batch_size: int | None = Field(None, ge=1)  # None: 4 on a CPU, 256 on a GPU


class TextSideConfig(TextConfig):
    """The text encoder and the report text it reads (all :class:`~cxrfuse.text.TextConfig`
    fields, defaulting to the indication only: text that exists before the image is read)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    encoder: str = "biobert"
    offline_encoder: str = "minilm"
    weights: str = "default"
    sections: list[Section] = Field(default_factory=lambda: list(PRE_READ_SECTIONS))
    options: dict[str, Any] = Field(default_factory=dict)
    offline_options: dict[str, Any] | None = None

    def text_config(self) -> TextConfig:
        """The plain :class:`TextConfig` (sections, masking, cleaning) of this side."""
        return TextConfig(**self.model_dump(include=set(TextConfig.model_fields)))


class ModelConfig(Strict):
    """The fusion head (:func:`cxrfuse.fusion.build_head`)."""

    kind: Literal["concat-mlp", "late-fusion"] = "concat-mlp"
    modalities: list[Modality] = Field(default_factory=lambda: ["image", "text"])
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    projection_dim: int = Field(256, ge=1)
    output: Literal["sigmoid", "softmax"] = "sigmoid"

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("choose at least one of image, text")
        if len(set(value)) != len(value):
            raise ValueError(f"modalities listed twice: {value}")
        return [m for m in ("image", "text") if m in value]


class ScheduleConfig(Strict):
    """Learning-rate schedule, stepped once per epoch.

    ``step``: multiply by ``gamma`` every ``step_size`` epochs. ``linear``: from
    ``start_factor`` to ``end_factor`` of the learning rate over ``total_epochs`` (default
    ``max_epochs``). ``plateau``: multiply by ``factor`` after ``patience`` epochs without a
    lower validation loss. ``cosine``: cosine annealing to ``min_lr`` over ``max_epochs``.
    """

    kind: Literal["none", "step", "linear", "plateau", "cosine"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0.0)
    start_factor: float = Field(1.0, gt=0.0, le=1.0)
    end_factor: float = Field(0.1, ge=0.0, le=1.0)
    total_epochs: int | None = Field(None, ge=1)
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(2, ge=0)
    min_lr: float = Field(0.0, ge=0.0)


class EarlyStoppingConfig(Strict):
    """Stop when the validation loss has not improved for ``patience`` epochs."""

    monitor: Literal["val_loss"] = "val_loss"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0.0)


class LossConfig(Strict):
    """``bce`` (sigmoid outputs, optional ``pos_weight``), ``ce`` (softmax outputs) or
    ``focal`` (alpha, gamma; torchvision's ``sigmoid_focal_loss`` semantics; alpha < 0 turns
    the alpha weighting off)."""

    kind: Literal["bce", "ce", "focal"] = "bce"
    pos_weight: float | list[float] | Literal["balanced"] | None = None
    alpha: float = Field(0.25, le=1.0)
    gamma: float = Field(2.0, ge=0.0)


class TrainingConfig(Strict):
    """Optimiser, schedule, loss, early stopping and where the training runs."""

    mode: Literal["embeddings", "finetune"] = "embeddings"
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(0.003, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(40, ge=1)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    class_weights: Literal["balanced"] | None = None
    precision: Literal["auto", "32", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    num_workers: int = Field(0, ge=0)
    deterministic: bool = True
    gradient_clip_val: float | None = Field(None, gt=0.0)


class AugmentConfig(Strict):
    """Image augmentation of the fine-tuning mode."""

    hflip: float = Field(0.5, ge=0.0, le=1.0)
    rotate_deg: float = Field(10.0, ge=0.0)
    translate: float = Field(0.05, ge=0.0, lt=1.0)
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = Field(0.1, ge=0.0)
    contrast: float = Field(0.1, ge=0.0)
    gamma: float = Field(0.0, ge=0.0, lt=1.0)


class FinetuneConfig(Strict):
    """Used only when ``training.mode == "finetune"`` (the image encoder is trained)."""

    freeze: list[str] = Field(
        default_factory=list, description="backbone module names kept frozen (default: none; "
        "design 003's ResNet-50: [conv1, layer1, layer2])"
    )
    grayscale: bool = False
    image_lr: float = Field(0.0001, gt=0.0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class EvaluationConfig(Strict):
    """How evaluation chooses thresholds (on validation) and bootstraps confidence intervals."""

    threshold: Literal["f1", "youden"] | float = "f1"
    n_boot: int = Field(1000, ge=0)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError("a fixed threshold must lie strictly between 0 and 1")
        return value


TRACKERS = ("none", "mlflow", "tensorboard", "csv")
"""The experiment trackers of ``tracking.kind`` / ``--tracking`` (Lightning's own loggers)."""


class TrackingConfig(Strict):
    """Where a run's parameters, per-epoch metrics, test metrics and artifacts are logged.

    ``mlflow`` writes to ``uri`` (default: ``$MLFLOW_TRACKING_URI``, else a SQLite file
    ``mlruns.db`` beside the runs dir), into the MLflow experiment ``experiment`` (default
    ``cxrfuse``; an experiment grid uses its own name) with ``tags``. ``tensorboard`` and ``csv``
    write under the run directory's ``logs/`` folder. Not part of what a run depends on: a
    finished run is not retrained because only its tracking changed.
    """

    kind: Literal["none", "mlflow", "tensorboard", "csv"] = "none"
    uri: str | None = None
    experiment: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class RunConfig(Strict):
    """One trained model; the run directory is ``<runs_dir>/<name>``."""

    name: str = "run"
    runs_dir: str = "runs"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    data: DataConfig = Field(default_factory=DataConfig)
    image: ImageSideConfig = Field(default_factory=ImageSideConfig)
    text: TextSideConfig = Field(default_factory=TextSideConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_folder_name(value, "run")

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        loss, output = self.training.loss.kind, self.model.output
        if loss == "ce" and output != "softmax":
            raise ValueError("training.loss.kind 'ce' needs model.output 'softmax'")
        if loss == "bce" and output != "sigmoid":
            raise ValueError("training.loss.kind 'bce' needs model.output 'sigmoid'")
        if self.training.mode == "finetune" and "image" not in self.model.modalities:
            raise ValueError("training.mode 'finetune' trains the image encoder: add image to "
                             "model.modalities")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def validate_run(raw: Mapping[str, Any], source: str = "config") -> RunConfig:
    """A :class:`RunConfig` from a mapping, or a :class:`ConfigError` naming key paths."""
    return validate_config(RunConfig, raw, source)


def apply_offline(config: RunConfig) -> RunConfig:
    """A copy whose encoders are the offline substitutes (default weights, offline options)."""
    raw = config.model_dump()
    raw["image"].update(encoder=config.image.offline_encoder, weights="default")
    raw["text"].update(encoder=config.text.offline_encoder, weights="default")
    if config.text.offline_options is not None:
        raw["text"]["options"] = dict(config.text.offline_options)
    return RunConfig.model_validate(raw)
