"""Classification losses for fusion heads, with unknown labels (NaN targets) left out.

* :class:`BCELoss`: binary cross-entropy on sigmoid logits (one per label), optional
  ``pos_weight`` per label and per-class element weights.
* :class:`CrossEntropyLoss`: softmax over two logits (binary), optional class weights.
* :class:`FocalLoss`: the focal loss of Lin et al. as in design 004, with torchvision's
  :func:`~torchvision.ops.sigmoid_focal_loss` semantics on sigmoid logits
  (``alpha`` weights positives, ``1 - alpha`` negatives, ``alpha < 0`` disables it;
  ``(1 - p_t) ** gamma`` down-weights easy examples), and the same rule on softmax outputs.

Every loss takes logits (B, n_outputs) and float targets (B, n_labels) with NaN where a label
is unknown, and averages over the known elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss


def _known(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets with NaN replaced by 0, float mask of known elements)."""
    known = ~torch.isnan(targets)
    return torch.where(known, targets, torch.zeros_like(targets)), known.to(targets.dtype)


def _element_weights(
    targets: torch.Tensor, class_weights: torch.Tensor | None
) -> torch.Tensor | None:
    """Per-element weight ``w1`` for positives, ``w0`` for negatives (class_weights: (2, L))."""
    if class_weights is None:
        return None
    w0, w1 = class_weights[0], class_weights[1]
    return w1 * targets + w0 * (1.0 - targets)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class _SigmoidLoss(nn.Module):
    def __init__(self, class_weights: torch.Tensor | Sequence[Sequence[float]] | None = None):
        super().__init__()
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype).reshape(logits.shape)
        clean, mask = _known(targets)
        values = self.elementwise(logits.float(), clean.float())
        weights = _element_weights(clean.float(), self.class_weights)
        if weights is not None:
            values = values * weights
        return _masked_mean(values, mask.float())


class BCELoss(_SigmoidLoss):
    """Binary cross-entropy with logits; ``pos_weight`` (scalar or one per label) multiplies
    the positive term, as in :class:`torch.nn.BCEWithLogitsLoss`."""

    def __init__(
        self,
        pos_weight: float | Sequence[float] | torch.Tensor | None = None,
        class_weights: torch.Tensor | Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(class_weights)
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw, persistent=False)

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=self.pos_weight, reduction="none"
        )


class FocalLoss(_SigmoidLoss):
    """Sigmoid focal loss (binary and multilabel): torchvision's ``sigmoid_focal_loss``."""

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        class_weights: torch.Tensor | Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__(class_weights)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="none")


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy over two logits (binary task, target = label 0/1).

    ``class_weights`` (2,) weight each class and the mean divides by the summed weights, as
    :func:`torch.nn.functional.cross_entropy` does. With ``focal_gamma`` set, each term is
    multiplied by ``(1 - p_t) ** gamma`` and by ``alpha`` (class 1) / ``1 - alpha`` (class 0)
    when ``focal_alpha >= 0``: the softmax form of the focal loss.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        focal_alpha: float | None = None,
        focal_gamma: float | None = None,
    ) -> None:
        super().__init__()
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.reshape(len(targets), -1)[:, 0]
        known = ~torch.isnan(targets)
        logits, labels = logits[known].float(), targets[known].long()
        if labels.numel() == 0:
            return logits.sum() * 0.0
        if self.focal_gamma is None:
            return F.cross_entropy(logits, labels, weight=self.class_weights)
        log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
        values = -((1.0 - log_p.exp()) ** self.focal_gamma) * log_p
        weights = torch.ones_like(values)
        if self.focal_alpha is not None and self.focal_alpha >= 0:
            weights = torch.where(labels == 1, self.focal_alpha, 1.0 - self.focal_alpha).to(values)
        if self.class_weights is not None:
            weights = weights * self.class_weights[labels]
            return (values * weights).sum() / self.class_weights[labels].sum()
        return (values * weights).mean()


def build_loss(
    kind: str,
    output: str,
    *,
    pos_weight: float | Sequence[float] | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    class_weights: torch.Tensor | Sequence[Sequence[float]] | None = None,
) -> nn.Module:
    """The loss for a config's ``training.loss.kind`` and ``model.output``.

    ``class_weights``: (2, n_labels) negative/positive weights (sigmoid outputs) or (2, 1)
    for a softmax binary head; ``pos_weight`` must already be numbers here (``balanced`` is
    resolved from the training labels by the caller).
    """
    if output == "softmax":
        weights = None if class_weights is None else torch.as_tensor(class_weights)[:, 0]
        if kind == "ce":
            return CrossEntropyLoss(weights)
        if kind == "focal":
            return CrossEntropyLoss(weights, focal_alpha=alpha, focal_gamma=gamma)
        raise ValueError(f"loss {kind!r} needs sigmoid outputs; use ce or focal with softmax")
    if kind == "bce":
        return BCELoss(pos_weight, class_weights)
    if kind == "focal":
        return FocalLoss(alpha, gamma, class_weights)
    raise ValueError(f"loss {kind!r} needs a softmax output (model.output: softmax)")
