"""Explanations: class activation maps through the fused classifier, their scores on phantoms,
and modality attribution (did the model read or look?)."""

from cxrfuse.explain.attribution import (
    ModalityInputs,
    ModalityMeans,
    modality_attribution,
    summarise_attribution,
    write_attribution,
)
from cxrfuse.explain.explainer import Explainer, ViewExplanation
from cxrfuse.explain.gradcam import (
    CAM_METHODS,
    FusedImageClassifier,
    cam_target_layer,
    compute_cam,
    label_target,
    non_inplace_relu,
)
from cxrfuse.explain.scoring import PhantomScores, score_on_phantoms, write_scores

__all__ = [
    "CAM_METHODS",
    "Explainer",
    "FusedImageClassifier",
    "ModalityInputs",
    "ModalityMeans",
    "PhantomScores",
    "ViewExplanation",
    "cam_target_layer",
    "compute_cam",
    "label_target",
    "modality_attribution",
    "non_inplace_relu",
    "score_on_phantoms",
    "summarise_attribution",
    "write_attribution",
    "write_scores",
]
