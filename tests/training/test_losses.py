"""Losses against hand computations (sigmoid BCE, focal, softmax CE and focal), NaN targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrfuse.training.losses import BCELoss, CrossEntropyLoss, FocalLoss, build_loss


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


LOGITS = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
TARGETS = torch.tensor([[1.0], [1.0], [0.0], [0.0]])


def test_bce_with_pos_weight_matches_hand_computation() -> None:
    pw = 3.0
    expected = sum(
        -(pw * t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))
        for x, t in zip(LOGITS[:, 0].tolist(), TARGETS[:, 0].tolist())
    ) / 4
    assert BCELoss(pos_weight=pw)(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert BCELoss()(LOGITS, TARGETS).item() < expected  # the weight raised the positive terms


def test_nan_targets_are_left_out() -> None:
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), 0.0]])
    x = torch.tensor([[1.0, 50.0], [-2.0, 0.3], [-50.0, -0.7]])
    known = ~torch.isnan(y)
    expected = F.binary_cross_entropy_with_logits(x[known], y[known])
    got = BCELoss()(x, y)
    assert torch.isfinite(got) and got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.85, 1.5), (0.95, 2.0)])
def test_sigmoid_focal_matches_hand_computation(alpha: float, gamma: float) -> None:
    terms = []
    for x, t in zip(LOGITS[:, 0].tolist(), TARGETS[:, 0].tolist()):
        p = sig(x)
        p_t = p if t == 1 else 1 - p
        alpha_t = alpha if t == 1 else 1 - alpha
        terms.append(-alpha_t * (1 - p_t) ** gamma * math.log(p_t))
    got = FocalLoss(alpha, gamma)(LOGITS, TARGETS).item()
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_focal_without_alpha_and_gamma_is_bce_and_focuses_on_hard_examples() -> None:
    assert FocalLoss(alpha=-1, gamma=0)(LOGITS, TARGETS).item() == pytest.approx(
        BCELoss()(LOGITS, TARGETS).item(), rel=1e-6)
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-1.0]])
    one = torch.tensor([[1.0]])
    bce_ratio = BCELoss()(easy, one) / BCELoss()(hard, one)
    focal_ratio = FocalLoss(alpha=-1, gamma=2)(easy, one) / FocalLoss(alpha=-1, gamma=2)(hard, one)
    assert focal_ratio < bce_ratio / 10


def test_multilabel_focal_averages_over_known_elements() -> None:
    x = torch.tensor([[0.2, -0.4, 1.0], [2.0, 0.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, 1.0]])
    from torchvision.ops import sigmoid_focal_loss

    known = ~torch.isnan(y)
    expected = sigmoid_focal_loss(x[known], y[known], alpha=0.3, gamma=1.0, reduction="mean")
    assert FocalLoss(0.3, 1.0)(x, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_weights_weight_positive_and_negative_elements() -> None:
    weights = torch.tensor([[0.5], [2.0]])  # row 0 negatives, row 1 positives
    plain = F.binary_cross_entropy_with_logits(LOGITS, TARGETS, reduction="none")
    expected = (plain * torch.where(TARGETS == 1, 2.0, 0.5)).mean()
    assert BCELoss(class_weights=weights)(LOGITS, TARGETS).item() == pytest.approx(expected.item())


def test_softmax_cross_entropy_and_focal() -> None:
    x = torch.tensor([[0.3, 1.2], [2.0, -1.0], [0.0, 0.1]])
    y = torch.tensor([[1.0], [1.0], [float("nan")]])
    labels = torch.tensor([1, 1])
    expected = F.cross_entropy(x[:2], labels, weight=torch.tensor([1.0, 3.0]))
    assert CrossEntropyLoss([1.0, 3.0])(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    alpha, gamma = 0.75, 2.0
    p1 = torch.softmax(x[:2], 1)[:, 1]
    hand = (-alpha * (1 - p1) ** gamma * torch.log(p1)).mean()
    got = CrossEntropyLoss(focal_alpha=alpha, focal_gamma=gamma)(x, y)
    assert got.item() == pytest.approx(hand.item(), rel=1e-5)


def test_build_loss_checks_output_kind() -> None:
    assert isinstance(build_loss("focal", "sigmoid", alpha=0.9), FocalLoss)
    assert isinstance(build_loss("ce", "softmax"), CrossEntropyLoss)
    with pytest.raises(ValueError, match="softmax"):
        build_loss("ce", "sigmoid")
    with pytest.raises(ValueError, match="sigmoid"):
        build_loss("bce", "softmax")
