"""Trained runs put to use: open a run directory (:func:`load_run`) and predict new studies
(:func:`predict`), with no training code and no pickles. ``cxrfuse predict``, evaluation's
shuffle tests, explanations and the server all load models here.

    from cxrfuse.inference import load_run, predict

    probs = predict("runs/exp/runs/multimodal-seed0", images=["f.png", "l.png"], report=text)
"""

from cxrfuse.inference.predict import image_inputs, predict, text_inputs
from cxrfuse.inference.runs import LoadedRun, build_head_from, load_finetuned_encoder, load_run

__all__ = [
    "LoadedRun",
    "build_head_from",
    "image_inputs",
    "load_finetuned_encoder",
    "load_run",
    "predict",
    "text_inputs",
]
