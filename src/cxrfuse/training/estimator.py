"""A scikit-learn estimator around the fusion heads, for users who bring their own arrays.

``X`` is one array (a single modality: (n, D) vectors, or (n, V, D) views of an image) or a
dict with ``image`` ((n, D) or (n, V, D)), ``text`` ((n, Dt)) and optional ``image_mask``
/ ``text_mask``. ``y`` is (n,) binary or (n, n_labels) multilabel 0/1 (NaN = unknown).
Training uses the same Lightning module, losses and early stopping as ``cxrfuse train``, on a
seeded validation slice of the data you pass.

Example::

    clf = FusionClassifier(kind="late-fusion", max_epochs=20).fit({"image": Xi, "text": Xt}, y)
    p = clf.predict_proba({"image": Xi_test, "text": Xt_test})[:, 1]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from cxrfuse.config import EarlyStoppingConfig, ScheduleConfig, TrainingConfig
from cxrfuse.fusion import build_head, probabilities
from cxrfuse.runtime import seed_everything
from cxrfuse.training.data import IndexBatches, uses_gpu
from cxrfuse.training.fit import fit_module
from cxrfuse.training.losses import build_loss
from cxrfuse.training.module import FusionModule


def _inputs(X: Any) -> dict[str, np.ndarray]:
    """Normalise X to a dict of float32 / bool arrays with (n, V, D) images."""
    if isinstance(X, dict):
        unknown = set(X) - {"image", "image_mask", "text", "text_mask"}
        if unknown:
            raise ValueError(f"unknown input key(s) {sorted(unknown)}; use image, image_mask, "
                             "text, text_mask")
        raw = dict(X)
    else:
        arr = np.asarray(X)
        raw = {"image": arr} if arr.ndim == 3 else {"text": arr}
    out: dict[str, np.ndarray] = {}
    if "image" in raw:
        image = np.asarray(raw["image"], dtype=np.float32)
        if image.ndim == 2:
            image = image[:, None, :]
        if image.ndim != 3:
            raise ValueError(f"image must be (n, D) or (n, V, D), got shape {image.shape}")
        mask = raw.get("image_mask")
        mask = np.ones(image.shape[:2], bool) if mask is None else np.asarray(mask, bool)
        out["image"], out["image_mask"] = image, mask.reshape(image.shape[:2])
    if "text" in raw:
        text = np.asarray(raw["text"], dtype=np.float32)
        if text.ndim != 2:
            raise ValueError(f"text must be (n, Dt), got shape {text.shape}")
        mask = raw.get("text_mask")
        out["text"] = text
        out["text_mask"] = np.ones(len(text), bool) if mask is None else np.asarray(mask, bool)
    if not out:
        raise ValueError("X has neither image nor text")
    lengths = {len(v) for v in out.values()}
    if len(lengths) != 1:
        raise ValueError(f"inputs have different numbers of rows: {sorted(lengths)}")
    return out


class FusionClassifier(ClassifierMixin, BaseEstimator):
    """Concat-MLP or late-fusion head trained with Lightning; binary or multilabel.

    ``predict_proba`` returns (n, 2) [P(0), P(1)] for a binary ``y`` (scikit-learn
    convention) and (n, n_labels) positive probabilities for a multilabel ``y``.
    """

    def __init__(
        self,
        kind: str = "concat-mlp",
        hidden: tuple[int, ...] = (256,),
        dropout: float = 0.3,
        projection_dim: int = 256,
        view_fusion: str = "mean",
        loss: str = "bce",
        alpha: float = 0.25,
        gamma: float = 2.0,
        pos_weight: float | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 64,
        max_epochs: int = 40,
        patience: int | None = 5,
        validation_fraction: float = 0.1,
        random_state: int = 0,
        accelerator: str = "cpu",
        verbose: bool = False,
    ) -> None:
        self.kind, self.hidden, self.dropout = kind, hidden, dropout
        self.projection_dim, self.view_fusion = projection_dim, view_fusion
        self.loss, self.alpha, self.gamma, self.pos_weight = loss, alpha, gamma, pos_weight
        self.optimizer, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.validation_fraction, self.random_state = validation_fraction, random_state
        self.accelerator, self.verbose = accelerator, verbose

    def _training_config(self) -> TrainingConfig:
        return TrainingConfig(
            optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
            batch_size=self.batch_size, max_epochs=self.max_epochs, schedule=ScheduleConfig(),
            early_stopping=None if self.patience is None else EarlyStoppingConfig(
                patience=self.patience),
            accelerator=self.accelerator, devices=1,
        )

    def fit(self, X: Any, y: Any) -> FusionClassifier:
        """Train on ``X``, ``y`` (a seeded ``validation_fraction`` picks the best epoch)."""
        inputs = _inputs(X)
        y_arr = np.asarray(y, dtype=np.float32)
        self.multilabel_ = y_arr.ndim == 2 and y_arr.shape[1] > 1
        y2 = y_arr.reshape(len(y_arr), -1)
        if len(y2) != len(next(iter(inputs.values()))):
            raise ValueError(f"X has {len(next(iter(inputs.values())))} rows, y has {len(y2)}")
        known = y2[~np.isnan(y2)]
        if not np.isin(known, (0.0, 1.0)).all():
            raise ValueError("y must hold 0/1 labels (NaN for unknown)")
        self.classes_ = np.arange(y2.shape[1]) if self.multilabel_ else np.array([0, 1])
        self.n_labels_ = y2.shape[1]
        modalities = [m for m in ("image", "text") if m in inputs]
        specific = ({"hidden": list(self.hidden)} if self.kind == "concat-mlp"
                    else {"projection_dim": self.projection_dim})
        image = inputs.get("image")
        head = build_head(
            self.kind, modalities=modalities, n_outputs=self.n_labels_,
            image_dim=0 if image is None else image.shape[2],
            text_dim=inputs["text"].shape[1] if "text" in inputs else 0,
            view_fusion=self.view_fusion, n_views=1 if image is None else image.shape[1],
            dropout=self.dropout, **specific,
        )
        seed_everything(self.random_state)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(len(y2))
        n_val = max(1, round(self.validation_fraction * len(y2)))
        val, train = order[:n_val], order[n_val:]
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
        tensors["y"] = torch.from_numpy(y2)

        training = self._training_config()
        loss = build_loss(self.loss, "sigmoid", pos_weight=self.pos_weight, alpha=self.alpha,
                          gamma=self.gamma)
        module = FusionModule(head, loss, output="sigmoid", optimizer=self.optimizer, lr=self.lr,
                              weight_decay=self.weight_decay, max_epochs=self.max_epochs)
        with tempfile.TemporaryDirectory(prefix="cxrfuse-fit-") as tmp:
            self.fit_info_ = fit_module(
                module,
                IndexBatches(tensors, train, self.batch_size, shuffle=True, seed=self.random_state,
                             pin_memory=uses_gpu(training)),
                IndexBatches(tensors, val, max(self.batch_size, 4096), pin_memory=uses_gpu(training)),
                training, Path(tmp) / "checkpoints", progress=self.verbose,
            )
        self.history_ = list(module.history)
        self.head_ = head.eval()
        self.modalities_ = modalities
        return self

    @torch.no_grad()
    def _positive(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "head_")
        inputs = _inputs(X)
        missing = [m for m in self.modalities_ if m not in inputs]
        if missing:
            raise ValueError(f"this classifier was fitted on {self.modalities_}; X lacks {missing}")
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
        return probabilities(self.head_(**tensors), "sigmoid").numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        p = self._positive(X)
        return p if self.multilabel_ else np.column_stack([1.0 - p[:, 0], p[:, 0]])

    def predict(self, X: Any) -> np.ndarray:
        """0/1 predictions at probability 0.5 ((n,) binary, (n, n_labels) multilabel)."""
        p = self._positive(X)
        return (p >= 0.5).astype(int) if self.multilabel_ else (p[:, 0] >= 0.5).astype(int)
