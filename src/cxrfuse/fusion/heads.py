"""Fusion heads over frozen embeddings: view fusion, concat-MLP, late fusion, unimodal baselines.

Every head takes the same inputs, so a fused model and its unimodal baselines come from one
config and differ only in ``modalities``:

* ``image``: (B, V, D) view embeddings and ``image_mask`` (B, V), True where a view exists.
  The view layout is :func:`cxrfuse.data.views.view_slots` (the one rule of store,
  fine-tuning, explain and predict): ``frontal`` and ``concat`` read fixed slots (slot 0
  frontal, slot 1 lateral); ``mean`` and ``attention`` read any number of views.
* ``text``: (B, Dt) report embeddings and ``text_mask`` (B,), True where the study has text.

Heads return logits (B, n_outputs): one per label for sigmoid outputs (binary or multilabel),
two for a softmax binary head. :func:`build_head` rebuilds a head from the ``kwargs`` it keeps in
``head.init_kwargs``, which is what a checkpoint sidecar stores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cxrfuse.data.views import VIEW_MODES, ViewMode

Modality = Literal["image", "text"]
HeadKind = Literal["concat-mlp", "late-fusion"]


class AttentionViewFusion(nn.Module):
    """Masked self-attention over the views of a study (the fusion module of design 000).

    Views are projected to queries, keys and values by linear layers; scaled dot-product
    attention over the valid views (a mask hides missing ones) and a softmax give each view a
    weighted mix of values; the mixes of the valid views are summed and divided by their number.
    The attention weights of the last call are kept in ``last_weights`` for inspection.
    """

    def __init__(self, dim: int, attn_dim: int | None = None) -> None:
        super().__init__()
        attn_dim = attn_dim or dim
        self.query = nn.Linear(dim, attn_dim)
        self.key = nn.Linear(dim, attn_dim)
        self.value = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(attn_dim)
        self.last_weights: torch.Tensor | None = None

    def forward(self, views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, V, D) views and (B, V) mask -> (B, D); a study without views gives zeros."""
        mask = mask.bool()
        scores = torch.einsum("bqd,bkd->bqk", self.query(views), self.key(views)) * self.scale
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows -> 0
        self.last_weights = weights.detach()
        mixed = torch.einsum("bqk,bkd->bqd", weights, self.value(views))
        mixed = mixed * mask[..., None].to(mixed.dtype)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(mixed.dtype)
        return mixed.sum(dim=1) / count


