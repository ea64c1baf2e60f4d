"""Binary and multilabel metrics from label and probability arrays.

Inputs everywhere: ``y_true`` (n, L) with 1 / 0 and NaN for unknown (excluded per label) and
``y_prob`` (n, L), the probability of each label's positive class. A 1-d array is one label.
Every metric scikit-learn has comes from scikit-learn; this module adds the bookkeeping:
unknown labels, decision thresholds chosen on validation, macro / micro averages,
exact-match accuracy, expected calibration error, and degenerate cases (a label with one
class in a split gives NaN and a warning string, never an exception).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrfuse.problems import CxrfuseError

THRESHOLD_METHODS = ("0.5", "youden", "f1")
THRESHOLD_METRICS = ("accuracy", "precision", "recall", "f1")
RANKING_METRICS = ("auroc", "auprc")
HEADLINE = ("auroc", "auprc", "accuracy", "precision", "recall", "f1")


def as_2d(y: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1); (n, L) unchanged; as float64."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        return y[:, None]
    if y.ndim != 2:
        raise CxrfuseError(f"expected a 1-d or 2-d label/probability array, got shape {y.shape}")
    return y


def check_inputs(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as (n, L) float arrays; clear errors for mismatched shapes or bad values."""
    y_true, y_prob = as_2d(y_true), as_2d(y_prob)
    if y_true.shape != y_prob.shape:
        raise CxrfuseError(f"y_true has shape {y_true.shape} but y_prob has shape {y_prob.shape}")
    known = ~np.isnan(y_true)
    if not np.isin(y_true[known], (0.0, 1.0)).all():
        raise CxrfuseError("y_true must hold 0, 1 or NaN (unknown)")
    if np.isnan(y_prob[known]).any():
        raise CxrfuseError("y_prob has NaN where the label is known")
    return y_true, y_prob


def label_names(labels: Sequence[str] | None, n_labels: int) -> list[str]:
    """The given label names (checked against the column count), or ``"0"``, ``"1"``, ..."""
    names = list(labels) if labels is not None else [str(i) for i in range(n_labels)]
    if len(names) != n_labels:
        raise CxrfuseError(f"{len(names)} label names for {n_labels} label columns")
    return names


def per_label_thresholds(thresholds: np.ndarray | float, n_labels: int) -> np.ndarray:
    """One threshold per label from a scalar or a per-label sequence."""
    try:
        return np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_labels,))
    except ValueError as exc:
        raise CxrfuseError(f"thresholds {thresholds!r} do not fit {n_labels} label(s)") from exc


def _one_class(y: np.ndarray) -> bool:
    return y.size == 0 or np.unique(y).size < 2


def parse_threshold(method: str | float) -> str | float:
    """A threshold method name (``"f1"``, ``"youden"``) or a fixed threshold in [0, 1] (float)."""
    if isinstance(method, str) and method in ("f1", "youden"):
        return method
    try:
        value = float(method)
    except (TypeError, ValueError):
        raise CxrfuseError(
            f"threshold {method!r}: choose one of {THRESHOLD_METHODS} or a number in [0, 1]"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise CxrfuseError(f"threshold {method!r} is outside [0, 1]")
    return value


def choose_threshold(
    y: np.ndarray, p: np.ndarray, method: str | float = "f1"
) -> tuple[float, str | None]:
    """Decision threshold for one label (predict positive when ``p >= threshold``).

    ``method``: ``"0.5"`` (or any number), ``"youden"`` (max TPR - FPR on the ROC curve) or
    ``"f1"`` (max F1 on the precision-recall curve). Call it on the **validation** split.
    Returns the threshold and a warning (None when fine); a label with one class falls back to 0.5.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    method = parse_threshold(method)
    if isinstance(method, float):
        return method, None
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    if _one_class(y):
        return 0.5, f"only one class in the validation labels ({y.size} known): threshold 0.5"
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y, p)
        finite = np.isfinite(thresholds)
        best = np.argmax((tpr - fpr)[finite])
        return float(thresholds[finite][best]), None
    precision, recall, thresholds = precision_recall_curve(y, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[np.argmax(f1[:-1])]), None


def choose_thresholds(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    method: str | float = "f1",
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """One threshold per label (see :func:`choose_threshold`) and the warnings, naming the label."""
    y_true, y_prob = check_inputs(y_true, y_prob)
    names = label_names(labels, y_true.shape[1])
    thresholds, warnings = [], []
    for j, name in enumerate(names):
        t, warning = choose_threshold(y_true[:, j], y_prob[:, j], method)
        thresholds.append(t)
        if warning:
            warnings.append(f"{name}: {warning}")
    return np.asarray(thresholds, dtype=np.float64), warnings


def calibration(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error over equal-width bins and the reliability-diagram data.

    Bins follow :func:`sklearn.calibration.calibration_curve` (``strategy="uniform"``); ECE is
    the count-weighted mean of ``|mean probability - fraction positive|`` over non-empty bins.
    """
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    prob_sum = np.bincount(ids, weights=p, minlength=n_bins)
    pos_sum = np.bincount(ids, weights=y, minlength=n_bins)
    nonzero = count > 0
    mean_prob = np.where(nonzero, prob_sum / np.maximum(count, 1), np.nan)
    frac_pos = np.where(nonzero, pos_sum / np.maximum(count, 1), np.nan)
    ece = (
        float(np.nansum(np.abs(mean_prob - frac_pos) * count) / count.sum())
        if count.sum()
        else float("nan")
    )
    return {
        "ece": ece,
        "bins": [
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": int(count[i]),
                "mean_prob": _f(mean_prob[i]),
                "frac_pos": _f(frac_pos[i]),
            }
            for i in range(n_bins)
        ],
    }


