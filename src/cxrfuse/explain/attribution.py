"""Modality attribution: how much did the image and how much did the report move a prediction?

For a fused head over embeddings, f(I, T) is the predicted probability of a label with the
study's image embeddings I and report embedding T. A modality is *removed* by one of:

* ``mean`` (default): its embedding replaced by the training-set mean vector (each present view
  slot gets the mean view vector; the masks are unchanged), i.e. "an average image/report";
* ``zeros``: its embedding set to zeros with its mask False, i.e. "this modality is missing"
  (the input a head gets for a study without images or without text).

With ``0`` marking the removed modality:

* leave-one-modality-out: ``loo_image = f(I,T) - f(0,T)``, ``loo_text = f(I,T) - f(I,0)``;
* the exact two-player Shapley values
  ``phi_image = 1/2 [(f(I,T) - f(0,T)) + (f(I,0) - f(0,0))]`` and likewise ``phi_text``; they sum
  to ``f(I,T) - f(0,0)``.

Per label, the mean |phi| of each modality and its share of the total summarise whether the
model "read or looked".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from cxrfuse.explain.gradcam import OutputKind
from cxrfuse.fusion import FusionHead
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import layout

if TYPE_CHECKING:
    from cxrfuse.store import StudyArrays

Removal = Literal["mean", "zeros"]
REMOVALS: tuple[str, ...] = ("mean", "zeros")


@dataclass
class ModalityInputs:
    """Study-level head inputs: image (N, V, D) + mask (N, V), text (N, Dt) + mask (N,)."""

    image: np.ndarray
    image_mask: np.ndarray
    text: np.ndarray
    text_mask: np.ndarray

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim == 2:  # (N, D): one view per study
            self.image = self.image[:, None, :]
        self.image_mask = np.asarray(self.image_mask, dtype=bool).reshape(self.image.shape[:2])
        self.text = np.asarray(self.text, dtype=np.float32)
        self.text_mask = np.asarray(self.text_mask, dtype=bool).reshape(-1)
        n = {len(self.image), len(self.image_mask), len(self.text), len(self.text_mask)}
        if len(n) != 1:
            raise CxrfuseError(f"modality inputs disagree on the number of studies: {sorted(n)}")

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class ModalityMeans:
    """Training-set mean vectors that stand in for a removed modality."""

    image: np.ndarray  # (D,) mean over the present training views
    text: np.ndarray  # (Dt,) mean over the training reports that exist

    @classmethod
    def of(cls, train: ModalityInputs) -> ModalityMeans:
        return cls.of_vectors(train.image[train.image_mask], train.text[train.text_mask])

    @classmethod
    def of_run_arrays(cls, arrays: StudyArrays, split: str = "train") -> ModalityMeans:
        """The means of one split of a run's study arrays (the same numbers as :meth:`of` its
        inputs), without building the split's padded view array (``attention`` runs)."""
        if arrays.image is None or arrays.text is None or arrays.text_mask is None:
            raise CxrfuseError("training means need a fused run (image and report embeddings)")
        rows = arrays.indices(split)
        return cls.of_vectors(arrays.present_views(rows), arrays.text[rows][arrays.text_mask[rows]])

    @classmethod
    def of_vectors(cls, views: np.ndarray, texts: np.ndarray) -> ModalityMeans:
        """The means of the present training views (k, D) and reports (m, Dt)."""
        views, texts = np.asarray(views, np.float32), np.asarray(texts, np.float32)
        if not len(views) or not len(texts):
            raise CxrfuseError("training means need at least one training view and one report")
        return cls(views.mean(axis=0), texts.mean(axis=0))


def _without(
    inputs: ModalityInputs, modality: str, removal: Removal, means: ModalityMeans | None
) -> ModalityInputs:
    """``inputs`` with one modality removed."""
    image, image_mask = inputs.image, inputs.image_mask
    text, text_mask = inputs.text, inputs.text_mask
    if removal == "zeros":
        if modality == "image":
            image, image_mask = np.zeros_like(image), np.zeros_like(image_mask)
        else:
            text, text_mask = np.zeros_like(text), np.zeros_like(text_mask)
    else:
        assert means is not None
        if modality == "image":
            image = np.where(image_mask[..., None], means.image[None, None, :], 0.0)
        else:
            text = np.where(text_mask[:, None], means.text[None, :], 0.0)
    return ModalityInputs(image, image_mask, text, text_mask)


def predict_probabilities(
    head: FusionHead,
    inputs: ModalityInputs,
    output: OutputKind = "sigmoid",
    batch_size: int = 1024,
    device: str = "cpu",
) -> np.ndarray:
    """P(positive) per study and label, (N, n_labels) (softmax heads: one label)."""
    head = head.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            s = slice(start, start + batch_size)
            logits = head(
                torch.from_numpy(inputs.image[s]).to(device),
                torch.from_numpy(inputs.image_mask[s]).to(device),
                torch.from_numpy(inputs.text[s]).to(device),
                torch.from_numpy(inputs.text_mask[s]).to(device),
            )
            probs = torch.softmax(logits, -1)[:, 1:2] if output == "softmax" else logits.sigmoid()
            out.append(probs.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, head.n_outputs), np.float32)