class ViewFusion(nn.Module):
    """Turns (B, V, D) view embeddings into one study vector.

    ``frontal``: slot 0 (B, D). ``mean``: the mean of the valid views (B, D). ``concat``: the
    slots side by side (B, V*D), zeros for a missing view. ``attention``: :class:`AttentionViewFusion`.
    """

    def __init__(self, mode: ViewMode, dim: int, n_views: int) -> None:
        super().__init__()
        if mode not in VIEW_MODES:
            raise ValueError(f"view fusion {mode!r} unknown; choose one of {VIEW_MODES}")
        self.mode, self.dim, self.n_views = mode, dim, n_views
        self.attention = AttentionViewFusion(dim) if mode == "attention" else None

    @property
    def out_dim(self) -> int:
        return self.dim * self.n_views if self.mode == "concat" else self.dim

    def forward(self, views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if views.ndim == 2:  # (B, D): one view per study
            views, mask = views[:, None, :], mask.reshape(-1, 1)
        weights = mask.to(views.dtype)[..., None]
        if self.mode == "frontal":
            return views[:, 0] * weights[:, 0]
        if self.mode == "mean":
            return (views * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        if self.mode == "concat":
            if views.shape[1] != self.n_views:
                raise ValueError(f"concat fusion expects {self.n_views} view slots, got {views.shape[1]}")
            return (views * weights).flatten(1)
        assert self.attention is not None
        return self.attention(views, mask)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout per hidden size, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class FusionHead(nn.Module):
    """Base class: view fusion for the image side, then a head-specific combination.

    ``modalities`` chooses which inputs are read (``["image"]``, ``["text"]`` or both); the
    others are ignored, so a unimodal baseline is the same class with one modality.
    """

    def __init__(
        self,
        *,
        modalities: Sequence[Modality],
        n_outputs: int,
        image_dim: int = 0,
        text_dim: int = 0,
        view_fusion: ViewMode = "mean",
        n_views: int = 2,
    ) -> None:
        super().__init__()
        modalities = list(dict.fromkeys(modalities))
        unknown = [m for m in modalities if m not in ("image", "text")]
        if not modalities or unknown:
            raise ValueError(f"modalities must be a non-empty subset of image, text; got {modalities}")
        if "image" in modalities and image_dim < 1:
            raise ValueError("an image head needs image_dim > 0")
        if "text" in modalities and text_dim < 1:
            raise ValueError("a text head needs text_dim > 0")
        self.modalities = modalities
        self.n_outputs = n_outputs
        self.views = ViewFusion(view_fusion, image_dim, n_views) if "image" in modalities else None
        self.init_kwargs: dict[str, Any] = {
            "modalities": modalities,
            "n_outputs": n_outputs,
            "image_dim": image_dim,
            "text_dim": text_dim,
            "view_fusion": view_fusion,
            "n_views": n_views,
        }

    def modality_vectors(
        self,
        image: torch.Tensor | None,
        image_mask: torch.Tensor | None,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The study vector of each modality this head reads (missing ones zeroed by mask)."""
        out: dict[str, torch.Tensor] = {}
        if self.views is not None:
            if image is None:
                raise ValueError("this head reads images: pass image (and image_mask)")
            if image_mask is None:
                image_mask = torch.ones(image.shape[:-1], dtype=torch.bool, device=image.device)
            out["image"] = self.views(image, image_mask)
        if "text" in self.modalities:
            if text is None:
                raise ValueError("this head reads text: pass text (and text_mask)")
            if text_mask is not None:
                text = text * text_mask.to(text.dtype)[:, None]
            out["text"] = text
        return out

    def forward(
        self,
        image: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


class ConcatMLP(FusionHead):
    """The modality vectors concatenated, then an MLP (designs 000, 002, 003).

    Presets: ``hidden=[256], dropout=0.3`` (003), ``hidden=[512, 512]`` (002).
    """

    def __init__(self, *, hidden: Sequence[int] = (256,), dropout: float = 0.3, **base: Any) -> None:
        super().__init__(**base)
        in_dim = (self.views.out_dim if self.views is not None else 0) + (
            base.get("text_dim", 0) if "text" in self.modalities else 0
        )
        self.mlp = mlp(in_dim, list(hidden), self.n_outputs, dropout)
        self.init_kwargs.update(kind="concat-mlp", hidden=list(hidden), dropout=dropout)

    def forward(self, image=None, image_mask=None, text=None, text_mask=None):  # type: ignore[no-untyped-def]
        vectors = self.modality_vectors(image, image_mask, text, text_mask)
        return self.mlp(torch.cat([vectors[m] for m in self.modalities], dim=1))


class LateFusion(FusionHead):
    """Each modality projected to ``projection_dim`` (Linear, ReLU, dropout), concatenated, then
    one fully connected layer (design 004: 256-d projections of ResNet-50 and BioBERT features)."""

    def __init__(self, *, projection_dim: int = 256, dropout: float = 0.0, **base: Any) -> None:
        super().__init__(**base)
        dims = {"text": base.get("text_dim", 0)}
        if self.views is not None:
            dims["image"] = self.views.out_dim
        self.projections = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(dims[m], projection_dim), nn.ReLU(), nn.Dropout(dropout))
                for m in self.modalities
            }
        )
        self.classifier = nn.Linear(projection_dim * len(self.modalities), self.n_outputs)
        self.init_kwargs.update(kind="late-fusion", projection_dim=projection_dim, dropout=dropout)

    def forward(self, image=None, image_mask=None, text=None, text_mask=None):  # type: ignore[no-untyped-def]
        vectors = self.modality_vectors(image, image_mask, text, text_mask)
        projected = [self.projections[m](vectors[m]) for m in self.modalities]
        return self.classifier(torch.cat(projected, dim=1))


HEADS: dict[str, type[FusionHead]] = {"concat-mlp": ConcatMLP, "late-fusion": LateFusion}


def build_head(kind: HeadKind | str, **kwargs: Any) -> FusionHead:
    """A head by kind name (``concat-mlp`` or ``late-fusion``) from its keyword arguments."""
    kwargs = {k: v for k, v in kwargs.items() if k != "kind"}
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of {sorted(HEADS)}")
    return HEADS[kind](**kwargs)


def probabilities(logits: torch.Tensor, output: str) -> torch.Tensor:
    """Positive-class probabilities (B, n_labels) from sigmoid or two-logit softmax outputs."""
    logits = logits.float()
    if output == "softmax":
        return torch.softmax(logits, dim=1)[:, 1:]
    return torch.sigmoid(logits)


INPUT_KEYS = ("image", "image_mask", "text", "text_mask")
"""The keyword inputs of every head (whichever modalities it reads)."""


@torch.no_grad()
def head_probabilities(
    head: nn.Module, output: str, inputs: dict[str, Any], batch_size: int = 4096
) -> torch.Tensor:
    """Positive-class probabilities (n, n_labels) of ``head`` (eval mode, its device) on
    inputs keyed :data:`INPUT_KEYS` (NumPy arrays or tensors; absent or None keys skipped)."""
    device = next(iter(head.parameters()), torch.zeros(())).device
    tensors = {}
    for key in INPUT_KEYS:
        value = inputs.get(key)
        if value is None:
            continue
        t = value if torch.is_tensor(value) else torch.as_tensor(np.ascontiguousarray(value))
        tensors[key] = t.float() if key in ("image", "text") else t
    n = len(next(iter(tensors.values())))
    was_training = head.training
    head.eval()
    out = [
        probabilities(head(**{k: v[s : s + batch_size].to(device) for k, v in tensors.items()}),
                      output).cpu()
        for s in range(0, n, batch_size)
    ]  # fmt: skip
    head.train(was_training)
    n_out = getattr(head, "n_outputs", 0)
    width = 1 if output == "softmax" else n_out
    return torch.cat(out) if out else torch.zeros((0, width))
