"""Uncertainty: bootstrap confidence intervals, paired model comparisons, DeLong's test, seeds.

The bootstrap resamples **studies** (rows) with replacement, seeded. Instead of re-running
scikit-learn 1000 times, each replicate is a vector of per-study counts and every metric is
computed from count-weighted sums in one vectorised pass (the weighted metrics equal
scikit-learn's on the resampled data; the tests check this), so 1000 replicates of 4000
studies take seconds. Two models compared on the same studies share the same replicates
(a paired bootstrap).

Memory stays flat in the number of studies: the replicates are drawn 100 at a time as int32
study indices (the same numbers, seed for seed, as :func:`resample_counts`) and counted and
scored a few replicates at a time, so that replicates x studies x labels stays under
:data:`BLOCK_ELEMENTS`; each label's tied-score groups are built once per call, not per block.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from cxrfuse.evaluation.metrics import (
    HEADLINE,
    check_inputs,
    label_names,
    per_label_thresholds,
)
from cxrfuse.problems import CxrfuseError

ALPHA = 0.05

BLOCK_ELEMENTS = 8_000_000
"""Replicates x studies x (labels + 1) scored at once by :func:`bootstrap_ci` and
:func:`paired_bootstrap` (about 200 MB of temporaries, whatever the number of studies)."""


def resample_counts(n: int, n_boot: int, seed: int = 0, chunk: int = 100) -> Iterator[np.ndarray]:
    """Bootstrap replicates as (b, n) count matrices, ``chunk`` at a time; the same seed gives the
    same replicates whatever the metrics, so two models scored on one seed are paired."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + np.arange(b)[:, None] * n).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def _count_blocks(n: int, n_boot: int, seed: int, block: int) -> Iterator[np.ndarray]:
    """The replicates of :func:`resample_counts` (same seed: same replicates, same order) as
    (b, n) float64 counts, at most ``block`` at a time; each draw of 100 replicates is kept
    as int32 indices (400 bytes a study) while its blocks are counted."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(100, n_boot - done)
        idx = rng.integers(0, n, size=(b, n), dtype=np.int32)  # = resample_counts' int64 draw
        for lo in range(0, b, block):
            part = idx[lo:lo + block]
            counts = np.empty((len(part), n), dtype=np.float64)
            for r, row in enumerate(part):
                counts[r] = np.bincount(row, minlength=n)
            yield counts
        done += b


def _block(n: int, width: int) -> int:
    """Replicates per block for ``n`` studies scored on ``width`` label columns."""
    return int(min(100, max(1, BLOCK_ELEMENTS // max(1, n * width))))


class ScoreGroups(NamedTuple):
    """One class's rows (positives or negatives) of a ranking, ordered for per-group sums."""

    order: np.ndarray  # weight columns of the class's rows, sorted by score (ascending)
    starts: np.ndarray  # where each score group with a row of this class begins in ``order``
    group: np.ndarray  # that group's index among all distinct scores (ascending)
    n_groups: int  # distinct scores of both classes together


def _by_group(w: np.ndarray, groups: ScoreGroups) -> np.ndarray:
    """(b, n) weights -> (G, b) float32 weight per score group and replicate (groups on the first
    axis, so cumulative sums over groups run as vector adds; counts stay exact in float32).

    A gather of each replicate's row in score order and one ``np.add.reduceat`` over the runs:
    every pass reads or writes memory in order, so the cost stays linear in the rows (a sparse
    product scattering into the (G, b) output missed the cache more as G grew)."""
    out = np.zeros((groups.n_groups, w.shape[0]), dtype=np.float32)
    if groups.order.size:
        sums = np.add.reduceat(np.take(w, groups.order, axis=1), groups.starts, axis=1)
        out[groups.group] = sums.T
    return out


def score_groups(y: np.ndarray, p: np.ndarray, columns: np.ndarray | None = None
                 ) -> tuple[ScoreGroups, ScoreGroups]:  # fmt: skip
    """The positive and negative tied-score groups of :func:`weighted_ranking`; ``columns``: the
    weight column of each row (default: row i is column i), so rows can share a study's weight."""
    _, inverse = np.unique(p, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_groups = int(inverse.max()) + 1 if p.size else 0
    columns = np.arange(p.size) if columns is None else np.asarray(columns)

    def one_class(mask: np.ndarray) -> ScoreGroups:
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(inverse[rows], kind="stable")]
        g = inverse[rows]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if g.size else g
        return ScoreGroups(columns[rows], starts, g[starts], n_groups)

    return one_class(y == 1), one_class(y == 0)


