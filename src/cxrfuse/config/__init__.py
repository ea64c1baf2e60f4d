"""Pydantic models of every YAML config, and how they are read.

* :mod:`~cxrfuse.config.run`: run and experiment configs of ``cxrfuse train`` /
  ``cxrfuse experiment`` (:class:`RunConfig`, :class:`ExperimentConfig`).
* :mod:`~cxrfuse.config.clip`: the CLIP run config of ``cxrfuse clip train`` (:class:`ClipConfig`).
* :mod:`~cxrfuse.config.common`: reading YAML, ``--set`` overrides, errors naming key paths.

Example::

    config = load_run_config("configs/iu-binary-views-mean.yaml", ["training.max_epochs=5"])
    config = apply_offline(config)      # swap in efficientnet-lite0 / minilm / tfidf
"""

from cxrfuse.config.clip import (
    DEFAULT_NEGATIVE,
    DEFAULT_POSITIVE,
    ClipConfig,
    ClipDataConfig,
    ClipImageConfig,
    ClipModelConfig,
    ClipTextConfig,
    ClipTrainingConfig,
    LabelPrompts,
    ProbeConfig,
    RetrievalConfig,
    TemperatureConfig,
    ZeroShotConfig,
    load_clip_config,
    validate_clip_config,
)
from cxrfuse.config.common import (
    Strict,
    format_validation_error,
    get_dotted,
    parse_override,
    read_yaml_config,
    set_dotted,
    validate_config,
)
from cxrfuse.config.experiment import (
    EXPERIMENT_KEYS,
    ExperimentConfig,
    OverrideRule,
    apply_offline_experiment,
    default_mlflow_uri,
    is_experiment,
    load_config,
    load_experiment_config,
    load_run_config,
    run_name,
    value_slug,
)
from cxrfuse.config.ingest import load_table_spec, validate_table_spec
from cxrfuse.config.run import (
    AugmentConfig,
    DataConfig,
    EarlyStoppingConfig,
    EvaluationConfig,
    FinetuneConfig,
    ImageSideConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    ScheduleConfig,
    SubsampleConfig,
    TextSideConfig,
    TrackingConfig,
    TrainingConfig,
    apply_offline,
    validate_run,
)

__all__ = [
    "DEFAULT_NEGATIVE",
    "DEFAULT_POSITIVE",
    "EXPERIMENT_KEYS",
    "AugmentConfig",
    "ClipConfig",
    "ClipDataConfig",
    "ClipImageConfig",
    "ClipModelConfig",
    "ClipTextConfig",
    "ClipTrainingConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "ImageSideConfig",
    "LabelPrompts",
    "LossConfig",
    "ModelConfig",
    "OverrideRule",
    "ProbeConfig",
    "RetrievalConfig",
    "RunConfig",
    "ScheduleConfig",
    "Strict",
    "SubsampleConfig",
    "TemperatureConfig",
    "TextSideConfig",
    "TrackingConfig",
    "TrainingConfig",
    "ZeroShotConfig",
    "apply_offline",
    "apply_offline_experiment",
    "default_mlflow_uri",
    "format_validation_error",
    "get_dotted",
    "is_experiment",
    "load_clip_config",
    "load_config",
    "load_experiment_config",
    "load_run_config",
    "load_table_spec",
    "parse_override",
    "read_yaml_config",
    "run_name",
    "set_dotted",
    "validate_clip_config",
    "validate_config",
    "validate_run",
    "validate_table_spec",
    "value_slug",
]
