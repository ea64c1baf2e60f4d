"""Seeded percentile bootstrap over studies for the generation scores, on the replicates of
:func:`cxrfuse.evaluation.bootstrap.resample_counts` (the project's one resampler).

Every replicate resamples the n studies with replacement, as a row of per-study counts; the
same ``(n, n_boot, seed)`` gives the same replicates, so the language and clinical scores of
one scoring run, and every system and baseline scored on the same studies in the same order,
share them: their differences are paired (:func:`paired_difference`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cxrfuse.evaluation.bootstrap import resample_counts

ALPHA = 0.05
CHUNK = 100
"""Replicates drawn per call of the generator (that of :func:`resample_counts`, whose stream
of draws depends on it)."""


def replicate_weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) float counts of each study in each replicate (``resample_counts``)."""
    if n_boot <= 0:
        return np.zeros((0, n))
    return np.concatenate(list(resample_counts(n, n_boot, seed, chunk=CHUNK)))


def resample_indices(n: int, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The study indices of the replicates of :func:`replicate_weights`, as (b, n) arrays
    (the same draws ``resample_counts`` counts; for checking a replicate against a scorer run
    on the resampled list)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(CHUNK, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def estimate(value: float, samples: np.ndarray, alpha: float = ALPHA) -> dict[str, float | None]:
    """``{"value", "low", "high"}``: the point value and its percentile interval; no
    interval (None) when fewer than half of the replicates gave a finite value."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[np.isfinite(samples)]
    point = float(value) if np.isfinite(value) else None
    if samples.size == 0 or finite.size < max(2, 0.5 * samples.size):
        return {"value": point, "low": None, "high": None}
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"value": point, "low": float(low), "high": float(high)}


def paired_difference(value_a: float | None, value_b: float | None, samples_a: np.ndarray,
                      samples_b: np.ndarray, alpha: float = ALPHA) -> dict[str, float | None]:
    """Paired bootstrap of ``a - b`` on the same replicates: ``{"diff", "low", "high", "p"}``.

    ``p`` is two-sided, as :func:`cxrfuse.evaluation.bootstrap.paired_bootstrap` computes it:
    twice the smaller share of replicate differences on either side of zero, as
    ``(count + 1) / (n_boot + 1)`` (never exactly 0), capped at 1; None without replicates."""
    if value_a is None or value_b is None:
        return {"diff": None, "low": None, "high": None, "p": None}
    a, b = np.asarray(samples_a, dtype=np.float64), np.asarray(samples_b, dtype=np.float64)
    d = a - b if a.shape == b.shape else np.array([])
    entry = estimate(value_a - value_b, d, alpha)
    finite = d[np.isfinite(d)]
    p = None
    if entry["low"] is not None and finite.size:
        tail = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
        p = float(min(1.0, 2 * (tail + 1) / (finite.size + 1)))
    return {"diff": entry["value"], "low": entry["low"], "high": entry["high"], "p": p}


__all__ = ["ALPHA", "estimate", "paired_difference", "replicate_weights", "resample_indices"]
