"""Fusion models over embeddings: view fusion, concat-MLP, late fusion, unimodal baselines."""

from cxrfuse.fusion.heads import (
    HEADS,
    STORE_MODE,
    VIEW_MODES,
    AttentionViewFusion,
    ConcatMLP,
    FusionHead,
    LateFusion,
    ViewFusion,
    build_head,
)

__all__ = [
    "HEADS",
    "STORE_MODE",
    "VIEW_MODES",
    "AttentionViewFusion",
    "ConcatMLP",
    "FusionHead",
    "LateFusion",
    "ViewFusion",
    "build_head",
]
