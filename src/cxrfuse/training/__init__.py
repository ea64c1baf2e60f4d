"""Training: fusion heads on cached embeddings and end-to-end fine-tuning through one run
pipeline (:func:`train_run`), grids of runs (:func:`train_experiment`), and a scikit-learn
estimator for arrays a user brings (:class:`FusionClassifier`).

    from cxrfuse.training import train_run, train_experiment, FusionClassifier

Loading a trained run and predicting is :mod:`cxrfuse.inference`.
"""

from cxrfuse.training.estimator import FusionClassifier
from cxrfuse.training.experiment import train_experiment, write_summary
from cxrfuse.training.inputs import ImageFinetuning, InputSource, StoredEmbeddings, make_source
from cxrfuse.training.module import FusionModule
from cxrfuse.training.runner import train_run
from cxrfuse.training.tracking import log_evaluation

__all__ = [
    "FusionClassifier",
    "FusionModule",
    "ImageFinetuning",
    "InputSource",
    "StoredEmbeddings",
    "log_evaluation",
    "make_source",
    "train_experiment",
    "train_run",
    "write_summary",
]
