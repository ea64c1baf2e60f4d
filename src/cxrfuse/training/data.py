"""Training inputs from the embedding store, and fast in-memory batching.

:func:`build_study_arrays` turns a run config into one :class:`~cxrfuse.store.StudyArrays`
(labels, splits, view and report embeddings, in manifest order), embedding first what the
store lacks (with the store's own functions, so a later ``cxrfuse embed`` or run finds it).

Batches are sliced from whole tensors (:func:`make_loader`): the data loader's sampler yields
lists of row indices and the dataset returns every tensor indexed by such a list at once,
instead of one ``__getitem__`` per study and a collate step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from cxrfuse.config import RunConfig
from cxrfuse.data import check_patient_leakage
from cxrfuse.data.manifest import read_manifest
from cxrfuse.encoders import create_image_encoder, create_text_encoder
from cxrfuse.problems import DataError
from cxrfuse.store import StudyArrays, assemble, embed_images, embed_texts


def build_study_arrays(config: RunConfig, *, progress: bool = True) -> StudyArrays:
    """Arrays for a run config, embedding what the store lacks (see the module docstring)."""
    manifest_path = Path(config.data.manifest)
    manifest = read_manifest(manifest_path)
    check_patient_leakage(manifest, manifest_path)
    manifest.task_labels(config.data.task)  # fail early on an unknown task
    store = Path(config.data.store)
    info: dict[str, Any] = {"manifest": str(manifest_path), "stores": {"image": None, "text": None}}
    image = text = None
    text_encoder = None
    if "image" in config.model.modalities:
        side = config.image
        encoder = create_image_encoder(side.encoder, weights=side.weights,
                                       input_size=side.input_size, fit=side.fit)  # fmt: skip
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
            "fit": encoder.spec.fit,
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
