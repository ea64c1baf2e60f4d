"""Training inputs from the embedding store, and fast in-memory batching.

:func:`build_study_arrays` turns a run config into one :class:`~cxrfuse.store.StudyArrays`
(labels, splits, view and report embeddings, in manifest order), embedding first what the
store lacks (with the store's own functions, so a later ``cxrfuse embed`` or run finds it).

Batches are gathered from whole tensors by index. :class:`IndexBatches` (one process, no
loader workers: every run on one device) is a plain iterable over the study arrays' tensors,
built once without copying them, and a vector of row indices: each batch is one
``index_select`` per tensor (into pinned memory on a GPU), with no Dataset, DataLoader or
collate step and no copy of the training rows. :func:`make_loader` (DDP, loader workers)
is a DataLoader whose sampler yields lists of row indices and whose dataset returns every
tensor indexed by such a list at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

from cxrfuse.config import RunConfig, TrainingConfig
from cxrfuse.data import check_patient_leakage
from cxrfuse.data.manifest import read_manifest
from cxrfuse.encoders import create_image_encoder, create_text_encoder
from cxrfuse.problems import DataError
from cxrfuse.store import PaddedViews, StudyArrays, assemble, embed_images, embed_texts


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


class IndexBatches:
    """Batches of the rows ``rows`` of whole ``tensors`` (see the module docstring).

    Each pass shuffles like a DataLoader over a ``RandomSampler`` seeded with ``seed`` (the
    same order, epoch by epoch) when ``shuffle``; ``sampler`` (positions into ``rows``, e.g.
    weighted) replaces it. ``pin_memory`` gathers each batch into page-locked memory (for a
    GPU: the copy to the device can overlap compute)."""

    def __init__(self, tensors: dict[str, torch.Tensor], rows: np.ndarray | None,
                 batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 sampler: Sampler[int] | None = None, pin_memory: bool = False) -> None:  # fmt: skip
        self.tensors = tensors
        n = len(next(iter(tensors.values())))
        self.rows = (torch.arange(n) if rows is None
                     else torch.as_tensor(np.asarray(rows, dtype=np.int64)))  # fmt: skip
        self.batch_size = int(batch_size)
        if sampler is None and shuffle:
            generator = torch.Generator().manual_seed(int(seed))
            sampler = RandomSampler(range(len(self.rows)), generator=generator)
        self.order = sampler  # not `.sampler`: Lightning would take this for a DataLoader
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        n = len(self.rows) if self.order is None else len(self.order)  # type: ignore[arg-type]
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # a DataLoader's iterator draws its workers' base seed from the global generator; so
        # does each pass here, so that a seeded run draws the same dropout masks as with
        # DataLoaders (lazily: Lightning calls iter() once more only to check it can)
        torch.empty((), dtype=torch.int64).random_()
        order = self.rows
        if self.order is not None:
            order = self.rows[torch.as_tensor(list(self.order), dtype=torch.long)]
        for start in range(0, len(order), self.batch_size):
            yield self.batch(order[start:start + self.batch_size])

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tensor's rows at ``index`` (row numbers of the whole tensors)."""
        out = {}
        for name, tensor in self.tensors.items():
            padded = isinstance(tensor, PaddedViews)  # attention views: dense rows on request
            if self.pin_memory:
                dtype = torch.float32 if padded else tensor.dtype
                buffer = torch.empty((len(index), *tensor.shape[1:]), dtype=dtype,
                                     pin_memory=True)  # fmt: skip
                out[name] = (tensor.index_select(0, index, out=buffer) if padded
                             else torch.index_select(tensor, 0, index, out=buffer))  # fmt: skip
            else:
                out[name] = tensor.index_select(0, index)
        return out


def one_process(training: TrainingConfig) -> bool:
    """Whether a run trains in this one process on one device without loader workers (then
    :class:`IndexBatches` feeds it; DDP and loader workers need a DataLoader)."""
    if training.num_workers or training.num_nodes > 1 or training.strategy.startswith("ddp"):
        return False
    devices = training.devices
    if isinstance(devices, list):
        return len(devices) == 1
    if isinstance(devices, str) and devices != "auto":
        devices = int(devices) if devices.lstrip("-").isdigit() else devices
    if devices == "auto" or devices == -1:
        gpu = torch.cuda.is_available() and training.accelerator in ("auto", "gpu", "cuda")
        return not gpu or torch.cuda.device_count() <= 1
    return devices == 1


def uses_gpu(training: TrainingConfig) -> bool:
    """Whether the trainer will run on a CUDA GPU."""
    return torch.cuda.is_available() and training.accelerator in ("auto", "gpu", "cuda")
