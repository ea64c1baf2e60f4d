"""Unknown labels (NaN) are left out of the loss and the epoch metrics, never crash training."""

from __future__ import annotations

import numpy as np
import torch

from cxrfuse.training import FusionClassifier


def test_multilabel_training_with_unknown_labels() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    y = (X[:, :2] > 0).astype(np.float32)
    y[:40, 1] = np.nan  # e.g. IU reports indexed only as "No Indexing"
    clf = FusionClassifier(max_epochs=15, lr=0.01).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (300, 2) and np.isfinite(proba).all()
    known = ~np.isnan(y[:, 1])
    # it learnt both labels from the rows where they are known
    assert ((proba[:, 0] > 0.5) == (y[:, 0] == 1)).mean() > 0.85
    assert ((proba[known, 1] > 0.5) == (y[known, 1] == 1)).mean() > 0.85
