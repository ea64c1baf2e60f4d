"""Explaining studies of a manifest: load the views, build the fused model per view, draw PNGs.

An :class:`Explainer` holds an image encoder, a fusion head, its labels and the studies' report
embeddings. For each view of a study it places the view in the head's view slot (the slot
layout of the head's view fusion: ``frontal`` slot 0; ``concat`` frontal 0, lateral 1;
``mean``/``attention`` every view), holds the other views (as embeddings) and the report fixed,
and computes a class activation map for each chosen label.

Views are decoded and fitted to the model's square by :func:`cxrfuse.data.images.fit_square`,
as the embedding store decodes them, with the run's fit (``crop`` or ``pad``). Maps are drawn
on a fixed colour scale per label (:meth:`Explainer.calibrate`: a run-level constant from
reference maps of the val split), and a flat or empty map is reported, not drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrfuse.data.images import LEGACY_FIT, decode_native, decode_resized, native_gray8
from cxrfuse.data.manifest import Manifest, label_slug
from cxrfuse.data.phantoms import file_stem
from cxrfuse.data.views import view_slots as slot_layout
from cxrfuse.encoders import ImageEncoder
from cxrfuse.explain.gradcam import (
    FusedImageClassifier,
    OutputKind,
    compute_cam,
    label_target,
    positive_probability,
)
from cxrfuse.explain.overlay import MapDrawing, map_note, write_overlay
from cxrfuse.fusion import FusionHead
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import layout

INDEX_FILE = layout.EXPLAIN_INDEX


@dataclass
class ViewInput:
    """One view of a study, loaded: where it sits in the head and its model input."""

    study_id: str
    image_id: str
    view: str
    path: str
    slot: int
    original: np.ndarray  # HxW in [0, 1]
    tensor: torch.Tensor  # (C, S, S) model input


@dataclass
class ViewExplanation:
    """A class activation map of one view for one label."""

    study_id: str
    image_id: str
    view: str
    path: str
    slot: int
    label: str
    method: str
    probability: float
    cam: np.ndarray  # (S, S) in [0, 1], model-input coordinates
    grid: tuple[int, int]
    overlay: Path | None = None
    raw: np.ndarray | None = field(default=None, repr=False)
    """(S, S) the map before min-max scaling (ReLU'd, the method's units)."""
    scale: float | None = None
    """The fixed colour scale (run-level) the map is drawn on; None: its own maximum."""
    note: str | None = None
    """Why the map is not shown (empty or flat), or None."""
    fit: str = LEGACY_FIT

    @property
    def raw_max(self) -> float | None:
        return float(self.raw.max()) if self.raw is not None and self.raw.size else None

    @property
    def shown(self) -> bool:
        """Whether the map is drawn as a result (not empty or flat)."""
        return self.note is None

    def drawing(self) -> MapDrawing:
        """How :func:`cxrfuse.explain.overlay.overlay_panel` draws it."""
        raw = self.raw if self.raw is not None else self.cam
        scale = self.scale if self.raw is not None else 1.0
        return MapDrawing(raw, scale, self.note, self.fit)

    def caption(self, facts: CaptionFacts | None = None) -> list[str]:
        """The caption lines of its overlay: view, label, probability, threshold, the model's
        test AUROC with its interval, the method and the colour scale."""
        return caption_lines(self, facts)

    def record(self) -> dict[str, Any]:
        """A row of ``index.csv``."""
        return {
            "study_id": self.study_id,
            "image_id": self.image_id,
            "view": self.view,
            "slot": self.slot,
            "label": self.label,
            "method": self.method,
            "probability": self.probability,
            "image": self.path,
            "overlay": str(self.overlay) if self.overlay else "",
            "raw_max": self.raw_max,
            "scale": self.scale,
            "shown": self.shown,
            "note": self.note or "",
        }


@dataclass
class CaptionFacts:
    """What a caption says about the model: its val-chosen thresholds and test AUROC
    (value, interval low, high) per label, from the run's ``model.json`` and ``metrics.json``."""

    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_method: str | None = None
    auroc: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)
    synthetic: bool = False


