"""Clinical efficacy (CE) of generated reports: label agreement with the reference report.

As in the report-generation literature (R2Gen-style CE with the CheXpert labeler or
CheXbert): both reports are labelled, an observation is **positive** when its label is 1
(``uncertain="negative"``, the default: -1 and blank count as negative;
``uncertain="positive"`` counts -1 as positive), the reference's labels are the truth and the
generated report's the prediction. Reported: per observation precision, recall and F1 with
the counts of positives; micro averages (TP, FP, FN pooled over the observations) and macro
F1 (the mean of the per-observation F1) over the 14 observations and over the five of
:data:`~cxrfuse.generation.labeler.CE_FIVE`.

An F1 is undefined when neither report set has a positive (``2TP + FP + FN = 0``), a precision
when the generated reports have none; undefined values are None and a macro average leaves
those observations out (scikit-learn's ``zero_division=0`` would count them as 0).
Intervals: seeded percentile bootstrap over studies (:mod:`cxrfuse.generation.bootstrap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrfuse.generation.bootstrap import CHUNK, estimate, replicate_weights
from cxrfuse.generation.labeler import CE_FIVE, CHEXPERT_LABELS
from cxrfuse.problems import CxrfuseError

UNCERTAIN_CHOICES = ("negative", "positive")


def positives(labels: np.ndarray, uncertain: str = "negative") -> np.ndarray:
    """Boolean positives of a CheXpert label array (1, 0, -1, NaN)."""
    if uncertain not in UNCERTAIN_CHOICES:
        raise CxrfuseError(f"uncertain={uncertain!r}; choose from {list(UNCERTAIN_CHOICES)}")
    labels = np.asarray(labels, dtype=np.float64)
    known = labels[~np.isnan(labels)]
    if not np.isin(known, (1.0, 0.0, -1.0)).all():
        raise CxrfuseError("CheXpert labels must be 1, 0, -1 or NaN")
    return (labels == 1) | ((labels == -1) & (uncertain == "positive"))


def _rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
        }


def _metrics(w: np.ndarray, y: np.ndarray, p: np.ndarray, groups: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Every metric for each row of study weights ``w`` (b, n)."""
    tp, fp, fn = w @ (y & p), w @ (~y & p), w @ (y & ~p)
    per = _rates(tp, fp, fn)
    out = {f"label/{k}": v for k, v in per.items()}
    for suffix, cols in groups.items():
        micro = _rates(tp[:, cols].sum(1), fp[:, cols].sum(1), fn[:, cols].sum(1))
        for k, v in micro.items():
            out[f"micro_{k}_{suffix}"] = v
        f1 = per["f1"][:, cols]
        defined = np.isfinite(f1).sum(1)
        out[f"macro_f1_{suffix}"] = np.where(defined > 0, np.nansum(f1, 1) / np.maximum(defined, 1), np.nan)
    return out


def clinical_scores(
    gen_labels: np.ndarray,
    ref_labels: np.ndarray,
    labels: Sequence[str] = CHEXPERT_LABELS,
    n_boot: int = 1000,
    seed: int = 0,
    uncertain: str = "negative",
) -> dict[str, Any]:
    """CE scores of generated-report labels against reference-report labels.

    ``gen_labels`` and ``ref_labels`` are (n, len(labels)) CheXpert arrays. Returns
    ``micro_f1_<k>``, ``macro_f1_<k>``, ``micro_precision_<k>``, ``micro_recall_<k>`` for k =
    len(labels) (14) and, when all five are among ``labels``, k = 5, each
    ``{"value", "low", "high"}``; ``per_label`` with precision, recall, F1 (same form) and
    ``reference_positives`` / ``generated_positives``; and the settings. Also ``_samples``
    (headline metric -> bootstrap replicates, for paired differences) and ``_per_study``
    (``ce_tp_<k>`` / ``ce_fp_<k>`` / ``ce_fn_<k>``: each study's true / false positive and
    false negative observations); neither goes into scores.json.
    """
    gen = np.asarray(gen_labels, dtype=np.float64)
    ref = np.asarray(ref_labels, dtype=np.float64)
    labels = list(labels)
    if gen.shape != ref.shape or gen.ndim != 2 or gen.shape[1] != len(labels):
        raise CxrfuseError(f"label arrays of shape {gen.shape} and {ref.shape} for {len(labels)} labels")
    if len(gen) == 0:
        raise CxrfuseError("no studies to score")
    y, p = positives(ref, uncertain), positives(gen, uncertain)
    groups = {str(len(labels)): list(range(len(labels)))}
    if all(x in labels for x in CE_FIVE):
        groups["5"] = [labels.index(x) for x in CE_FIVE]
    n = len(y)
    point = _metrics(np.ones((1, n)), y, p, groups)
    chunks: dict[str, list[np.ndarray]] = {}
    weights = replicate_weights(n, n_boot, seed)
    for start in range(0, len(weights), CHUNK):
        for key, value in _metrics(weights[start:start + CHUNK], y, p, groups).items():
            chunks.setdefault(key, []).append(value)
    samples = {k: np.concatenate(v) for k, v in chunks.items()}

    def est(key: str, col: int | None = None) -> dict[str, float | None]:
        value = point[key][0] if col is None else point[key][0, col]
        if key not in samples:
            return estimate(value, np.array([]))
        return estimate(value, samples[key] if col is None else samples[key][:, col])

    out: dict[str, Any] = {}
    for suffix in groups:
        for metric in ("micro_f1", "macro_f1", "micro_precision", "micro_recall"):
            out[f"{metric}_{suffix}"] = est(f"{metric}_{suffix}")
    out["per_label"] = {
        name: {
            "precision": est("label/precision", j),
            "recall": est("label/recall", j),
            "f1": est("label/f1", j),
            "reference_positives": int(y[:, j].sum()),
            "generated_positives": int(p[:, j].sum()),
        }
        for j, name in enumerate(labels)
    }
    out["_samples"] = {key: samples[key] for key in out if key in samples}
    per_study: dict[str, np.ndarray] = {}
    for suffix, cols in groups.items():
        per_study[f"ce_tp_{suffix}"] = (y[:, cols] & p[:, cols]).sum(1)
        per_study[f"ce_fp_{suffix}"] = (~y[:, cols] & p[:, cols]).sum(1)
        per_study[f"ce_fn_{suffix}"] = (y[:, cols] & ~p[:, cols]).sum(1)
    out["_per_study"] = per_study
    out.update(
        n_studies=n, n_boot=n_boot, seed=seed, uncertain=uncertain,
        positive="label 1" if uncertain == "negative" else "label 1 or -1 (uncertain counted as positive)",
    )
    return out


__all__ = ["UNCERTAIN_CHOICES", "clinical_scores", "positives"]
