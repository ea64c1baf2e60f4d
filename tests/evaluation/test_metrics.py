"""Metrics agree with scikit-learn, thresholds come from val, degenerate labels do not crash."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxrfuse.evaluation.metrics import (
    calibration,
    choose_threshold,
    choose_thresholds,
    compute_metrics,
    correct_matrix,
    parse_threshold,
)
from cxrfuse.problems import CxrfuseError


def fixed_multilabel(
    n: int = 300, n_labels: int = 4, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < [0.1, 0.3, 0.5, 0.2]).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, n_labels)), 0, 1).round(3)  # ties on purpose
    return y, p


def test_multilabel_metrics_agree_with_sklearn() -> None:
    y, p = fixed_multilabel()
    thr = np.array([0.4, 0.5, 0.45, 0.6])
    pred = (p >= thr).astype(int)
    m = compute_metrics(y, p, thr, labels=["a", "b", "c", "d"])
    for j, name in enumerate("abcd"):
        row = m["per_label"][name]
        assert row["accuracy"] == pytest.approx(accuracy_score(y[:, j], pred[:, j]))
        assert row["precision"] == pytest.approx(precision_score(y[:, j], pred[:, j]))
        assert row["recall"] == pytest.approx(recall_score(y[:, j], pred[:, j]))
        assert row["f1"] == pytest.approx(f1_score(y[:, j], pred[:, j]))
        assert row["auroc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]))
        assert row["auprc"] == pytest.approx(average_precision_score(y[:, j], p[:, j]))
        assert row["confusion"] == multilabel_confusion_matrix(y, pred)[j].tolist()
    assert m["macro"]["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["macro"]["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["macro"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert m["macro"]["auprc"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert m["micro"]["f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["micro"]["recall"] == pytest.approx(recall_score(y, pred, average="micro"))
    assert m["micro"]["auroc"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert m["micro"]["auprc"] == pytest.approx(average_precision_score(y, p, average="micro"))
    assert m["exact_match"]["accuracy"] == pytest.approx(accuracy_score(y, pred))  # subset accuracy
    assert m["headline"]["f1"] == m["macro"]["f1"]


def test_unknown_labels_are_excluded_per_label() -> None:
    y, p = fixed_multilabel()
    y[::5, 1] = np.nan
    y[::7, 2] = np.nan
    m = compute_metrics(y, p, 0.5, labels=list("abcd"))
    for j, name in enumerate("abcd"):
        known = ~np.isnan(y[:, j])
        assert m["per_label"][name]["n"] == known.sum()
        assert m["per_label"][name]["auroc"] == pytest.approx(
            roc_auc_score(y[known, j], p[known, j])
        )
        assert m["per_label"][name]["f1"] == pytest.approx(
            f1_score(y[known, j], p[known, j] >= 0.5)
        )
    complete = ~np.isnan(y).any(axis=1)
    assert m["exact_match"]["studies"] == complete.sum()
    assert m["exact_match"]["accuracy"] == pytest.approx(
        accuracy_score(y[complete], (p[complete] >= 0.5).astype(int))
    )
    right = correct_matrix(y, p, 0.5)
    assert np.isnan(right[::5, 1]).all() and np.nanmean(right[:, 0]) == pytest.approx(
        m["per_label"]["a"]["accuracy"]
    )


def test_binary_headline_is_the_label_itself() -> None:
    y, p = fixed_multilabel()
    m = compute_metrics(y[:, 2], p[:, 2], 0.5, labels=["abnormal"])
    assert m["headline"]["auroc"] == pytest.approx(roc_auc_score(y[:, 2], p[:, 2]))
    assert m["headline"]["exact_match"] == pytest.approx(accuracy_score(y[:, 2], p[:, 2] >= 0.5))


def test_calibration_matches_sklearn_bins_and_ece_by_hand() -> None:
    y, p = fixed_multilabel()
    cal = calibration(y[:, 1], p[:, 1], n_bins=10)
    frac, mean = calibration_curve(y[:, 1], p[:, 1], n_bins=10, strategy="uniform")
    filled = [b for b in cal["bins"] if b["count"]]
    assert [b["frac_pos"] for b in filled] == pytest.approx(frac)
    assert [b["mean_prob"] for b in filled] == pytest.approx(mean)
    counts = np.array([b["count"] for b in filled])
    assert cal["ece"] == pytest.approx(np.sum(np.abs(frac - mean) * counts) / counts.sum())
    assert sum(b["count"] for b in cal["bins"]) == len(y)


def test_one_class_label_gives_nan_and_a_warning_not_a_crash() -> None:
    y, p = fixed_multilabel()
    y[:, 0] = 0.0
    y[:, 3] = np.nan
    m = compute_metrics(y, p, 0.5, labels=list("abcd"))
    assert np.isnan(m["per_label"]["a"]["auroc"]) and np.isnan(m["per_label"]["d"]["f1"])
    assert any(w.startswith("a: only one class") for w in m["warnings"])
    assert any(w.startswith("d: no known labels") for w in m["warnings"])
    assert m["macro"]["auroc"] == pytest.approx(np.mean([m["per_label"][k]["auroc"] for k in "bc"]))
    thr, warnings = choose_thresholds(y, p, "f1", labels=list("abcd"))
    assert thr[0] == 0.5 and thr[3] == 0.5 and len(warnings) == 2


def _brute_force(y: np.ndarray, p: np.ndarray, score) -> float:
    candidates = np.unique(p)
    values = [score(y, (p >= t).astype(int), t) for t in candidates]
    return float(candidates[int(np.argmax(values))])


def test_f1_and_youden_thresholds_are_the_optima() -> None:
    y, p = fixed_multilabel()
    for j in range(y.shape[1]):
        f1_best = _brute_force(
            y[:, j], p[:, j], lambda yy, pred, t: f1_score(yy, pred, zero_division=0)
        )
        youden_best = _brute_force(
            y[:, j], p[:, j], lambda yy, pred, t: recall_score(yy, pred) - (pred[yy == 0].mean())
        )
        f1_t, _ = choose_threshold(y[:, j], p[:, j], "f1")
        you_t, _ = choose_threshold(y[:, j], p[:, j], "youden")
        assert f1_score(y[:, j], p[:, j] >= f1_t) == pytest.approx(
            f1_score(y[:, j], p[:, j] >= f1_best)
        )
        assert you_t == pytest.approx(youden_best)
    assert choose_threshold(y[:, 0], p[:, 0], "0.5") == (0.5, None)
    assert choose_threshold(y[:, 0], p[:, 0], 0.3) == (0.3, None)


def test_threshold_comes_from_validation_not_test() -> None:
    """Val is best cut at 0.3, test at 0.7: the test metrics use 0.3."""
    rng = np.random.default_rng(0)

    def split(cut: float) -> tuple[np.ndarray, np.ndarray]:
        p = rng.random(400)
        return (p >= cut).astype(float), p

    y_val, p_val = split(0.3)
    y_test, p_test = split(0.7)
    thr, _ = choose_thresholds(y_val, p_val, "f1")
    best_test, _ = choose_threshold(y_test, p_test, "f1")
    assert thr[0] == pytest.approx(0.3, abs=0.01) and best_test == pytest.approx(0.7, abs=0.01)
    m = compute_metrics(y_test, p_test, thr)
    assert m["thresholds"]["0"] == thr[0]
    assert (
        m["headline"]["precision"] < 0.5
    )  # the val cut is wrong for test, and we report that honestly


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(CxrfuseError, match="shape"):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(CxrfuseError, match="0, 1 or NaN"):
        compute_metrics(np.array([0, 2, 1.0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(CxrfuseError, match="choose one of"):
        parse_threshold("median")
    with pytest.raises(CxrfuseError, match="outside"):
        parse_threshold("1.5")
