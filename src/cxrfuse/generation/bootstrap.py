"""Seeded percentile bootstrap over studies, shared by the language and clinical scores.

Every replicate resamples the n studies with replacement; the same ``(n, n_boot, seed)``
gives the same replicates, so the language and clinical intervals of one scoring run come
from the same resampled study sets.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ALPHA = 0.05


def resample_indices(n: int, n_boot: int, seed: int = 0, chunk: int = 250) -> Iterator[np.ndarray]:
    """Replicates as (b, n) arrays of study indices, ``chunk`` at a time."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(b, n) index replicates -> (b, n) float counts of each study in each replicate."""
    b = indices.shape[0]
    flat = (indices + np.arange(b)[:, None] * n).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


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


__all__ = ["ALPHA", "counts", "estimate", "resample_indices"]
