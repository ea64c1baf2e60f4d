"""Where a run's image side comes from: the embedding store (a head on frozen embeddings) or
the images themselves (the encoder is fine-tuned with the head). Both are an
:class:`InputSource` for the one run pipeline of :mod:`cxrfuse.training.runner`.

A source holds the study arrays (labels, splits, report embeddings; stored view embeddings
for :class:`StoredEmbeddings`), builds the model to train around the configured head, gives
the loaders and the Lightning module, predicts val and test after training, and says what
the run directory must record of its image side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from cxrfuse.config import RunConfig
from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.data.splits import check_patient_leakage
from cxrfuse.fusion import FusionHead, head_probabilities
from cxrfuse.problems import DataError
from cxrfuse.rundir import FinetuneFacts, ImageSide, RunDir
from cxrfuse.runtime import resolve_device
from cxrfuse.store import (
    StudyArrays,
    assemble,
    embed_images,
    fill_cache,
    manifest_image_cache,
    study_level_image,
)
from cxrfuse.training.augment import build_augment
from cxrfuse.training.data import (
    IndexBatches,
    build_study_arrays,
    make_loader,
    one_process,
    uses_gpu,
)
from cxrfuse.training.finetune import (
    FinetuneModel,
    FinetuneModule,
    build_finetune_encoder,
    finetune_loader,
    study_images,
    view_slots,
)
from cxrfuse.training.module import FusionModule

EVAL_BATCH = 4096
HeadFactory = Callable[[int, int], FusionHead]
"""``make_head(image_dim, n_views)``: the configured head for an image side of that shape."""


@dataclass


class ImageRecord:
    """What the run directory records of the image side after training."""

    side: ImageSide | None
    store: str | None
    finetune: FinetuneFacts | None = None


class InputSource(Protocol):
    """One way of feeding a run (see the module docstring)."""

    config: RunConfig
    arrays: StudyArrays

    def build_model(self, make_head: HeadFactory) -> nn.Module:
        """The model to train: the head itself, or encoder + head."""

    def module(self, model: nn.Module, loss: nn.Module) -> FusionModule:
        """The Lightning module that trains ``model``."""

    def loaders(self, train_rows: np.ndarray, val_rows: np.ndarray,
                sampler: Sampler[int] | None) -> tuple[DataLoader, DataLoader]:  # fmt: skip
        """Training and validation batches."""

    def predict(self, module: FusionModule, rows: np.ndarray, progress: bool) -> np.ndarray:
        """Positive-class probabilities of the trained model for ``rows`` (val and test)."""

    def image_record(self, run: RunDir, module: FusionModule) -> ImageRecord:
        """Save what the image side needs and say what run.json and model.json record."""


@dataclass


class StoredEmbeddings:
    """A head on frozen embeddings from the store (``training.mode: embeddings``), or on study
    arrays the caller built (``arrays``)."""

    config: RunConfig
    progress: bool = True
    arrays: StudyArrays = None  # type: ignore[assignment]

    _tensors: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.arrays is None:
            self.arrays = build_study_arrays(self.config, progress=self.progress)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The study arrays as tensors, made once and sharing the arrays' memory."""
        if self._tensors is None:
            self._tensors = self.arrays.tensors()
        return self._tensors

    def build_model(self, make_head: HeadFactory) -> nn.Module:
        return make_head(self.arrays.image_dim, self.arrays.n_views)

    def module(self, model: nn.Module, loss: nn.Module) -> FusionModule:
        return _module(FusionModule, model, loss, self.config)

    def loaders(self, train_rows: np.ndarray, val_rows: np.ndarray,
                sampler: Sampler[int] | None) -> tuple[Any, Any]:  # fmt: skip
        """Batches gathered by index from the tensors (:class:`IndexBatches`), or DataLoaders
        of copied rows under DDP or with loader workers."""
        training = self.config.training
        eval_batch = max(training.batch_size, EVAL_BATCH)
        if one_process(training):
            pin = uses_gpu(training)
            train = IndexBatches(self.tensors, train_rows, training.batch_size, shuffle=True,
                                 seed=self.config.seed, sampler=sampler, pin_memory=pin)  # fmt: skip
            return train, IndexBatches(self.tensors, val_rows, eval_batch, pin_memory=pin)
        train = make_loader(self.arrays.tensors(train_rows), training.batch_size, shuffle=True,
                            seed=self.config.seed, sampler=sampler,
                            num_workers=training.num_workers)  # fmt: skip
        val = make_loader(self.arrays.tensors(val_rows), eval_batch)
        return train, val

    def predict(self, module: FusionModule, rows: np.ndarray, progress: bool) -> np.ndarray:
        return module.predict_arrays(self.tensors, rows=rows)

    def image_record(self, run: RunDir, module: FusionModule) -> ImageRecord:
        image = self.arrays.info.get("image")
        side = None if image is None else ImageSide(**image, n_views=self.arrays.n_views)
        return ImageRecord(side, self.arrays.info.get("stores", {}).get("image"))