def weighted_ranking(w: np.ndarray, y: np.ndarray, p: np.ndarray,
                     groups: tuple[ScoreGroups, ScoreGroups] | None = None
                     ) -> dict[str, np.ndarray]:  # fmt: skip
    """AUROC and average precision for each row of weights ``w`` (b, m); NaN for one-class rows.

    Ties are handled like scikit-learn: AUROC counts a tie as one half, average precision
    steps at each distinct score. With ``cpos``/``cneg`` the cumulative weights up to each
    score group (ascending): AUROC = (sum pos * cneg - sum pos * neg / 2) / (P N), and AP =
    sum pos * precision / P, where a group's precision counts the weights at or above it.
    ``groups``: :func:`score_groups` of ``y``, ``p``, when the caller built them already; built
    with ``columns``, ``w`` holds a column per study rather than per row of ``y``.
    """
    if len(y) == 0:  # a label with no known value: undefined in every replicate
        nan = np.full(w.shape[0], np.nan)
        return {"auroc": nan, "auprc": nan.copy()}
    pos_group, neg_group = groups if groups is not None else score_groups(y, p)
    wpos, wneg = _by_group(w, pos_group), _by_group(w, neg_group)
    cpos, cneg = np.cumsum(wpos, axis=0), np.cumsum(wneg, axis=0)
    n_pos, n_neg = cpos[-1].astype(np.float64), cneg[-1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pairs = np.einsum("gb,gb->b", wpos, cneg, dtype=np.float64) - 0.5 * np.einsum(
            "gb,gb->b", wpos, wneg, dtype=np.float64
        )
        auroc = pairs / (n_pos * n_neg)
        tp = cpos[-1] - cpos + wpos  # positives at or above each group
        called = tp + (cneg[-1] - cneg + wneg)
        precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
        auprc = np.einsum("gb,gb->b", wpos, precision, dtype=np.float64) / n_pos
    bad = (n_pos == 0) | (n_neg == 0)
    auroc[bad] = auprc[bad] = np.nan
    return {"auroc": auroc, "auprc": auprc}


def weighted_threshold(w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, precision, recall and F1 for each row of weights (NaN where undefined)."""
    y, pred = np.asarray(y, dtype=np.float64)[:, None], np.asarray(pred, dtype=bool)[:, None]
    return _threshold_metrics(w @ _confusion_cells(y, pred, np.ones(y.shape, dtype=bool)))


def _threshold_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from (b, 4) weighted counts of true positives, false positives, false negatives
    and true negatives."""
    tp, fp, fn, tn = counts.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
        }


def _confusion_cells(y_true: np.ndarray, pred: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(n, L x 4) float64: whether each study is a TP, FP, FN or TN of each label (0 where the
    label is unknown), so one product with the weights counts every label's cells at once."""
    y = np.nan_to_num(y_true).astype(bool)
    cells = np.stack([pred & y, pred & ~y, ~pred & y, ~pred & ~y], axis=-1) & known[..., None]
    return cells.reshape(len(y_true), -1).astype(np.float64)


def replicate_metrics(
    w: np.ndarray,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    thresholds: np.ndarray,
    labels: Sequence[str],
    micro: bool = True,
    groups: dict[Any, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Every metric for each replicate (row of ``w``): keys ``label/<name>/<metric>``,
    ``macro/<metric>``, ``micro/<metric>``, ``exact_match`` and ``headline/<metric>``.
    ``groups``: a dict kept across calls on the same ``y_true``, ``y_prob`` and ``thresholds``
    (blocks of replicates), which holds each label's tied-score groups and confusion cells once
    built.

    No weight matrix is copied per label or per (study, label) pair: rows with an unknown label
    get zero cells, and the rankings gather each label's studies from ``w`` itself (counts are
    whole numbers, so every sum is exact and equals the sum over the known rows alone)."""
    out: dict[str, np.ndarray] = {}
    cache: dict[Any, Any] = {} if groups is None else groups
    known = ~np.isnan(y_true)
    pred = y_prob >= thresholds
    if "cells" not in cache:
        cache["cells"] = _confusion_cells(y_true, pred, known)
    counts = (w @ cache["cells"]).reshape(len(w), len(labels), 4)

    def grouped(key: Any, y: np.ndarray, p: np.ndarray, columns: np.ndarray) -> Any:
        if key not in cache:
            cache[key] = score_groups(y, p, columns)
        return cache[key]

    for j, name in enumerate(labels):
        k = known[:, j]
        y, p = y_true[k, j], y_prob[k, j]
        ranking = weighted_ranking(w, y, p, grouped(j, y, p, np.flatnonzero(k)) if len(y) else None)
        values = {**_threshold_metrics(counts[:, j]), **ranking}
        out.update({f"label/{name}/{m}": v for m, v in values.items()})
    for m in HEADLINE:
        stack = np.stack([out[f"label/{name}/{m}"] for name in labels], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[f"macro/{m}"] = np.nanmean(stack, axis=1)
    if micro and len(labels) > 1:
        rows, cols = np.nonzero(known)
        out.update({f"micro/{m}": v for m, v in _threshold_metrics(counts.sum(axis=1)).items()})
        yk, pk = y_true[rows, cols], y_prob[rows, cols]
        out.update({f"micro/{m}": v for m, v in
                    weighted_ranking(w, yk, pk, grouped("micro", yk, pk, rows)).items()})  # fmt: skip
    complete = known.all(axis=1)
    correct = (pred == np.nan_to_num(y_true).astype(bool)).all(axis=1) & complete
    with np.errstate(divide="ignore", invalid="ignore"):
        out["exact_match"] = (w @ correct) / (w @ complete)
    source = f"label/{labels[0]}" if len(labels) == 1 else "macro"
    for m in HEADLINE:
        out[f"headline/{m}"] = out[f"{source}/{m}"]
    out["headline/exact_match"] = out["exact_match"]
    return out


def _interval(samples: np.ndarray, alpha: float = ALPHA) -> dict[str, float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size < max(10, 0.5 * samples.size):
        return {"low": None, "high": None, "se": None, "valid": int(finite.size)}
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {
        "low": float(low),
        "high": float(high),
        "se": float(finite.std(ddof=1)),
        "valid": int(finite.size),
    }


def _collect(
    n: int, n_boot: int, seed: int, compute: Any, progress: bool, desc: str, width: int = 1
) -> dict[str, np.ndarray]:
    """``compute(counts)`` of every replicate, in blocks sized for ``width`` label columns."""
    chunks: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=n_boot, desc=desc, disable=not progress, leave=False)
    for w in _count_blocks(n, n_boot, seed, _block(n, width)):
        for key, value in compute(w).items():
            chunks.setdefault(key, []).append(value)
        bar.update(len(w))
    bar.close()
    return {k: np.concatenate(v) for k, v in chunks.items()}


def bootstrap_ci(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    thresholds: np.ndarray | float = 0.5,
    labels: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = ALPHA,
    progress: bool = False,
) -> dict[str, dict[str, float | None]]:
    """Percentile bootstrap intervals (default 95 %) for every metric of :func:`replicate_metrics`.

    Returns ``{key: {"low", "high", "se", "valid"}}``; ``valid`` counts the replicates where the
    metric was defined (a rare label can have no positive in some resamples); fewer than half
    valid gives no interval (None).
    """
    y_true, y_prob = check_inputs(y_true, y_prob)
    names = label_names(labels, y_true.shape[1])
    thr = per_label_thresholds(thresholds, y_true.shape[1])
    groups: dict[Any, Any] = {}
    samples = _collect(
        len(y_true),
        n_boot,
        seed,
        lambda w: replicate_metrics(w, y_true, y_prob, thr, names, groups=groups),
        progress,
        "bootstrap",
        width=2 * y_true.shape[1] + 1,
    )
    return {key: _interval(v, alpha) for key, v in samples.items()}


def paired_bootstrap(
    y_true: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    thresholds_a: np.ndarray | float,
    thresholds_b: np.ndarray | float,
    labels: Sequence[str] | None = None,
    *,
    metrics: Sequence[str] = HEADLINE,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, dict[str, float | None]]:
    """Paired bootstrap of the headline-metric difference ``a - b`` on the same studies.

    Both models are scored on every replicate; returns per metric the observed difference
    (``diff``), its percentile interval and a two-sided p-value: twice the smaller share of
    replicate differences on either side of zero, as ``(count + 1) / (n_boot + 1)`` so it is never
    reported as exactly 0, capped at 1.
    """
    y_true, prob_a = check_inputs(y_true, prob_a)
    _, prob_b = check_inputs(y_true, prob_b)
    names = label_names(labels, y_true.shape[1])
    n_labels = y_true.shape[1]
    ta, tb = (
        per_label_thresholds(thresholds_a, n_labels),
        per_label_thresholds(thresholds_b, n_labels),
    )
    ones = np.ones((1, len(y_true)))
    keys = [f"headline/{m}" for m in metrics]

    groups_a: dict[Any, Any] = {}
    groups_b: dict[Any, Any] = {}

    def diff(w: np.ndarray) -> dict[str, np.ndarray]:
        a = replicate_metrics(w, y_true, prob_a, ta, names, micro=False, groups=groups_a)
        b = replicate_metrics(w, y_true, prob_b, tb, names, micro=False, groups=groups_b)
        return {k: a[k] - b[k] for k in keys}

    observed = diff(ones)
    samples = _collect(len(y_true), n_boot, seed, diff, False, "paired bootstrap",
                       width=2 * n_labels + 1)
    out = {}
    for m, key in zip(metrics, keys):
        d = samples[key][np.isfinite(samples[key])]
        interval = _interval(samples[key], alpha)
        tail = min((d <= 0).sum(), (d >= 0).sum())
        p = float(min(1.0, 2 * (tail + 1) / (d.size + 1))) if d.size else None
        out[m] = {
            "diff": _finite(observed[key][0]),
            "low": interval["low"],
            "high": interval["high"],
            "p": p,
        }
    return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# ---------------------------------------------------------------------------------- DeLong
def delong_components(
    y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014, O(n log n)): AUROCs (k,) and structural components.

    ``scores`` (k, n) holds k models' scores on the same studies; returns ``aucs``, ``v10``
    (k, n_positive) and ``v01`` (k, n_negative), computed from mid-ranks.
    """
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise CxrfuseError("DeLong needs both classes among the labels")
    from scipy.stats import rankdata  # here, not at the top: start-up (issue 22)

    pos, neg = scores[:, y], scores[:, ~y]
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) and their DeLong covariance matrix (k, k)."""
    aucs, v10, v01 = delong_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's test of two correlated AUROCs on the same studies (NaN labels dropped).

    Returns ``auroc_a``, ``auroc_b``, ``diff`` (a - b), its 95 % interval (``low``, ``high``),
    ``z`` and the two-sided ``p``.
    """
    y = np.asarray(y, dtype=np.float64)
    known = ~np.isnan(y)
    aucs, cov = delong_covariance(
        y[known], np.stack([np.asarray(score_a)[known], np.asarray(score_b)[known]])
    )
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = np.sqrt(max(var, 0.0))
    z = diff / se if se > 0 else (0.0 if diff == 0 else np.inf * np.sign(diff))
    from scipy.stats import norm  # here, not at the top: start-up (issue 22)

    p = float(2 * norm.sf(abs(z))) if np.isfinite(z) else 0.0
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "diff": diff,
        "low": diff - 1.959964 * se,
        "high": diff + 1.959964 * se,
        "z": float(z),
        "p": p,
    }


# ---------------------------------------------------------------------------------- seeds
def seed_summary(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation across seeds (NaN/None values left out)."""
    x = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return {
        "mean": float(x.mean()) if x.size else None,
        "sd": float(x.std(ddof=1)) if x.size > 1 else None,
        "n": int(x.size),
    }


__all__ = [
    "bootstrap_ci",
    "delong_components",
    "delong_covariance",
    "delong_test",
    "paired_bootstrap",
    "replicate_metrics",
    "resample_counts",
    "score_groups",
    "seed_summary",
    "weighted_ranking",
    "weighted_threshold",
]