def caption_lines(exp: ViewExplanation, facts: CaptionFacts | None = None) -> list[str]:
    """See :meth:`ViewExplanation.caption`."""
    facts = facts or CaptionFacts()
    head = f"{exp.study_id} {exp.view}  {exp.label}: p={exp.probability:.2f}"
    threshold = facts.thresholds.get(exp.label)
    if threshold is not None:
        how = f"val-chosen, {facts.threshold_method}" if facts.threshold_method else "default"
        head += f" (threshold {threshold:.2f}, {how})"
    lines = [head]
    auroc = facts.auroc.get(exp.label)
    if auroc is not None:
        value, low, high = auroc
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
        chance = (" - not distinguishable from chance" if low is not None and high is not None
                  and low <= 0.5 <= high else "")  # fmt: skip
        lines.append(f"model test AUROC {value:.2f}{interval}{chance}"
                     + (" (synthetic phantoms)" if facts.synthetic else ""))  # fmt: skip
    else:
        lines.append("model not evaluated: no test AUROC")
    if exp.raw is not None:
        top = exp.raw_max or 0.0
        where = (f"on a fixed run-level scale 0-{exp.scale:.3g}" if exp.scale
                 else "scaled to this map's own max (no run-level scale)")  # fmt: skip
        lines.append(f"{exp.method}: colour = raw map {where}; this map's max {top:.3g}; "
                     f"fit {exp.fit}")  # fmt: skip
    else:
        lines.append(f"{exp.method}: map min-max scaled per image")
    return lines


def view_slots(views: Sequence[Mapping[str, Any]], view_fusion: str) -> list[tuple[int, Mapping]]:
    """The views a head reads, with their slots (only views whose file path is known): the
    layout of :func:`cxrfuse.data.views.view_slots`, empty slots left out."""
    usable = [v for v in views if v.get("path")]
    layout = slot_layout([str(v.get("view")) for v in usable], view_fusion)
    return [(slot, usable[i]) for slot, i in enumerate(layout) if i is not None]


