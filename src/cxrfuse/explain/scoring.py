"""Scoring saliency maps on phantoms, whose lesion masks are known.

Per positive (study, view, label) with a lesion mask:

* **pointing game** (Zhang et al. 2016): a hit when the map's maximum falls on the lesion,
  dilated by a tolerance (15 px at a 224-px input by default, scaled with the input size);
* **saliency mass in the mask**: the share of the map's total inside the (undilated) lesion.

Both are compared with a **random-map baseline** of the same smoothness (uniform noise on the
CAM's own feature grid, upsampled as the CAM is; seeded), whose expectation is close to the
**area prior** (the share of the image the lesion, or its dilation, covers). A **deletion**
faithfulness curve removes the most salient pixels first (replaced by a blurred copy, the mean,
or ROAD's noisy linear imputation from pytorch-grad-cam) and follows the label's probability;
its AUC is lower for a faithful map than for a random one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from cxrfuse.data.manifest import Manifest, label_slug
from cxrfuse.data.phantoms import lesion_kind, mask_path
from cxrfuse.explain.explainer import Explainer, select_studies
from cxrfuse.explain.gradcam import (
    FusedImageClassifier,
    OutputKind,
    compute_cam,
    label_target,
    positive_probability,
)
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.problems import DataError
from cxrfuse.rundir import layout

Baseline = Literal["blur", "mean", "road"]
DELETION_FRACTIONS: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
REFERENCE_SIZE = 224


# ----------------------------------------------------------------------------- per-map scores


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A lesion mask through the encoders' geometry: central square, resized, > 0.5."""
    height, width = mask.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = mask[top : top + side, left : left + side].astype(np.float32)
    if side != size:
        square = np.asarray(
            Image.fromarray(square, mode="F").resize((size, size), Image.Resampling.BILINEAR)
        )
    return square > 0.5


def hit_region(mask: np.ndarray, tolerance_px: float) -> np.ndarray:
    """The mask dilated by ``tolerance_px`` (Euclidean)."""
    from scipy.ndimage import distance_transform_edt

    if tolerance_px <= 0:
        return mask.astype(bool)
    return distance_transform_edt(~mask.astype(bool)) <= tolerance_px


def pointing_hit(saliency: np.ndarray, region: np.ndarray) -> bool:
    """True when the map's maximum lies in ``region`` (a flat map never hits)."""
    if not np.isfinite(saliency).all() or saliency.max() <= saliency.min():
        return False
    return bool(region.flat[int(np.argmax(saliency))])


