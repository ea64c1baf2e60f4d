"""Bootstrap intervals, paired comparisons, DeLong (fast vs slow reference), seed summaries."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, roc_auc_score

from cxrfuse.evaluation.bootstrap import (
    bootstrap_ci,
    delong_covariance,
    delong_test,
    paired_bootstrap,
    resample_counts,
    seed_summary,
    weighted_ranking,
    weighted_threshold,
)
from cxrfuse.evaluation.metrics import compute_metrics


def scores(
    n: int, signal: float, seed: int = 0, n_labels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=(n, n_labels)))))
    return y, p.round(3)


def test_weighted_metrics_equal_sklearn_on_the_resampled_rows() -> None:
    y, p = scores(500, 1.0)
    y, p = y[:, 0], p[:, 0]
    w = next(resample_counts(len(y), 3, seed=1))
    for row in w:
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        rank = weighted_ranking(row[None], y, p)
        thr = weighted_threshold(row[None], y, p >= 0.4)
        assert rank["auroc"][0] == pytest.approx(roc_auc_score(y[idx], p[idx]))
        assert rank["auprc"][0] == pytest.approx(average_precision_score(y[idx], p[idx]))
        assert thr["f1"][0] == pytest.approx(f1_score(y[idx], p[idx] >= 0.4))
        assert thr["precision"][0] == pytest.approx(precision_score(y[idx], p[idx] >= 0.4))


def test_ci_covers_point_estimate_narrows_with_n_and_is_seeded() -> None:
    widths = []
    for n in (200, 2000):
        y, p = scores(n, 1.0, n_labels=2)
        point = compute_metrics(y, p, 0.5)["headline"]
        ci = bootstrap_ci(y, p, 0.5, n_boot=400, seed=0)
        for m in ("auroc", "f1", "accuracy"):
            assert ci[f"headline/{m}"]["low"] <= point[m] <= ci[f"headline/{m}"]["high"]
        widths.append(ci["headline/auroc"]["high"] - ci["headline/auroc"]["low"])
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(10)
    y, p = scores(300, 1.0)
    assert bootstrap_ci(y, p, n_boot=100, seed=3) == bootstrap_ci(y, p, n_boot=100, seed=3)
    assert bootstrap_ci(y, p, n_boot=100, seed=3) != bootstrap_ci(y, p, n_boot=100, seed=4)


def test_thousand_resamples_of_four_thousand_studies_take_seconds() -> None:
    y, p = scores(4000, 1.0, n_labels=4)
    start = time.perf_counter()
    ci = bootstrap_ci(y, p, 0.5, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 20  # about 1 s on the 2-core dev machine
    assert ci["micro/auroc"]["valid"] == 1000


def test_rare_label_resamples_without_positives_are_counted_not_crashing() -> None:
    y = np.zeros(60)
    y[:2] = 1
    p = np.linspace(0, 1, 60)
    ci = bootstrap_ci(y, p, n_boot=200, seed=0)
    assert ci["headline/auroc"]["valid"] < 200


def slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) by the definition: O(m n) pairwise kernel."""
    y = y.astype(bool)
    aucs, v10s, v01s = [], [], []
    for s in (a, b):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    cov = np.cov(np.stack(v10s)) / y.sum() + np.cov(np.stack(v01s)) / (~y).sum()
    return np.array(aucs), cov


def test_fast_delong_matches_the_slow_reference_with_ties() -> None:
    y, a = scores(300, 1.0, seed=1)
    _, b = scores(300, 0.4, seed=2)
    y = y[:, 0]
    a, b = a[:, 0].round(2), b[:, 0].round(2)  # many ties
    fast_aucs, fast_cov = delong_covariance(y, np.stack([a, b]))
    slow_aucs, slow_cov = slow_delong(y, a, b)
    assert fast_aucs == pytest.approx(slow_aucs)
    assert fast_aucs[0] == pytest.approx(roc_auc_score(y, a))
    np.testing.assert_allclose(fast_cov, slow_cov, rtol=1e-10)


def test_delong_detects_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(600) < 0.4).astype(float)
    strong = y * 1.5 + rng.normal(size=600)
    weak = y * 0.3 + rng.normal(size=600)
    result = delong_test(y, strong, weak)
    assert result["diff"] > 0.2 and result["p"] < 1e-6 and result["low"] > 0
    twin = strong + rng.normal(scale=0.05, size=600)  # nearly the same model
    assert delong_test(y, strong, twin)["p"] > 0.05
    y_nan = y.copy()
    y_nan[:50] = np.nan
    assert delong_test(y_nan, strong, weak)["auroc_a"] == pytest.approx(
        roc_auc_score(y[50:], strong[50:])
    )


