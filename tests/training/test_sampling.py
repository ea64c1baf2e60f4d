"""Subsampling to a target ratio, class weights, weighted sampling, whole-batch loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrfuse.problems import DataError
from cxrfuse.training.data import make_loader
from cxrfuse.training.sampling import (
    balanced_class_weights,
    balanced_pos_weight,
    subsample_indices,
    weighted_sampler,
)


def labels(n_pos: int, n_neg: int, seed: int = 0) -> np.ndarray:
    y = np.array([1.0] * n_pos + [0.0] * n_neg)
    return np.random.default_rng(seed).permutation(y)


def test_subsample_to_75_25_keeps_every_positive() -> None:
    y = labels(100, 900)
    rows = subsample_indices(y, 0.25, seed=0)
    assert (y[rows] == 1).sum() == 100 and (y[rows] == 0).sum() == 300
    assert len(np.unique(rows)) == len(rows)
    assert np.array_equal(rows, subsample_indices(y, 0.25, seed=0))
    assert not np.array_equal(rows, subsample_indices(y, 0.25, seed=1))


def test_subsample_draws_positives_when_negatives_are_short() -> None:
    y = labels(300, 200)
    rows = subsample_indices(y, 0.25, seed=0)
    assert (y[rows] == 0).sum() == 200
    assert (y[rows] == 1).sum() == round(200 * 0.25 / 0.75)


def test_subsample_multilabel_counts_any_positive_and_needs_both_classes() -> None:
    y = np.array([[1, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]], dtype=float)
    rows = subsample_indices(y, 0.5, seed=0)
    assert sorted(rows[:2].tolist()) == [0, 1] and len(rows) == 4
    with pytest.raises(DataError, match="0 positive"):
        subsample_indices(np.zeros(10), 0.25, seed=0)


def test_balanced_weights() -> None:
    y = np.stack([labels(10, 30), labels(20, 20)], axis=1)
    y[0, 1] = np.nan
    w = balanced_class_weights(y)
    assert w[:, 0] == pytest.approx([40 / 60, 40 / 20])
    neg, pos = (y[:, 1] == 0).sum(), (y[:, 1] == 1).sum()
    assert w[:, 1] == pytest.approx([(neg + pos) / (2 * neg), (neg + pos) / (2 * pos)])
    assert balanced_pos_weight(y)[0] == pytest.approx(3.0)


def test_weighted_sampler_balances_classes_and_is_seeded() -> None:
    y = labels(100, 900)
    draws = np.array(list(weighted_sampler(y, seed=0, num_samples=20_000)))
    assert 0.47 < y[draws].mean() < 0.53  # 10 % positives drawn about half the time
    again = np.array(list(weighted_sampler(y, seed=0, num_samples=20_000)))
    assert np.array_equal(draws, again)


def test_loader_slices_whole_batches_and_covers_each_row_once() -> None:
    tensors = {"text": torch.arange(10, dtype=torch.float32)[:, None], "y": torch.arange(10.0)}
    loader = make_loader(tensors, batch_size=4, shuffle=True, seed=0)
    batches = list(loader)
    assert [len(b["y"]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b["y"] for b in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert all(torch.equal(b["text"][:, 0], b["y"]) for b in batches)  # rows stay aligned
