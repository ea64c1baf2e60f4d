"""Explaining studies of a manifest: load the views, build the fused model per view, draw PNGs.

An :class:`Explainer` holds an image encoder, a fusion head, its labels and the studies' report
embeddings. For each view of a study it places the view in the head's view slot (the slot
layout of the head's view fusion: ``frontal`` slot 0; ``concat`` frontal 0, lateral 1;
``mean``/``attention`` every view), holds the other views (as embeddings) and the report fixed,
and computes a class activation map for each chosen label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from cxrfuse.data.images import gray8
from cxrfuse.data.manifest import Manifest, label_slug
from cxrfuse.data.phantoms import file_stem
from cxrfuse.encoders.image import ImageEncoder
from cxrfuse.explain.gradcam import (
    FusedImageClassifier,
    OutputKind,
    compute_cam,
    label_target,
    positive_probability,
)
from cxrfuse.explain.overlay import write_overlay
from cxrfuse.fusion.heads import FusionHead
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import layout
from cxrfuse.vocab import FRONTAL_VIEWS

LATERAL_VIEWS = frozenset({"LATERAL", "LL"})
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
        }


def view_slots(views: Sequence[Mapping[str, Any]], view_fusion: str) -> list[tuple[int, Mapping]]:
    """The views a head reads, with their slots (only views whose file path is known)."""
    usable = [v for v in views if v.get("path")]
    if view_fusion in ("frontal", "concat"):
        kinds = [FRONTAL_VIEWS] if view_fusion == "frontal" else [FRONTAL_VIEWS, LATERAL_VIEWS]
        slots = []
        for slot, wanted in enumerate(kinds):
            found = next((v for v in usable if v.get("view") in wanted), None)
            if found is not None:
                slots.append((slot, found))
        return slots
    return list(enumerate(usable))


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

    def __post_init__(self) -> None:
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
                with Image.open(path) as img:
                    pixels = np.asarray(gray8(img))  # as the embedding store decodes
                original = pixels.astype(np.float32) / 255.0
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
    ) -> list[ViewExplanation]:
        """Maps of views already loaded (e.g. uploaded to the server) for each label."""
        labels = list(labels or self.labels)
        context = self.context(views)
        results = []
        for view in views:
            model = self.model_for(views, view.slot, context)
            x = view.tensor[None].to(self.device)
            with torch.no_grad():
                logits = model(x)
            for label in labels:
                target = label_target(self.labels, label, self.output)
                cam = compute_cam(model, x, target, method)
                index = self.labels.index(label)
                p = float(positive_probability(logits, index, self.output)[0])
                exp = ViewExplanation(
                    view.study_id, view.image_id, view.view, view.path, view.slot, label, method,
                    p, cam.maps[0], cam.grid,
                )  # fmt: skip
                if out_dir is not None:
                    name = f"{file_stem(view.image_id)}__{label_slug(label)}__{method}.png"
                    caption = f"{view.study_id} {view.view}  {label}: p={p:.2f}  ({method})"
                    exp.overlay = write_overlay(
                        Path(out_dir) / name, view.original, exp.cam, caption
                    )
                results.append(exp)
        return results

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
            results += self.explain_study(row, labels=labels, method=method, out_dir=out_dir)
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
