"""Evaluation plots as matplotlib PNGs: ROC and PR curves, confusion matrices,
reliability diagram, Venn diagram of the two unimodal models' correct predictions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrfuse.evaluation.metrics import as_2d
from cxrfuse.plotting import new_figure, save_figure

DPI = 100


def _grid(
    n: int, width: float = 3.4, height: float = 3.2, max_cols: int = 4
) -> tuple[Any, np.ndarray]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = new_figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def _save(fig: Any, path: str | Path, tight: bool = True) -> Path:
    return save_figure(fig, path, dpi=DPI, tight=tight)


def _curves(
    kind: str,
    y_true: np.ndarray,
    probs: Mapping[str, np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    from sklearn.metrics import precision_recall_curve, roc_curve

    y_true = as_2d(y_true)
    fig, axes = _grid(len(labels))
    for j, (ax, name) in enumerate(zip(axes, labels)):
        known = ~np.isnan(y_true[:, j])
        y = y_true[known, j]
        for model, prob in probs.items():
            p = as_2d(prob)[known, j]
            if len(np.unique(y)) < 2:
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=model)
            else:
                precision, recall, _ = precision_recall_curve(y, p)
                ax.step(recall, precision, where="post", label=model)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
        else:
            ax.axhline(y.mean() if y.size else 0, ls=":", c="grey", lw=0.8)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name} (n={y.size}, pos={int(y.sum())})", fontsize=9)
        if len(np.unique(y)) < 2:
            ax.text(0.5, 0.5, "one class only", ha="center", transform=ax.transAxes)
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "upper right")
    fig.suptitle(title)
    return _save(fig, path)


def plot_roc(
    y_true: np.ndarray,
    probs: Mapping[str, np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    title: str = "ROC curves (test)",
) -> Path:
    """One panel per label, one curve per model (``probs``: model name -> (n, L) probabilities)."""
    return _curves("roc", y_true, probs, labels, path, title)


def plot_pr(
    y_true: np.ndarray,
    probs: Mapping[str, np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    title: str = "Precision-recall curves (test)",
) -> Path:
    """Like :func:`plot_roc`; the dotted line is the label's prevalence (a random model)."""
    return _curves("pr", y_true, probs, labels, path, title)


def plot_confusion(
    per_label: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    title: str = "Confusion matrices (test, val-chosen thresholds)",
) -> Path:
    """One 2x2 matrix per label from ``compute_metrics(...)["per_label"]``."""
    names = list(per_label)
    fig, axes = _grid(len(names), width=2.8, height=2.8, max_cols=5)
    for ax, name in zip(axes, names):
        cm = np.asarray(per_label[name]["confusion"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                color="white" if v > cm.max() / 2 else "black",
                fontsize=10,
            )
        ax.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=8)
        ax.set_yticks([0, 1], ["true 0", "true 1"], fontsize=8)
        ax.set_title(f"{name}\nthreshold {per_label[name]['threshold']:.2f}", fontsize=9)
    fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(
    per_label: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    title: str = "Reliability diagram (test)",
) -> Path:
    """Fraction positive against mean predicted probability per bin, one panel per label."""
    names = list(per_label)
    fig, axes = _grid(len(names), width=3.0, height=3.0, max_cols=5)
    for ax, name in zip(axes, names):
        bins = [b for b in per_label[name].get("reliability", []) if b["count"]]
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        if bins:
            mean = [b["mean_prob"] for b in bins]
            frac = [b["frac_pos"] for b in bins]
            sizes = np.array([b["count"] for b in bins], dtype=float)
            ax.plot(mean, frac, c="tab:blue", lw=1)
            ax.scatter(mean, frac, s=10 + 60 * sizes / sizes.max(), c="tab:blue", zorder=3)
        ece = per_label[name].get("ece")
        ax.set_title(
            f"{name}\nECE {ece:.3f}" if ece is not None and np.isfinite(ece) else name, fontsize=9
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability", fontsize=8)
        ax.set_ylabel("fraction positive", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_venn(
    counts: Mapping[str, int],
    path: str | Path,
    title: str = "Correct (study, label) pairs: text-only vs image-only model",
) -> Path:
    """Two-set Venn diagram of the pairs each unimodal model gets right; ``neither`` noted below."""
    from matplotlib.patches import Patch
    from matplotlib_venn import venn2

    colors = ("tab:orange", "tab:blue")
    fig = new_figure(figsize=(5.6, 4.6))
    ax = fig.subplots()
    venn2(
        subsets=(counts["only_text"], counts["only_image"], counts["both"]),
        set_labels=("", ""),
        set_colors=colors,
        ax=ax,
    )
    ax.legend(
        handles=[Patch(color=c, alpha=0.5) for c in colors],
        labels=[
            f"text model right ({counts['both'] + counts['only_text']})",
            f"image model right ({counts['both'] + counts['only_image']})",
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(title, fontsize=10)
    fig.text(
        0.5,
        0.02,
        f"both wrong: {counts['neither']}   total: {counts['total']}",
        ha="center",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path, tight=False)