def test_paired_bootstrap_difference_and_p_value() -> None:
    y, strong = scores(400, 1.5, seed=5)
    rng = np.random.default_rng(1)
    weak = np.clip(strong + rng.normal(scale=0.4, size=strong.shape), 0, 1)
    result = paired_bootstrap(y, strong, weak, 0.5, 0.5, n_boot=300, seed=0)
    expected = roc_auc_score(y[:, 0], strong[:, 0]) - roc_auc_score(y[:, 0], weak[:, 0])
    assert result["auroc"]["diff"] == pytest.approx(expected)
    assert result["auroc"]["low"] > 0 and result["auroc"]["p"] < 0.05
    same = paired_bootstrap(y, strong, strong, 0.5, 0.5, n_boot=100, seed=0)
    assert same["auroc"]["diff"] == 0 and same["auroc"]["p"] == 1.0


def test_seed_summary() -> None:
    assert seed_summary([0.8, 0.9, None, float("nan")]) == {
        "mean": pytest.approx(0.85),
        "sd": pytest.approx(np.std([0.8, 0.9], ddof=1)),
        "n": 2,
    }
    assert seed_summary([0.7])["sd"] is None


def test_a_label_without_any_known_value_has_no_interval_instead_of_failing():
    y = np.array([[1, np.nan], [0, np.nan], [1, np.nan], [0, np.nan]] * 5)
    p = np.random.default_rng(0).random(y.shape)
    ci = bootstrap_ci(y, p, labels=["a", "b"], n_boot=50)
    assert ci["label/b/auroc"]["low"] is None and ci["label/b/auroc"]["valid"] == 0
    assert ci["label/a/auroc"]["low"] is not None


def _reference_ci(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict:
    """The intervals as computed before blocks: every 100-replicate chunk of resample_counts
    scored at once."""
    from cxrfuse.evaluation.bootstrap import _interval, replicate_metrics
    from cxrfuse.evaluation.metrics import label_names

    names = label_names(None, y.shape[1])
    thr = np.full(y.shape[1], 0.5)
    chunks: dict[str, list[np.ndarray]] = {}
    for w in resample_counts(len(y), n_boot, seed):
        for key, value in replicate_metrics(w, y, p, thr, names).items():
            chunks.setdefault(key, []).append(value)
    return {k: _interval(np.concatenate(v)) for k, v in chunks.items()}


@pytest.mark.parametrize("block_elements", [8_000_000, 5_000])
def test_blocks_of_replicates_give_the_same_intervals(monkeypatch, block_elements: int) -> None:
    """Scoring a few replicates at a time (flat memory) changes no interval, for the same
    seed: the same draws, counted block by block (5,000 elements: one replicate a block)."""
    from cxrfuse.evaluation import bootstrap

    y, p = scores(1500, 0.8, seed=2, n_labels=3)
    y[::7, 1] = np.nan  # unknown labels
    monkeypatch.setattr(bootstrap, "BLOCK_ELEMENTS", block_elements)
    got = bootstrap_ci(y, p, 0.5, n_boot=230, seed=5)
    assert got == _reference_ci(y, p, 230, 5)
    if block_elements < 10_000:
        assert bootstrap._block(1500, 7) == 1


def test_replicate_metrics_equal_the_metrics_of_the_known_rows_alone() -> None:
    """Unknown labels give zero cells and each ranking gathers its studies from the weights
    themselves; the numbers are those of each label's known rows (and, for micro, every known
    (study, label) pair) scored on their own copied weights, exactly."""
    from cxrfuse.evaluation.bootstrap import replicate_metrics

    y, p = scores(800, 0.8, seed=4, n_labels=3)
    y[::5, 0] = np.nan
    y[1::3, 2] = np.nan
    thr = np.array([0.4, 0.5, 0.6])
    w = next(resample_counts(len(y), 7, seed=2))
    got = replicate_metrics(w, y, p, thr, ["a", "b", "c"])
    known = ~np.isnan(y)
    for j, name in enumerate("abc"):
        k = known[:, j]
        want = {**weighted_threshold(w[:, k], y[k, j], p[k, j] >= thr[j]),
                **weighted_ranking(w[:, k], y[k, j], p[k, j])}  # fmt: skip
        for metric, value in want.items():
            np.testing.assert_array_equal(got[f"label/{name}/{metric}"], value)
    rows, cols = np.nonzero(known)
    wm = w[:, rows]
    want = {**weighted_threshold(wm, y[rows, cols], p[rows, cols] >= thr[cols]),
            **weighted_ranking(wm, y[rows, cols], p[rows, cols])}  # fmt: skip
    for metric, value in want.items():
        np.testing.assert_array_equal(got[f"micro/{metric}"], value)
