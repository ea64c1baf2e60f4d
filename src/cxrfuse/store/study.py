"""Study-level arrays: a manifest's labels, splits and stored view and report embeddings, one
row per study, in the shapes the fusion heads read.

:func:`assemble` builds a :class:`StudyArrays` for the studies with a split and at least one
known label of a task: image view embeddings (n, V, D) with their view mask (n, V), in the
slots of the head's view fusion (:func:`cxrfuse.data.views.view_slots`; ``mean``: one slot, the
mean of the views; ``attention``: every view, held as :class:`~cxrfuse.store.padded.PaddedViews`
so that one wide study does not widen every row), and report embeddings (n, Dt) with their text
mask (n,).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from cxrfuse.data.manifest import Manifest
from cxrfuse.problems import DataError
from cxrfuse.store.image_shards import ImageEmbeddings
from cxrfuse.store.padded import PaddedViews
from cxrfuse.store.texts import TextEmbeddings
from cxrfuse.vocab import SPLITS

INPUT_KEYS = ("image", "image_mask", "text", "text_mask")


@dataclass


class StudyArrays:
    """Everything a fusion head trains on, one row per study (NumPy, manifest order)."""

    study_ids: np.ndarray
    patient_ids: np.ndarray
    split: np.ndarray
    y: np.ndarray
    labels: list[str]
    image: np.ndarray | PaddedViews | None = None
    image_mask: np.ndarray | None = None
    text: np.ndarray | None = None
    text_mask: np.ndarray | None = None
    images_kind: str = "none"
    info: dict[str, Any] = field(default_factory=dict)
    text_encoder: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.study_ids)

    @property
    def image_dim(self) -> int:
        return 0 if self.image is None else int(self.image.shape[-1])

    @property
    def n_views(self) -> int:
        return 1 if self.image is None else int(self.image.shape[1])

    @property
    def text_dim(self) -> int:
        return 0 if self.text is None else int(self.text.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split (``train``, ``val`` or ``test``)."""
        return np.flatnonzero(self.split == split)

    def subset(self, rows: np.ndarray) -> StudyArrays:
        """The studies at ``rows`` (a copy of every per-study array; training indexes the
        arrays instead, :mod:`cxrfuse.training.data`)."""
        pick = {
            name: None if getattr(self, name) is None else getattr(self, name)[rows]
            for name in ("study_ids", "patient_ids", "split", "y", *INPUT_KEYS)
        }
        return replace(self, **pick)

    def present_views(self, rows: np.ndarray) -> np.ndarray:
        """(k, D) every embedded view of the studies at ``rows``, study after study in slot
        order (``image[rows][image_mask[rows]]``; for ``attention`` without the padded rows)."""
        if self.image is None or self.image_mask is None:
            raise DataError("these study arrays hold no image embeddings")
        if isinstance(self.image, PaddedViews):
            return self.image.views_of(rows)
        return self.image[rows][self.image_mask[rows]]

    def tensors(self, rows: np.ndarray | None = None) -> dict[str, Any]:
        """Model inputs and ``y`` as tensors (only the modalities present); without ``rows``,
        ``attention`` views stay :class:`PaddedViews` (batches take their rows by
        ``index_select``, dense)."""
        out: dict[str, Any] = {}
        for name in (*INPUT_KEYS, "y"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, PaddedViews) and rows is None:
                out[name] = value
                continue
            value = value if rows is None else value[rows]
            out[name] = torch.from_numpy(np.ascontiguousarray(value))
        return out


def study_level_image(
    embeddings: ImageEmbeddings, manifest: Manifest, views: str, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(n, V, D) view embeddings and (n, V) mask for a view fusion mode of the heads, of the
    manifest's studies at ``rows`` (all by default); ``mean`` is one slot, the views' mean."""
    X, mask = embeddings.study_slots(manifest, views, rows)  # type: ignore[arg-type]
    return np.ascontiguousarray(X, dtype=np.float32), mask.astype(bool, copy=False)


def assemble(
    manifest: Manifest,
    task: str,
    *,
    image: ImageEmbeddings | None = None,
    views: str = "mean",
    text: TextEmbeddings | None = None,
) -> StudyArrays:
    """Study arrays of the studies with a split and at least one known label of ``task``.

    Only those studies are assembled, each array allocated once at its final size and
    filled from the memory-mapped store (no per-study lists of vectors, no copy afterwards).
    """
    labels = manifest.task_labels(task)
    y = manifest.label_matrix(task)
    split = manifest.df["split"].to_numpy(dtype=object)
    if not np.isin(split, SPLITS).any():
        raise DataError(
            "the manifest has no train/val/test split; run `cxrfuse split MANIFEST` first"
        )
    keep = np.flatnonzero(np.isin(split, SPLITS) & (~np.isnan(y)).any(axis=1))
    arrays = StudyArrays(
        study_ids=manifest.df["study_id"].to_numpy(dtype=object)[keep],
        patient_ids=manifest.df["patient_id"].to_numpy(dtype=object)[keep],
        split=split[keep],
        y=y[keep].astype(np.float32, copy=False),
        labels=labels,
        images_kind=manifest.images,
    )
    del y
    if image is not None and views == "attention":  # every view, without the padding
        arrays.image = image.study_views(manifest, keep)
        arrays.image_mask = arrays.image.mask()
    elif image is not None:
        arrays.image, arrays.image_mask = study_level_image(image, manifest, views, keep)
    if text is not None:
        arrays.text, arrays.text_mask = text.study_matrix(manifest, keep)
    for name in ("train", "val"):
        if not (arrays.split == name).any():
            raise DataError(f"no study of split {name!r} has a known label of task {task!r}")
    return arrays