def mass_inside(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total inside ``mask`` (0 for an all-zero map)."""
    total = float(np.clip(saliency, 0, None).sum())
    return float(np.clip(saliency, 0, None)[mask].sum()) / total if total > 0 else 0.0


def random_maps(
    grid: tuple[int, int], size: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` maps of uniform noise on ``grid``, upsampled to ``size`` like a CAM, in [0, 1]."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    noise = rng.uniform(size=(n, *grid)).astype(np.float32)
    return scale_cam_image(noise, (size, size))


# ----------------------------------------------------------------------------- deletion


def _baseline_image(x: torch.Tensor, kind: Baseline) -> torch.Tensor:
    """What removed pixels become: a strongly blurred copy or the image mean."""
    if kind == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    size = x.shape[-1]
    sigma = max(size / 16.0, 1.0)
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.device)
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def deletion_curve(
    model: FusedImageClassifier,
    x: torch.Tensor,
    saliency: np.ndarray,
    index: int,
    output: OutputKind,
    *,
    fractions: Sequence[float] = DELETION_FRACTIONS,
    baseline: Baseline = "blur",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """P(label) after removing the most salient ``fractions`` of the pixels of ``x`` (C, H, W).

    Ties in the map are broken at random (seeded ``rng``), so a flat region is removed in a
    random order rather than all at once.
    """
    rng = rng or np.random.default_rng(0)
    flat = saliency.ravel().astype(np.float64)
    order = np.lexsort((rng.uniform(size=flat.size), -flat))  # most salient first
    keep = np.ones((len(fractions), flat.size), dtype=np.float32)
    for i, f in enumerate(fractions):
        keep[i, order[: round(f * flat.size)]] = 0.0
    keep_t = torch.from_numpy(keep.reshape(len(fractions), 1, *saliency.shape)).to(x.device)
    if baseline == "road":
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer

        imputer = NoisyLinearImputer(noise=0.01)
        with warnings.catch_warnings():  # numpy 2 on torch tensors inside the imputer
            warnings.simplefilter("ignore", DeprecationWarning)
            batch = torch.stack(
                [imputer(x.cpu(), k[0].cpu()).to(x.device) if k.min() < 1 else x for k in keep_t]
            )
    else:
        fill = _baseline_image(x, baseline)
        batch = keep_t * x[None] + (1 - keep_t) * fill[None]
    with torch.no_grad():
        return positive_probability(model(batch), index, output).cpu().numpy()


def curve_auc(fractions: Sequence[float], values: np.ndarray) -> float:
    """Area under a deletion curve (trapezoid over the removed fraction)."""
    return float(np.trapezoid(values, np.asarray(fractions)))


# ----------------------------------------------------------------------------- a whole split


@dataclass
class PhantomScores:
    """Per-case scores (one row per positive view and label with a mask) and their summary."""

    cases: pd.DataFrame
    summary: pd.DataFrame
    fractions: tuple[float, ...]
    curves: dict[str, np.ndarray]  # "cam" / "random" -> (n_cases, n_fractions)
    method: str
    tolerance_px: float


def score_on_phantoms(
    explainer: Explainer,
    manifest: Manifest,
    *,
    labels: Sequence[str] | None = None,
    method: str = "gradcam",
    split: str | None = "test",
    studies: Sequence[str] | None = None,
    limit: int | None = None,
    tolerance_px: float = 15.0,
    n_random: int = 20,
    seed: int = 0,
    deletion: bool = True,
    baseline: Baseline = "blur",
    fractions: Sequence[float] = DELETION_FRACTIONS,
    progress: bool = True,
) -> PhantomScores:
    """Pointing game, mass in mask and deletion curves of ``method`` against random maps.

    Cases are the views of studies positive for a label whose lesion mask exists; the
    tolerance is in pixels of a 224-px input, scaled to the encoder's input size.
    """
    phantom_dir = phantom_folder(manifest)
    labels = [lab for lab in (labels or explainer.labels) if lesion_kind(lab)]
    if not labels:
        raise DataError(
            "none of the chosen labels draws a lesion on phantoms "
            f"(labels: {list(explainer.labels)}); pointing-game scores need lesion masks"
        )
    df = select_studies(manifest, studies=studies, split=split)
    positive = np.zeros(len(df), dtype=bool)
    for lab in labels:
        positive |= df[f"label_{label_slug(lab)}"].to_numpy(dtype=float) >= 0.5
    df = df[positive]
    if limit:
        df = df.head(limit)
    if df.empty:
        raise DataError(f"no study of split {split!r} is positive for {labels}")
    rng = np.random.default_rng(seed)
    rows, cam_curves, random_curves = [], [], []
    for _, study in tqdm(df.iterrows(), total=len(df), desc="score", disable=not progress):
        views = context = None
        for lab in labels:
            if not float(study[f"label_{label_slug(lab)}"]) >= 0.5:
                continue
            if views is None:
                views = explainer.load_views(study)
                context = explainer.context(views)
            for view in views:
                file = mask_path(phantom_dir, view.study_id, view.view, lab)
                if not file.exists():
                    continue
                size = view.tensor.shape[-1]
                with Image.open(file) as img:
                    mask = resize_mask(np.asarray(img.convert("L")) > 0, size)
                if not mask.any():
                    continue
                model = explainer.model_for(views, view.slot, context)
                x = view.tensor[None].to(explainer.device)
                index = explainer.labels.index(lab)
                cam = compute_cam(model, x, label_target(explainer.labels, lab, explainer.output),
                                  method)  # fmt: skip
                saliency = cam.maps[0]
                region = hit_region(mask, tolerance_px * size / REFERENCE_SIZE)
                rand = random_maps(cam.grid, size, n_random, rng)
                row = {
                    "study_id": view.study_id, "view": view.view, "label": lab,
                    "hit": pointing_hit(saliency, region),
                    "random_hit": float(np.mean([pointing_hit(r, region) for r in rand])),
                    "prior_hit": float(region.mean()),
                    "mass": mass_inside(saliency, mask),
                    "random_mass": float(np.mean([mass_inside(r, mask) for r in rand])),
                    "area": float(mask.mean()),
                }  # fmt: skip
                if deletion:
                    kw = {"fractions": fractions, "baseline": baseline, "rng": rng}
                    c = deletion_curve(model, x[0], saliency, index, explainer.output, **kw)
                    r = deletion_curve(model, x[0], rand[0], index, explainer.output, **kw)
                    cam_curves.append(c)
                    random_curves.append(r)
                    row.update(
                        probability=float(c[0]),
                        deletion_auc=curve_auc(fractions, c),
                        random_deletion_auc=curve_auc(fractions, r),
                    )
                rows.append(row)
    if not rows:
        raise DataError(f"no lesion mask found under {phantom_dir}/masks for {labels}")
    cases = pd.DataFrame(rows)
    curves = {
        "cam": np.array(cam_curves).reshape(len(cam_curves), len(fractions)),
        "random": np.array(random_curves).reshape(len(random_curves), len(fractions)),
    }
    return PhantomScores(
        cases, summarise(cases), tuple(fractions), curves, method, tolerance_px
    )


def phantom_folder(manifest: Manifest) -> Path:
    """The phantom output folder of a phantom manifest (where ``masks/`` lives)."""
    info = manifest.info.get("phantoms") or {}
    if manifest.images != "phantom" or "out_dir" not in info:
        raise DataError(
            "scoring needs a phantom manifest (cxrfuse phantoms ...): lesion masks are known "
            f"only for phantoms; this manifest has images={manifest.images!r}"
        )
    return Path(info["out_dir"])


def summarise(cases: pd.DataFrame) -> pd.DataFrame:
    """Per label (and ``all``): hit rate with a 95% Wilson interval and a one-sided binomial
    p-value against the random-map hit rate, random and prior hit rates, masses, deletion AUCs."""
    from scipy.stats import binomtest

    groups = [(lab, g) for lab, g in cases.groupby("label", sort=False)] + [("all", cases)]
    rows = []
    for label, g in groups:
        n, k = len(g), int(g["hit"].sum())
        random_rate = float(g["random_hit"].mean())
        test = binomtest(k, n, p=min(max(random_rate, 1e-9), 1 - 1e-9), alternative="greater")
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        row = {
            "label": label, "n": n, "hit_rate": k / n, "hit_ci_low": ci.low,
            "hit_ci_high": ci.high, "random_hit_rate": random_rate,
            "prior_hit_rate": float(g["prior_hit"].mean()), "p_value": test.pvalue,
            "mass_in_mask": float(g["mass"].mean()),
            "random_mass_in_mask": float(g["random_mass"].mean()),
            "area_fraction": float(g["area"].mean()),
        }  # fmt: skip
        if "deletion_auc" in g:
            row["deletion_auc"] = float(g["deletion_auc"].mean())
            row["random_deletion_auc"] = float(g["random_deletion_auc"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (rates in %, masses in %)."""
    head = ["label", "n", "hit rate [95% CI]", "random", "prior", "p", "mass in mask",
            "random mass", "area"]  # fmt: skip
    has_del = "deletion_auc" in summary
    if has_del:
        head += ["deletion AUC", "random AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.itertuples(index=False):
        cells = [
            str(r.label), str(r.n),
            f"{100 * r.hit_rate:.1f}% [{100 * r.hit_ci_low:.1f}, {100 * r.hit_ci_high:.1f}]",
            f"{100 * r.random_hit_rate:.1f}%", f"{100 * r.prior_hit_rate:.1f}%",
            f"{r.p_value:.2g}", f"{100 * r.mass_in_mask:.1f}%",
            f"{100 * r.random_mass_in_mask:.1f}%", f"{100 * r.area_fraction:.1f}%",
        ]  # fmt: skip
        if has_del:
            cells += [f"{r.deletion_auc:.3f}", f"{r.random_deletion_auc:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_scores(scores: PhantomScores, out_dir: str | Path) -> dict[str, Path]:
    """``cases.csv``, ``pointing_game.csv``/``.md`` and the plots ``pointing_game.png`` and
    (with deletion curves) ``deletion.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "cases": out / layout.POINTING_CASES,
        "summary": out / f"{layout.POINTING_GAME}.csv",
        "table": out / f"{layout.POINTING_GAME}.md",
        "pointing_plot": out / f"{layout.POINTING_GAME}.png",
    }
    scores.cases.to_csv(paths["cases"], index=False)
    scores.summary.to_csv(paths["summary"], index=False)
    note = (
        f"Synthetic phantoms (known lesion masks). Method {scores.method}; pointing-game "
        f"tolerance {scores.tolerance_px:g} px at 224 px; random = smooth random maps on the "
        "CAM grid; prior = lesion (dilated) area share; p = one-sided binomial test of the hit "
        "rate against the random rate; deletion AUC: lower is more faithful.\n\n"
    )
    paths["table"].write_text(note + markdown_table(scores.summary) + "\n")
    _plot_pointing(scores.summary, paths["pointing_plot"], scores.method)
    if len(scores.curves["cam"]):
        paths["deletion_plot"] = out / layout.DELETION_PLOT
        _plot_deletion(scores, paths["deletion_plot"])
    return paths


def _plot_pointing(summary: pd.DataFrame, path: Path, method: str) -> None:
    fig = new_figure(figsize=(1.2 + 1.1 * len(summary), 3.6))
    ax = fig.subplots()
    x = np.arange(len(summary))
    err = np.vstack([summary["hit_rate"] - summary["hit_ci_low"],
                     summary["hit_ci_high"] - summary["hit_rate"]])  # fmt: skip
    ax.bar(x - 0.27, summary["hit_rate"], 0.27, yerr=err, capsize=3, label=method)
    ax.bar(x, summary["random_hit_rate"], 0.27, label="random maps")
    ax.bar(x + 0.27, summary["prior_hit_rate"], 0.27, label="area prior")
    ax.set_xticks(x, summary["label"], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("pointing-game hit rate")
    ax.set_title("Pointing game on phantoms (synthetic)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _plot_deletion(scores: PhantomScores, path: Path) -> None:
    fig = new_figure(figsize=(4.6, 3.6))
    ax = fig.subplots()
    for key, name in (("cam", scores.method), ("random", "random maps")):
        curve = scores.curves[key].mean(axis=0)
        auc = curve_auc(scores.fractions, curve)
        ax.plot(scores.fractions, curve, marker="o", label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel("fraction of pixels removed (most salient first)")
    ax.set_ylabel("mean P(label)")
    ax.set_title("Deletion curve on phantoms (synthetic)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
