"""Study-level training arrays from the embedding store, and fast in-memory batching.

:func:`build_study_arrays` turns a run config into one :class:`StudyArrays`: labels, splits,
image view embeddings (B, V, D) with their view mask and report embeddings (B, Dt) with their
text mask, in manifest order, for the studies that have a split and at least one known
label of the task. Embeddings that the store lacks are computed first (with the store's own
functions, so a later ``cxrfuse embed`` or run finds them).

Batches are sliced from whole tensors (:func:`make_loader`): the data loader's sampler yields
lists of row indices and the dataset returns every tensor indexed by such a list at once,
instead of one ``__getitem__`` per study and a collate step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from cxrfuse.data.manifest import SPLITS, Manifest, read_manifest
from cxrfuse.fusion.heads import STORE_MODE
from cxrfuse.problems import DataError

if TYPE_CHECKING:
    from cxrfuse.config import RunConfig
    from cxrfuse.encoders.store import ImageEmbeddings, TextEmbeddings

INPUT_KEYS = ("image", "image_mask", "text", "text_mask")


@dataclass
class StudyArrays:
    """Everything a fusion head trains on, one row per study (NumPy, manifest order)."""

    study_ids: np.ndarray
    patient_ids: np.ndarray
    split: np.ndarray
    y: np.ndarray
    labels: list[str]
    image: np.ndarray | None = None
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
        """The studies at ``rows`` (a copy of every per-study array)."""
        pick = {
            name: None if getattr(self, name) is None else getattr(self, name)[rows]
            for name in ("study_ids", "patient_ids", "split", "y", *INPUT_KEYS)
        }
        return replace(self, **pick)

    def tensors(self, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Model inputs and ``y`` as tensors (only the modalities present)."""
        out: dict[str, torch.Tensor] = {}
        for name in (*INPUT_KEYS, "y"):
            value = getattr(self, name)
            if value is None:
                continue
            value = value if rows is None else value[rows]
            out[name] = torch.from_numpy(np.ascontiguousarray(value))
        return out


def study_level_image(
    embeddings: ImageEmbeddings, manifest: Manifest, views: str
) -> tuple[np.ndarray, np.ndarray]:
    """(n, V, D) view embeddings and (n, V) mask for a view fusion mode of the heads."""
    X, mask = embeddings.study_matrix(manifest, STORE_MODE[views])  # type: ignore[arg-type]
    if X.ndim == 2 and mask.ndim == 2:  # concat: (n, V*D) with a per-slot mask
        X = X.reshape(len(X), mask.shape[1], -1)
    elif X.ndim == 2:  # frontal: one slot
        X, mask = X[:, None, :], mask[:, None]
    return np.ascontiguousarray(X, dtype=np.float32), mask.astype(bool)


def assemble(
    manifest: Manifest,
    task: str,
    *,
    image: ImageEmbeddings | None = None,
    views: str = "mean",
    text: TextEmbeddings | None = None,
) -> StudyArrays:
    """Study arrays of the studies with a split and at least one known label of ``task``."""
    labels = manifest.task_labels(task)
    y = manifest.label_matrix(task)
    split = manifest.df["split"].to_numpy(dtype=object)
    if not np.isin(split, SPLITS).any():
        raise DataError(
            "the manifest has no train/val/test split; run `cxrfuse split MANIFEST` first"
        )
    keep = np.isin(split, SPLITS) & (~np.isnan(y)).any(axis=1)
    arrays = StudyArrays(
        study_ids=manifest.df["study_id"].to_numpy(dtype=object),
        patient_ids=manifest.df["patient_id"].to_numpy(dtype=object),
        split=split,
        y=y.astype(np.float32),
        labels=labels,
        images_kind=manifest.images,
    )
    if image is not None:
        arrays.image, arrays.image_mask = study_level_image(image, manifest, views)
    if text is not None:
        X, mask = text.study_matrix(manifest)
        arrays.text, arrays.text_mask = X.astype(np.float32), mask.astype(bool)
    arrays = arrays.subset(np.flatnonzero(keep))
    for name in ("train", "val"):
        if not (arrays.split == name).any():
            raise DataError(f"no study of split {name!r} has a known label of task {task!r}")
    return arrays


def build_study_arrays(config: RunConfig, *, progress: bool = True) -> StudyArrays:
    """Arrays for a run config, embedding what the store lacks (see the module docstring)."""
    from cxrfuse.encoders.registry import create_image_encoder, create_text_encoder
    from cxrfuse.encoders.store import embed_images, embed_texts

    manifest_path = Path(config.data.manifest)
    manifest = read_manifest(manifest_path)
    manifest.task_labels(config.data.task)  # fail early on an unknown task
    store = Path(config.data.store)
    info: dict[str, Any] = {"manifest": str(manifest_path), "stores": {"image": None, "text": None}}
    image = text = None
    text_encoder = None
    if "image" in config.model.modalities:
        side = config.image
        encoder = create_image_encoder(side.encoder, weights=side.weights, input_size=side.input_size)
        image = embed_images(manifest, encoder, store, batch_size=side.embed_batch_size,
                             progress=progress)
        if len(image) == 0:
            raise DataError(f"{manifest_path}: no image could be embedded (does the manifest "
                            "have image paths? `cxrfuse phantoms` draws stand-ins)")
        info["stores"]["image"] = str(image.path)
        info["image"] = {
            "encoder": side.encoder,
            "weights": side.weights,
            "views": side.views,
            "input_size": encoder.spec.input_size,
            "dim": int(encoder.feature_dim),
        }
    if "text" in config.model.modalities:
        side = config.text
        text_encoder = create_text_encoder(side.encoder, weights=side.weights, **side.options)
        text = embed_texts(manifest, text_encoder, side.text_config(), store)
        info["stores"]["text"] = str(text.path)
        info["text"] = {
            "encoder": side.encoder,
            "weights": side.weights,
            "options": dict(side.options),
            "text_config": side.text_config().model_dump(),
            "mask_labels_for": list(manifest.labels),
            "dim": int(text.vectors.shape[1]),
        }
    arrays = assemble(manifest, config.data.task, image=image, views=config.image.views, text=text)
    arrays.info = info
    arrays.text_encoder = text_encoder
    return arrays


class BatchDataset(Dataset):
    """A dataset indexed by a list of rows: returns every tensor sliced at once."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        return {k: v.index_select(0, index) for k, v in self.tensors.items()}


def make_loader(
    tensors: dict[str, torch.Tensor],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of whole-tensor slices; ``sampler`` (e.g. weighted) overrides ``shuffle``."""
    dataset = BatchDataset(tensors)
    if sampler is None:
        generator = torch.Generator().manual_seed(int(seed))
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=False)
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