def _f(x: float) -> float | None:
    """JSON-friendly float: NaN -> None."""
    return None if x is None or not np.isfinite(x) else float(x)


def label_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, n_bins: int = 10
) -> dict[str, Any]:
    """Metrics of one label on its known rows (a one-class label: NaN AUROC/AUPRC, a warning)."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    known = ~np.isnan(y)
    y, p = y[known].astype(int), p[known]
    pred = (p >= threshold).astype(int)
    out: dict[str, Any] = {
        "n": int(y.size),
        "positives": int(y.sum()),
        "threshold": float(threshold),
    }
    warnings: list[str] = []
    if y.size == 0:
        out.update({m: float("nan") for m in (*THRESHOLD_METRICS, *RANKING_METRICS, "ece")})
        out.update(
            {"confusion": [[0, 0], [0, 0]], "warnings": ["no known labels"], "reliability": []}
        )
        return out
    out["accuracy"] = float(accuracy_score(y, pred))
    out["precision"] = float(precision_score(y, pred, zero_division=np.nan))
    out["recall"] = float(recall_score(y, pred, zero_division=np.nan))
    out["f1"] = float(f1_score(y, pred, zero_division=np.nan))
    if _one_class(y):
        out["auroc"] = out["auprc"] = float("nan")
        warnings.append(
            f"only one class ({y[0]}) among {y.size} known labels: AUROC/AUPRC undefined"
        )
    else:
        out["auroc"] = float(roc_auc_score(y, p))
        out["auprc"] = float(average_precision_score(y, p))
    out["confusion"] = confusion_matrix(y, pred, labels=[0, 1]).tolist()
    cal = calibration(y.astype(float), p, n_bins)
    out["ece"], out["reliability"] = cal["ece"], cal["bins"]
    out["warnings"] = warnings
    return out


def compute_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    thresholds: np.ndarray | float = 0.5,
    labels: Sequence[str] | None = None,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Per-label, macro, micro and exact-match metrics at the given thresholds.

    Returns ``{"labels", "per_label": {label: {...}}, "macro": {...}, "micro": {...},
    "exact_match": {...}, "headline": {...}, "warnings": [...]}``. ``headline`` is the label's
    own metrics for a single label and the macro averages otherwise. Macro averages skip
    labels whose metric is NaN (and say so in ``warnings``).
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y_true, y_prob = check_inputs(y_true, y_prob)
    n, n_labels = y_true.shape
    names = label_names(labels, n_labels)
    thr = per_label_thresholds(thresholds, n_labels)
    per_label = {
        name: label_metrics(y_true[:, j], y_prob[:, j], thr[j], n_bins)
        for j, name in enumerate(names)
    }
    warnings = [f"{name}: {w}" for name, m in per_label.items() for w in m["warnings"]]
    macro = {}
    for metric in (*THRESHOLD_METRICS, *RANKING_METRICS, "ece"):
        values = np.array([m[metric] for m in per_label.values()], dtype=float)
        macro[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    known = ~np.isnan(y_true)
    pred = (y_prob >= thr).astype(int)
    yk, pk, predk = y_true[known].astype(int), y_prob[known], pred[known]
    micro = {
        "accuracy": float(accuracy_score(yk, predk)) if yk.size else float("nan"),
        "precision": float(precision_score(yk, predk, zero_division=np.nan))
        if yk.size
        else float("nan"),
        "recall": float(recall_score(yk, predk, zero_division=np.nan)) if yk.size else float("nan"),
        "f1": float(f1_score(yk, predk, zero_division=np.nan)) if yk.size else float("nan"),
        "auroc": float("nan") if _one_class(yk) else float(roc_auc_score(yk, pk)),
        "auprc": float("nan") if _one_class(yk) else float(average_precision_score(yk, pk)),
    }
    complete = known.all(axis=1)
    correct = (pred == np.nan_to_num(y_true)).all(axis=1)
    exact = {
        "studies": int(complete.sum()),
        "accuracy": float(correct[complete].mean()) if complete.any() else float("nan"),
    }
    headline = (
        {k: per_label[names[0]][k] for k in HEADLINE}
        if n_labels == 1
        else {k: macro[k] for k in HEADLINE}
    )
    headline["exact_match"] = exact["accuracy"]
    return {
        "labels": names,
        "n": int(n),
        "thresholds": dict(zip(names, map(float, thr))),
        "per_label": per_label,
        "macro": macro,
        "micro": micro,
        "exact_match": exact,
        "headline": headline,
        "warnings": warnings,
    }


def correct_matrix(
    y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray | float
) -> np.ndarray:
    """(n, L): 1 where the thresholded prediction matches a known label, 0 if not, NaN unknown."""
    y_true, y_prob = check_inputs(y_true, y_prob)
    thr = per_label_thresholds(thresholds, y_true.shape[1])
    right = ((y_prob >= thr).astype(float) == y_true).astype(float)
    right[np.isnan(y_true)] = np.nan
    return right
