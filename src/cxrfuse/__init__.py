"""cxrfuse: multimodal chest X-ray classification (image + radiology report fusion).

The names a notebook needs, from the top level::

    import cxrfuse

    manifest = cxrfuse.read_manifest("data/iu/manifest.parquet")
    config = cxrfuse.load_run_config("configs/iu-binary-views-mean-indication.yaml")
    run_dir = cxrfuse.train_run(config)
    cxrfuse.evaluate_run(run_dir)
    answer = cxrfuse.Predictor(run_dir).predict(["frontal.png"], report="Indication: cough.")

They are imported lazily (PEP 562): ``import cxrfuse`` loads neither torch nor any stage; a
name loads its package on first use. Everything else lives in the packages
(``cxrfuse.data``, ``cxrfuse.training``, ...; see ARCHITECTURE.md).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    # data
    "Manifest": "cxrfuse.data",
    "read_manifest": "cxrfuse.data",
    "ingest_iu_xray": "cxrfuse.data.iu_xray",
    "assign_splits": "cxrfuse.data.splits",
    "PhantomConfig": "cxrfuse.data.phantoms",
    "make_phantoms": "cxrfuse.data.phantoms",
    # config
    "RunConfig": "cxrfuse.config",
    "ExperimentConfig": "cxrfuse.config",
    "load_run_config": "cxrfuse.config",
    "load_experiment_config": "cxrfuse.config",
    "apply_offline": "cxrfuse.config",
    # training, inference, evaluation
    "train_run": "cxrfuse.training",
    "train_experiment": "cxrfuse.training",
    "FusionClassifier": "cxrfuse.training",
    "load_run": "cxrfuse.inference",
    "Predictor": "cxrfuse.inference",
    "predict": "cxrfuse.inference",
    "evaluate_run": "cxrfuse.evaluation",
    "evaluate_experiment": "cxrfuse.evaluation",
    # run directories and errors
    "RunDir": "cxrfuse.rundir",
    "ExperimentDir": "cxrfuse.rundir",
    "CxrfuseError": "cxrfuse.problems",
    "ConfigError": "cxrfuse.problems",
    "DataError": "cxrfuse.problems",
}
"""Top-level name -> the module that defines (or re-exports) it."""

__all__ = [
    "ConfigError",
    "CxrfuseError",
    "DataError",
    "ExperimentConfig",
    "ExperimentDir",
    "FusionClassifier",
    "Manifest",
    "PhantomConfig",
    "Predictor",
    "RunConfig",
    "RunDir",
    "__version__",
    "apply_offline",
    "assign_splits",
    "evaluate_experiment",
    "evaluate_run",
    "ingest_iu_xray",
    "load_experiment_config",
    "load_run",
    "load_run_config",
    "make_phantoms",
    "predict",
    "read_manifest",
    "train_experiment",
    "train_run",
]


def _version() -> str:
    """The installed distribution's version; ``0+unknown`` when cxrfuse is not installed
    (e.g. run from a source tree on ``PYTHONPATH``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxrfuse")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Load a top-level name on first use (PEP 562) and keep it."""
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'cxrfuse' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from cxrfuse.config import (
        ExperimentConfig,
        RunConfig,
        apply_offline,
        load_experiment_config,
        load_run_config,
    )
    from cxrfuse.data import Manifest, read_manifest
    from cxrfuse.data.iu_xray import ingest_iu_xray
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits
    from cxrfuse.evaluation import evaluate_experiment, evaluate_run
    from cxrfuse.inference import Predictor, load_run, predict
    from cxrfuse.problems import ConfigError, CxrfuseError, DataError
    from cxrfuse.rundir import ExperimentDir, RunDir
    from cxrfuse.training import FusionClassifier, train_experiment, train_run

    __version__: str