@dataclass


class ImageFinetuning:
    """The image encoder trained with the head from the images (``training.mode: finetune``).

    The report side is the frozen text embedding from the store. After training, the val and
    test images are embedded with the fine-tuned encoder into the store (keyed by its
    weights), so evaluation and explanations read them like any embedding-path run.
    """

    config: RunConfig
    progress: bool = True
    arrays: StudyArrays = field(init=False)
    manifest: Manifest = field(init=False)
    slots: list[list[str | None]] = field(init=False)
    width: int = field(init=False)
    model: FinetuneModel | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.arrays, self.manifest = study_arrays(self.config, progress=self.progress)
        slots_all, self.width = view_slots(self.manifest, self.config.image.views)
        row_of = {sid: i for i, sid in enumerate(self.manifest.df["study_id"].astype(str))}
        self.slots = [slots_all[row_of[str(sid)]] for sid in self.arrays.study_ids]
        has_view = np.array([[p is not None for p in s] for s in self.slots], dtype=bool)
        if not has_view.any():
            raise DataError(f"{self.config.data.manifest}: no study of the task has an image "
                            "path (`cxrfuse phantoms` draws stand-ins)")  # fmt: skip
        self.arrays.image_mask = has_view

    def build_model(self, make_head: HeadFactory) -> nn.Module:
        encoder, frozen = build_finetune_encoder(self.config)
        self.model = FinetuneModel(encoder, make_head(encoder.feature_dim, self.width), frozen)
        return self.model

    def module(self, model: nn.Module, loss: nn.Module) -> FusionModule:
        return _module(FinetuneModule, model, loss, self.config,
                       image_lr=self.config.finetune.image_lr)  # fmt: skip

    def _size(self) -> int:
        assert self.model is not None
        return self.model.encoder.spec.input_size

    def loaders(self, train_rows: np.ndarray, val_rows: np.ndarray,
                sampler: Sampler[int] | None) -> tuple[DataLoader, DataLoader]:  # fmt: skip
        size, config = self._size(), self.config
        augment = build_augment(config.finetune.augment, seed=config.seed)
        cache = None
        if config.data.image_cache:  # decode once, read pixels from the cache in every epoch
            cache = manifest_image_cache(config.data.image_cache, self.manifest, size,
                                         fit=config.image.fit)  # fmt: skip
            fill_cache(cache[0], self.progress)
        fit = config.image.fit
        train = finetune_loader(study_images(self.arrays, train_rows, self.slots, size, augment,
                                             cache, fit=fit), config, shuffle=True,
                                sampler=sampler)  # fmt: skip
        val = finetune_loader(study_images(self.arrays, val_rows, self.slots, size, cache=cache,
                                           fit=fit), config)  # fmt: skip
        self._augment = augment
        return train, val

    def predict(self, module: FusionModule, rows: np.ndarray, progress: bool) -> np.ndarray:
        assert self.model is not None
        ids = [str(s) for s in self.arrays.study_ids[rows]]
        self._embeddings, views, view_mask = embed_eval_views(self.config, self.model.encoder,
                                                              self.manifest, ids, progress=progress)  # fmt: skip
        probs = head_probabilities(self.model.head.cpu(), self.config.model.output, {
            "image": views, "image_mask": view_mask,
            "text": None if self.arrays.text is None else self.arrays.text[rows],
            "text_mask": None if self.arrays.text_mask is None else self.arrays.text_mask[rows],
        })  # fmt: skip
        return probs.numpy()

    def image_record(self, run: RunDir, module: FusionModule) -> ImageRecord:
        assert self.model is not None
        encoder, side = self.model.encoder, self.config.image
        run.write_weights(encoder.state_dict(), encoder=True,
                          metadata={"format": "cxrfuse-encoder/1", "encoder": encoder.spec.name})
        image = ImageSide(
            encoder=side.encoder, weights=side.weights, views=side.views,
            input_size=encoder.spec.input_size, dim=int(encoder.feature_dim),
            n_views=self.width, finetuned=True, grayscale=bool(self.config.finetune.grayscale),
            fit=encoder.spec.fit,
            channels=encoder.spec.channels, freeze=list(self.model.frozen),
            file=run.encoder_weights_path.name,
        )  # fmt: skip
        augment = getattr(self, "_augment", None)
        unreadable = sorted(getattr(module, "unreadable", ()))
        facts = FinetuneFacts(
            trainable_parameters=int(sum(p.numel() for p in self.model.parameters()
                                         if p.requires_grad)),
            frozen=list(self.model.frozen), image_lr=self.config.finetune.image_lr,
            augment=None if augment is None else repr(augment),
            unreadable_views=unreadable[:100], n_unreadable_views=len(unreadable),
        )  # fmt: skip
        return ImageRecord(image, str(self._embeddings.path), facts)