def modality_attribution(
    head: FusionHead,
    inputs: ModalityInputs,
    labels: Sequence[str],
    *,
    output: OutputKind = "sigmoid",
    removal: Removal = "mean",
    means: ModalityMeans | None = None,
    study_ids: Sequence[str] | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """One row per (study, label): the four predictions, leave-one-out deltas, Shapley values.

    ``removal="mean"`` needs ``means`` (:meth:`ModalityMeans.of` the training inputs).
    """
    if sorted(head.modalities) != ["image", "text"]:
        raise CxrfuseError(
            f"modality attribution needs a fused model (image and text); this one reads "
            f"{head.modalities} only, so all of its prediction comes from that modality"
        )
    if removal not in REMOVALS:
        raise CxrfuseError(f"unknown removal {removal!r}; choose one of {', '.join(REMOVALS)}")
    if removal == "mean" and means is None:
        raise CxrfuseError("removal='mean' needs the training means (ModalityMeans.of(train))")
    no_image = _without(inputs, "image", removal, means)
    neither = _without(no_image, "text", removal, means)
    f_it, f_0t, f_i0, f_00 = (
        predict_probabilities(head, x, output, device=device)
        for x in (inputs, no_image, _without(inputs, "text", removal, means), neither)
    )
    ids = list(study_ids) if study_ids is not None else [str(i) for i in range(len(inputs))]
    frames = []
    for j, label in enumerate(labels):
        full, a, b, none = f_it[:, j], f_0t[:, j], f_i0[:, j], f_00[:, j]
        frames.append(
            pd.DataFrame(
                {
                    "study_id": ids,
                    "label": label,
                    "p": full,
                    "p_without_image": a,
                    "p_without_text": b,
                    "p_without_both": none,
                    "loo_image": full - a,
                    "loo_text": full - b,
                    "shapley_image": 0.5 * ((full - a) + (b - none)),
                    "shapley_text": 0.5 * ((full - b) + (a - none)),
                    "interaction": full - a - b + none,
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table.attrs["removal"] = removal
    return table


def summarise_attribution(table: pd.DataFrame) -> pd.DataFrame:
    """Per label: mean |phi| of image and text and their shares, mean signed values, LOO."""
    rows = []
    for label, g in table.groupby("label", sort=False):
        img, txt = float(g["shapley_image"].abs().mean()), float(g["shapley_text"].abs().mean())
        total = img + txt
        rows.append(
            {
                "label": label,
                "n": len(g),
                "mean_abs_shapley_image": img,
                "mean_abs_shapley_text": txt,
                "image_share": img / total if total > 0 else float("nan"),
                "text_share": txt / total if total > 0 else float("nan"),
                "mean_shapley_image": float(g["shapley_image"].mean()),
                "mean_shapley_text": float(g["shapley_text"].mean()),
                "mean_abs_loo_image": float(g["loo_image"].abs().mean()),
                "mean_abs_loo_text": float(g["loo_text"].abs().mean()),
                "mean_abs_interaction": float(g["interaction"].abs().mean()),
            }
        )
    return pd.DataFrame(rows)


def attribution_markdown(summary: pd.DataFrame, removal: str) -> str:
    """The per-label summary as a Markdown table with a line saying how modalities were removed."""
    how = {
        "mean": "replaced by its training-mean vector (masks unchanged)",
        "zeros": "set to zeros with its mask False (as a missing modality)",
    }[removal]
    lines = [
        (
            "Modality attribution (two-player Shapley on the predicted probability; a removed "
            f"modality is {how})."
        ),
        "",
        (
            "| label | n | image share | text share | mean abs phi image | mean abs phi text "
            "| mean abs LOO image | mean abs LOO text |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples(index=False):
        lines.append(
            f"| {r.label} | {r.n} | {100 * r.image_share:.1f}% | {100 * r.text_share:.1f}% "
            f"| {r.mean_abs_shapley_image:.4f} | {r.mean_abs_shapley_text:.4f} "
            f"| {r.mean_abs_loo_image:.4f} | {r.mean_abs_loo_text:.4f} |"
        )
    return "\n".join(lines)


def plot_attribution(summary: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Horizontal stacked bars: the image and text shares of mean |phi| per label."""
    path = Path(path)
    fig = new_figure(figsize=(6.0, 1.0 + 0.35 * len(summary)))
    ax = fig.subplots()
    y = np.arange(len(summary))
    ax.barh(y, summary["image_share"], color="tab:blue", label="image")
    ax.barh(y, summary["text_share"], left=summary["image_share"], color="tab:orange",
            label="report text")  # fmt: skip
    ax.set_yticks(y, summary["label"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of mean |Shapley value| (predicted probability)")
    ax.set_title(title or "Modality attribution per label")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)
    return path


def write_attribution(table: pd.DataFrame, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``attribution.csv`` (per prediction), ``attribution_summary.csv``/``.md``, and
    ``attribution.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_attribution(table)
    removal = str(table.attrs.get("removal", "mean"))
    paths = {
        "table": out / layout.ATTRIBUTION_TABLE,
        "summary": out / f"{layout.ATTRIBUTION_SUMMARY}.csv",
        "markdown": out / f"{layout.ATTRIBUTION_SUMMARY}.md",
        "plot": out / layout.ATTRIBUTION_PLOT,
    }
    table.to_csv(paths["table"], index=False)
    summary.to_csv(paths["summary"], index=False)
    paths["markdown"].write_text(attribution_markdown(summary, removal) + "\n")
    plot_attribution(summary, paths["plot"], title)
    return paths
