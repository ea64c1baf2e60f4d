"""Metrics per subgroup (sex, age band, view position, source dataset) with bootstrap
intervals, the gap to the overall figure, the false-negative rate at the chosen thresholds
(the underdiagnosis measure of Seyyed-Kalantari et al., Nature Medicine 2021), expected
calibration error and a reliability diagram per subgroup. Small subgroups (fewer than
:data:`MIN_CLASS` studies of the rarer class of some label) are flagged, never hidden."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfuse.data.manifest import Manifest
from cxrfuse.evaluation.bootstrap import bootstrap_ci
from cxrfuse.evaluation.metrics import calibration, compute_metrics
from cxrfuse.evaluation.plots import plot_reliability
from cxrfuse.vocab import FRONTAL_VIEWS, LATERAL_VIEWS

ATTRIBUTES = ("sex", "age band", "view", "dataset")
AGE_EDGES = (0, 20, 40, 60, 80)
MIN_CLASS = 10
"""A subgroup with fewer positives or fewer negatives than this for some label is ``small``:
the count of the rarer class, not the total, bounds what AUROC and FNR can say."""


def age_band(age: float | None) -> str | None:
    """``0-19``, ``20-39``, ``40-59``, ``60-79``, ``80+``; None for an unknown age."""
    if age is None or not np.isfinite(age):
        return None
    lower = max(e for e in AGE_EDGES if e <= max(age, 0))
    return f"{lower}+" if lower == AGE_EDGES[-1] else f"{lower}-{lower + 19}"


def study_view(views: Sequence[Mapping[str, Any]]) -> str:
    """The study's view position: its first frontal image's, else ``LATERAL only``."""
    names = [v.get("view") for v in views]
    frontal = [n for n in names if n in FRONTAL_VIEWS]
    if frontal:
        return str(frontal[0])
    return "LATERAL only" if any(n in LATERAL_VIEWS for n in names) else "UNKNOWN"


def study_attributes(manifest: Manifest, study_ids: Sequence[str]) -> pd.DataFrame:
    """Per study id (in that order): sex, age band, view, dataset (None where unknown)."""
    df = manifest.df.set_index(manifest.df["study_id"].astype(str))
    rows = df.reindex([str(s) for s in study_ids])
    return pd.DataFrame({
        "sex": rows["sex"].tolist(),
        "age band": [age_band(a) for a in rows["age"].tolist()],
        "view": [study_view(v) if isinstance(v, list) else None for v in rows["views"].tolist()],
        "dataset": rows["dataset"].tolist(),
    })  # fmt: skip


def _fnr(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out = {}
    for name, m in metrics["per_label"].items():
        (_, _), (fn, tp) = m["confusion"]
        out[name] = None if fn + tp == 0 else float(fn / (fn + tp))
    return out


def _finite(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _headline_ci(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, labels: Sequence[str],
                 n_boot: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Bootstrap intervals over the labels with a known value in this group (a label unknown
    in every study of the group is left out, as the macro averages leave it out)."""
    cols = [j for j in range(y.shape[1]) if (~np.isnan(y[:, j])).any()]
    if not n_boot or not cols or len(y) < 2:
        return {}
    return bootstrap_ci(y[:, cols], p[:, cols], np.asarray(thresholds)[cols],
                        [labels[j] for j in cols], n_boot=n_boot, seed=seed)  # fmt: skip