@dataclass
class Explainer:
    """Class activation maps of a fused (or image-only) classifier, study by study.

    ``texts`` maps study id -> (report embedding, present?); it is needed when the head reads
    text (a study missing from it gets zeros with mask False, as the embedding store gives).
    """

    encoder: ImageEncoder
    head: FusionHead
    labels: list[str]
    output: OutputKind = "sigmoid"
    texts: dict[str, tuple[np.ndarray, bool]] = field(default_factory=dict)
    device: str = "cpu"
    fit: str | None = None
    """How views become the model's square (the run's ``image.fit``); None: the encoder's."""
    scales: dict[str, float] = field(default_factory=dict)
    """Fixed colour scale per label (:meth:`calibrate`); a label without one is drawn on its
    own maximum, and the colour bar says so."""
    facts: CaptionFacts | None = None
    failures: list[str] = field(default_factory=list)
    """Studies :meth:`explain_manifest` could not explain, with the reason."""

    def __post_init__(self) -> None:
        if self.fit is None:
            self.fit = getattr(self.encoder.spec, "fit", LEGACY_FIT)
        if self.head.views is None:
            raise CxrfuseError(
                f"this model reads {self.head.modalities} only: image explanations need an image"
            )
        if "text" in self.head.modalities and not self.texts:
            raise CxrfuseError("this fused model reads reports: give the studies' text embeddings")
        self.encoder.to(self.device).eval()
        self.head.to(self.device).eval()

    @property
    def view_fusion(self) -> str:
        assert self.head.views is not None
        return self.head.views.mode

    # ------------------------------------------------------------------ inputs
    def load_views(self, study: Mapping[str, Any]) -> list[ViewInput]:
        """Read the views of one manifest row that the head uses."""
        sid = str(study["study_id"])
        out = []
        for slot, view in view_slots(list(study["views"]), self.view_fusion):
            path = str(view["path"])
            try:
                # full size, 8-bit gray as gray8 gives it; FIFOs, oversized and damaged files
                # refused naming the file (data.images)
                original = np.asarray(native_gray8(decode_native(path)), dtype=np.float32) / 255.0
                # the model input decoded, fitted and resized exactly as the embedding store does
                pixels = decode_resized(path, self.encoder.spec.input_size, self.fit)
                tensor = self.encoder.preprocess(pixels)
            except (OSError, ValueError, TypeError) as err:
                raise DataError(f"study {sid}: cannot read view {path}: {err}") from err
            image_id, position = str(view["image_id"]), str(view["view"])
            out.append(ViewInput(sid, image_id, position, path, slot, original, tensor))
        return out

    def context(self, views: Sequence[ViewInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """The study's view embeddings (1, V, D) and mask (1, V) in the head's slots.

        A study with one view needs no encoding: that view's slot is replaced by the model.
        """
        if not views:
            raise DataError("no readable view to explain")
        n_slots = self.head.views.n_views if self.view_fusion == "concat" else 1  # type: ignore[union-attr]
        n_slots = max([n_slots, *(v.slot + 1 for v in views)])
        context = torch.zeros(1, n_slots, self.encoder.feature_dim, device=self.device)
        mask = torch.zeros(1, n_slots, dtype=torch.bool, device=self.device)
        if len(views) > 1:
            with torch.no_grad():
                vectors = self.encoder(torch.stack([v.tensor for v in views]).to(self.device))
            for v, vec in zip(views, vectors):
                context[0, v.slot] = vec
        for v in views:
            mask[0, v.slot] = True
        return context, mask

    def model_for(
        self,
        views: Sequence[ViewInput],
        slot: int,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> FusedImageClassifier:
        """The single-input model of the view in ``slot``; other views and the report fixed.

        ``context`` (from :meth:`context`) saves re-encoding the views for each slot.
        """
        vectors, mask = context or self.context(views)
        text = text_mask = None
        if "text" in self.head.modalities:
            dim = self.head.init_kwargs["text_dim"]
            vec, present = self.texts.get(views[0].study_id, (np.zeros(dim, np.float32), False))
            text = torch.as_tensor(np.asarray(vec, np.float32), device=self.device)[None]
            text_mask = torch.tensor([bool(present)], device=self.device)
        return FusedImageClassifier(
            self.encoder, self.head, views=vectors, view_mask=mask, slot=slot, text=text,
            text_mask=text_mask,
        )  # fmt: skip

    # ------------------------------------------------------------------ maps
    def explain_study(
        self,
        study: Mapping[str, Any],
        labels: Sequence[str] | None = None,
        method: str = "gradcam",
        out_dir: str | Path | None = None,
    ) -> list[ViewExplanation]:
        """Maps (and with ``out_dir`` overlay PNGs) of every used view for each label."""
        return self.explain_views(self.load_views(study), labels, method, out_dir)

    def explain_views(
        self,
        views: Sequence[ViewInput],
        labels: Sequence[str] | None = None,
        method: str = "gradcam",
        out_dir: str | Path | None = None,
        only: Sequence[ViewInput] | None = None,
    ) -> list[ViewExplanation]:
        """Maps of views already loaded (e.g. uploaded to the server) for each label; with
        ``only``, maps of those views alone (the others still fill their slots)."""
        labels = list(labels or self.labels)
        context = self.context(views)
        results = []
        for view in views if only is None else only:
            model = self.model_for(views, view.slot, context)
            x = view.tensor[None].to(self.device)
            with torch.no_grad():
                logits = model(x)
            for label in labels:
                target = label_target(self.labels, label, self.output)
                cam = compute_cam(model, x, target, method)
                index = self.labels.index(label)
                p = float(positive_probability(logits, index, self.output)[0])
                raw = cam.raw[0] if cam.raw is not None else None
                scale = self.scales.get(label)
                exp = ViewExplanation(
                    view.study_id, view.image_id, view.view, view.path, view.slot, label, method,
                    p, cam.maps[0], cam.grid, raw=raw, scale=scale, fit=self.fit,
                    note=map_note(raw if raw is not None else cam.maps[0], scale, method),
                )  # fmt: skip
                if out_dir is not None:
                    name = f"{file_stem(view.image_id)}__{label_slug(label)}__{method}.png"
                    exp.overlay = write_overlay(Path(out_dir) / name, view.original,
                                                exp.drawing(), exp.caption(self.facts))  # fmt: skip
                results.append(exp)
        return results

    def calibrate(
        self,
        manifest: Manifest,
        labels: Sequence[str] | None = None,
        method: str = "gradcam",
        *,
        split: str = "val",
        n: int = 8,
        quantile: float = 0.99,
    ) -> dict[str, float]:
        """Set (and return) the fixed colour scale of each label: the largest ``quantile`` of
        the raw maps of the first ``n`` studies of ``split`` (the train split when there is no
        ``split``). Every later map of the label is drawn on that scale, so a weak map looks
        weak. Studies that cannot be read are skipped; no readable study leaves no scale."""
        labels = list(labels or self.labels)
        df = manifest.df
        chosen = split if "split" in df and (df["split"] == split).any() else "train"
        try:
            rows = select_studies(manifest, split=chosen, limit=n)
        except DataError:
            return {}
        tops: dict[str, list[float]] = {label: [] for label in labels}
        for _, row in rows.iterrows():
            try:
                maps = self.explain_views(self.load_views(row), labels, method)
            except (DataError, OSError, ValueError):
                continue
            for m in maps:
                if m.raw is not None and m.raw.size:
                    tops[m.label].append(float(np.quantile(m.raw, quantile)))
        found = {label: max(v) for label, v in tops.items() if v and max(v) > 0}
        self.scales.update(found)
        return found

    def explain_manifest(
        self,
        manifest: Manifest,
        *,
        studies: Sequence[str] | None = None,
        split: str | None = None,
        limit: int | None = None,
        labels: Sequence[str] | None = None,
        method: str = "gradcam",
        out_dir: str | Path | None = None,
        progress: bool = True,
    ) -> list[ViewExplanation]:
        """Explain chosen studies (ids) or a split (first ``limit`` studies with images).

        With ``out_dir`` the overlays and ``index.csv`` (one row per map) are written there.
        """
        df = select_studies(manifest, studies=studies, split=split, limit=limit)
        results: list[ViewExplanation] = []
        for _, row in tqdm(df.iterrows(), total=len(df), desc="explain", disable=not progress):
            try:
                results += self.explain_study(row, labels=labels, method=method, out_dir=out_dir)
            except CxrfuseError:
                raise
            except Exception as err:  # noqa: BLE001 - one study's failed map loses no other
                self.failures.append(f"study {row['study_id']}: {method} failed "
                                     f"({type(err).__name__}: {err})")  # fmt: skip
        if not results and self.failures:
            raise CxrfuseError(f"no map could be computed: {self.failures[0]}")
        if out_dir is not None:
            pd.DataFrame([r.record() for r in results]).to_csv(
                Path(out_dir) / INDEX_FILE, index=False
            )
        return results


def select_studies(
    manifest: Manifest,
    *,
    studies: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Manifest rows by study id (in the given order) or by split, with image files only."""
    df = manifest.df
    if studies:
        by_id = df.set_index(df["study_id"].astype(str), drop=False)
        missing = [s for s in studies if s not in by_id.index]
        if missing:
            raise DataError(f"study id(s) not in the manifest: {', '.join(missing[:5])}")
        df = by_id.loc[list(studies)].reset_index(drop=True)
    elif split is not None:
        if "split" not in df or not (df["split"] == split).any():
            raise DataError(f"the manifest has no studies in split {split!r}")
        df = df[df["split"] == split]
    has_file = df["views"].map(lambda views: any(v.get("path") for v in views))
    if not has_file.any():
        raise DataError("none of the chosen studies has an image file to explain")
    df = df[has_file]
    return df.head(limit) if limit else df
