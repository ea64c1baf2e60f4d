"""Training fusion heads on cached embeddings (and, in ``finetune``, the image encoder too).

Public API (imported lazily, so ``import cxrfuse.training`` stays cheap)::

    from cxrfuse.training import train_run, train_experiment, load_run, predict, FusionClassifier
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "train_run": "runner",
    "train_experiment": "runner",
    "train_on_arrays": "runner",
    "load_run": "runner",
    "predict": "runner",
    "LoadedRun": "runner",
    "FusionModule": "module",
    "StudyArrays": "data",
    "build_study_arrays": "data",
    "FusionClassifier": "estimator",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cxrfuse.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cxrfuse.training' has no attribute {name!r}")