def subgroup_metrics(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: np.ndarray,
    labels: Sequence[str],
    attributes: pd.DataFrame,
    *,
    n_boot: int = 200,
    seed: int = 0,
    min_class: int = MIN_CLASS,
    plot_path: Callable[[str], Path] | None = None,
) -> dict[str, Any]:
    """Per attribute (a column of ``attributes``, row-aligned with ``y``) and group: studies,
    positives, AUROC with its interval and the gap to overall, FNR per label at ``thresholds``,
    ECE, and ``small`` (fewer than ``min_class`` positives or negatives of some label: the
    rarer class). Studies whose attribute is unknown are counted, not grouped. ``plot_path``
    (attribute -> PNG path) draws a reliability diagram per attribute, one panel per group."""
    overall = compute_metrics(y, p, thresholds, labels)
    base = _finite(overall["headline"]["auroc"])
    result: dict[str, Any] = {
        "overall": {"n": len(y), "auroc": base, "fnr": _fnr(overall),
                    "ece": _finite(overall["macro"]["ece"])},
        "min_class": min_class, "n_boot": n_boot,
        "attributes": {}, "plots": [],
    }  # fmt: skip
    for attribute in attributes.columns:
        values = attributes[attribute].to_numpy(dtype=object)
        known = np.array([v is not None and not pd.isna(v) for v in values], dtype=bool)
        groups = sorted({str(v) for v in values[known]})
        if not groups:
            continue
        rows: list[dict[str, Any]] = []
        reliability: dict[str, dict[str, Any]] = {}
        for group in groups:
            rows_g = np.flatnonzero(known & (values.astype(str) == group))
            yg, pg = y[rows_g], p[rows_g]
            m = compute_metrics(yg, pg, thresholds, labels)
            positives = {n: int(np.nansum(yg[:, j])) for j, n in enumerate(labels)}
            negatives = {n: int((yg[:, j] == 0).sum()) for j, n in enumerate(labels)}
            rarer = min((min(positives[n], negatives[n]) for n in labels), default=0)
            ci = _headline_ci(yg, pg, thresholds, labels, n_boot, seed)
            auroc = _finite(m["headline"]["auroc"])
            cal = calibration(yg.ravel(), pg.ravel())
            rows.append({
                "group": group, "n": len(rows_g), "positives": positives, "negatives": negatives,
                "rarer_class": rarer,
                "auroc": auroc, "auroc_low": (ci.get("headline/auroc") or {}).get("low"),
                "auroc_high": (ci.get("headline/auroc") or {}).get("high"),
                "gap": None if auroc is None or base is None else auroc - base,
                "fnr": _fnr(m), "ece": _finite(cal["ece"]), "reliability": cal["bins"],
                "small": bool(rarer < min_class),
            })  # fmt: skip
            reliability[f"{group} (n={len(rows_g)})"] = {"reliability": cal["bins"], "ece": cal["ece"]}
        result["attributes"][attribute] = {"groups": rows, "unknown": int((~known).sum())}
        if plot_path is not None:
            path = plot_reliability(reliability, plot_path(attribute),
                                    title=f"Reliability by {attribute} (labels pooled)")  # fmt: skip
            result["plots"].append(str(path))
    return result


def subgroup_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per attribute and group, formatted for Markdown/HTML."""
    rows = []
    for attribute, block in result.get("attributes", {}).items():
        for g in block["groups"]:
            ci = (f" [{g['auroc_low']:.3f}, {g['auroc_high']:.3f}]"
                  if g.get("auroc_low") is not None else "")  # fmt: skip
            fnr = ", ".join(f"{k} {v:.2f}" for k, v in g["fnr"].items() if v is not None) or "-"
            rows.append({
                "attribute": attribute, "group": g["group"], "studies": g["n"],
                "positives": ", ".join(f"{k} {v}" for k, v in g["positives"].items()),
                "AUROC [95 % CI]": "-" if g["auroc"] is None else f"{g['auroc']:.3f}{ci}",
                "gap to overall": "-" if g["gap"] is None else f"{g['gap']:+.3f}",
                "FNR at threshold": fnr,
                "ECE": "-" if g["ece"] is None else f"{g['ece']:.3f}",
                "rarer class": g.get("rarer_class", "-"),
                "flag": "small" if g["small"] else "",
            })  # fmt: skip
        if block.get("unknown"):
            rows.append({"attribute": attribute, "group": "(unknown)", "studies": block["unknown"],
                         "positives": "", "AUROC [95 % CI]": "", "gap to overall": "",
                         "FNR at threshold": "", "ECE": "", "rarer class": "",
                         "flag": "not grouped"})  # fmt: skip
    return pd.DataFrame(rows)
