"""Class-imbalance tools: seeded subsampling to a target ratio, class weights, weighted sampling.

Labels are float arrays (n,) or (n, n_labels) with NaN for unknown. For multilabel tasks a
study counts as *positive* (for subsampling and sampling) when any of its labels is 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from cxrfuse.problems import DataError


def _as_2d(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y[:, None] if y.ndim == 1 else y


def study_positive(y: np.ndarray) -> np.ndarray:
    """Per study: True when any label is 1 (NaN counts as not positive)."""
    return np.nan_to_num(_as_2d(y), nan=0.0).max(axis=1) == 1


def subsample_indices(y: np.ndarray, positive_fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of a subsample with ``positive_fraction`` positives.

    Keeps every positive and draws negatives without replacement; when there are too few
    negatives for the target it keeps every negative and draws positives instead.
    ``positive_fraction=0.25`` gives the 75:25 ratio of design 004.
    """
    if not 0.0 < positive_fraction < 1.0:
        raise ValueError(f"positive_fraction must lie in (0, 1), got {positive_fraction}")
    positive = study_positive(y)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError(
            f"cannot subsample to {positive_fraction:.0%} positives: the training split has "
            f"{len(pos)} positive and {len(neg)} negative studies"
        )
    rng = np.random.default_rng(seed)
    want_neg = round(len(pos) * (1.0 - positive_fraction) / positive_fraction)
    if want_neg <= len(neg):
        neg = rng.choice(neg, size=want_neg, replace=False)
    else:
        want_pos = max(1, round(len(neg) * positive_fraction / (1.0 - positive_fraction)))
        pos = rng.choice(pos, size=want_pos, replace=False)
    return np.sort(np.concatenate([pos, neg]))


def class_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(negatives, positives) per label, unknowns left out."""
    y2 = _as_2d(y)
    return (y2 == 0).sum(axis=0), (y2 == 1).sum(axis=0)


def balanced_class_weights(y: np.ndarray) -> np.ndarray:
    """(2, n_labels) weights ``n / (2 * count)`` for negatives (row 0) and positives (row 1),
    scikit-learn's ``class_weight="balanced"`` per label."""
    neg, pos = class_counts(y)
    if (neg == 0).any() or (pos == 0).any():
        raise DataError("class weights need positives and negatives of every label in train; "
                        f"negatives {neg.tolist()}, positives {pos.tolist()}")
    total = neg + pos
    return np.stack([total / (2.0 * neg), total / (2.0 * pos)]).astype(np.float32)


def balanced_pos_weight(y: np.ndarray) -> np.ndarray:
    """``negatives / positives`` per label: the BCE ``pos_weight`` that balances the classes."""
    neg, pos = class_counts(y)
    if (pos == 0).any():
        raise DataError(f"pos_weight 'balanced' needs positives of every label; got {pos.tolist()}")
    return (neg / pos).astype(np.float32)


def sample_weights(y: np.ndarray) -> np.ndarray:
    """Per-study weights so that positive and negative studies are drawn equally often."""
    positive = study_positive(y)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return np.ones(len(positive), dtype=np.float64)
    return np.where(positive, 0.5 / n_pos, 0.5 / n_neg)


def weighted_sampler(y: np.ndarray, seed: int, num_samples: int | None = None) -> WeightedRandomSampler:
    """A seeded :class:`WeightedRandomSampler` drawing positive and negative studies 50:50."""
    generator = torch.Generator().manual_seed(int(seed))
    weights = torch.as_tensor(sample_weights(y), dtype=torch.double)
    return WeightedRandomSampler(
        weights, num_samples=num_samples or len(weights), replacement=True, generator=generator
    )
