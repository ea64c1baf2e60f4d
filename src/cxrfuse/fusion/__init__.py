"""Fusion models over embeddings: view fusion, concat-MLP, late fusion, unimodal baselines."""

from cxrfuse.fusion.heads import (
    HEADS,
    INPUT_KEYS,
    VIEW_MODES,
    AttentionViewFusion,
    ConcatMLP,
    FusionHead,
    LateFusion,
    ViewFusion,
    build_head,
    head_probabilities,
    probabilities,
)

__all__ = [
    "HEADS",
    "INPUT_KEYS",
    "VIEW_MODES",
    "AttentionViewFusion",
    "ConcatMLP",
    "FusionHead",
    "LateFusion",
    "ViewFusion",
    "build_head",
    "head_probabilities",
    "probabilities",
]