def make_source(config: RunConfig, *, progress: bool = True) -> InputSource:
    """The input source of a run config's ``training.mode``."""
    if config.training.mode == "finetune":
        return ImageFinetuning(config, progress)
    return StoredEmbeddings(config, progress)


def _module(cls: type[FusionModule], model: nn.Module, loss: nn.Module, config: RunConfig,
            **extra: Any) -> FusionModule:  # fmt: skip
    training = config.training
    return cls(model, loss, output=config.model.output, optimizer=training.optimizer,
               lr=training.lr, weight_decay=training.weight_decay, schedule=training.schedule,
               max_epochs=training.max_epochs, **extra)  # fmt: skip


def study_arrays(config: RunConfig, *, progress: bool = True) -> tuple[StudyArrays, Manifest]:
    """Labels, splits and frozen text embeddings of the run's studies (manifest order)."""
    manifest = read_manifest(config.data.manifest)
    check_patient_leakage(manifest, config.data.manifest)
    if "text" in config.model.modalities:
        text_only = config.model_copy(
            update={"model": config.model.model_copy(update={"modalities": ["text"]})}
        )
        arrays = build_study_arrays(text_only, progress=progress)
    else:
        arrays = assemble(manifest, config.data.task)
        arrays.info = {"manifest": str(config.data.manifest),
                       "stores": {"image": None, "text": None}}  # fmt: skip
    return arrays, manifest


def embed_eval_views(config: RunConfig, encoder: Any, manifest: Manifest, study_ids: list[str],
                     *, progress: bool = True) -> tuple[Any, np.ndarray, np.ndarray]:  # fmt: skip
    """Store the fine-tuned encoder's embeddings of the given studies' images; returns the
    embeddings and the (n, V, D) views and (n, V) mask of ``study_ids`` in that order."""
    wanted = set(map(str, study_ids))
    keep = manifest.df["study_id"].astype(str).isin(wanted).to_numpy()
    subset = manifest.replace(df=manifest.df[keep].reset_index(drop=True))
    gpu = torch.cuda.is_available() and config.training.accelerator in ("auto", "gpu", "cuda")
    embeddings = embed_images(
        subset, encoder.eval(), config.data.store, batch_size=config.image.embed_batch_size,
        num_workers=config.training.num_workers, progress=progress,
        device=resolve_device("cuda" if gpu else "cpu"),
    )  # fmt: skip
    X, mask = study_level_image(embeddings, subset, config.image.views)
    pos = {sid: i for i, sid in enumerate(subset.df["study_id"].astype(str))}
    order = np.array([pos[str(s)] for s in study_ids], dtype=np.int64)
    return embeddings, X[order], mask[order]
