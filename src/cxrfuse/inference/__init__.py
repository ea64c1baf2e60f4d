"""Trained runs put to use: open a run directory (:func:`load_run`) and predict new studies
(:class:`Predictor`, :func:`predict`), with no training code and no pickles. ``cxrfuse
predict``, evaluation's shuffle tests, explanations and the server all load models here.

    from cxrfuse.inference import Predictor

    result = Predictor("runs/exp/runs/multimodal-seed0").predict(["f.png", "l.dcm"], report=text)
    result.probabilities, result.decisions, result.warnings
"""

from cxrfuse.inference.predict import (
    MAX_TEXT_CHARS,
    Prediction,
    Predictor,
    StudyImage,
    ViewRead,
    check_text_length,
    predict,
    study_text,
)
from cxrfuse.inference.runs import LoadedRun, build_head_from, load_finetuned_encoder, load_run

__all__ = [
    "MAX_TEXT_CHARS",
    "LoadedRun",
    "Prediction",
    "Predictor",
    "StudyImage",
    "ViewRead",
    "build_head_from",
    "check_text_length",
    "load_finetuned_encoder",
    "load_run",
    "predict",
    "study_text",
]
