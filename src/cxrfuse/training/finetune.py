"""End-to-end fine-tuning: the image encoder is trained with the fusion head, text stays frozen.

``training.mode: finetune`` (designs 001, 003, 004). Each study's views are decoded in
DataLoader workers (:func:`cxrfuse.data.images.decode_resized`: 8-bit gray, central square,
resized; with ``data.image_cache`` once, into the decoded-image cache, and read from it in
every epoch), augmented on the training split (:mod:`cxrfuse.training.augment`, on [0, 1]
pixels), and normalised on the device by the encoder's own spec
(:func:`cxrfuse.encoders.to_model_input`). Every view goes through the one shared encoder;
the (B, V, D) view features go to the head's view fusion, exactly like stored embeddings do
in the embedding path. The report side is the frozen text embedding from the store.

Backbone modules can be frozen by name prefix and the first convolution adapted to gray input
(:mod:`cxrfuse.encoders.surgery`). The run pipeline (:mod:`cxrfuse.training.runner`) uses
this module through :class:`cxrfuse.training.inputs.ImageFinetuning`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from cxrfuse.config import RunConfig
from cxrfuse.data.images import decode_resized
from cxrfuse.data.manifest import Manifest
from cxrfuse.data.views import view_slots as slot_layout
from cxrfuse.encoders import ImageEncoder, create_image_encoder, to_model_input
from cxrfuse.encoders.surgery import adapt_to_grayscale, freeze_backbone
from cxrfuse.fusion import FusionHead
from cxrfuse.problems import DataError
from cxrfuse.store import DecodedImageCache, StudyArrays
from cxrfuse.training.augment import Augment
from cxrfuse.training.module import FusionModule, make_optimizer, make_scheduler


class FinetuneModel(nn.Module):
    """A trainable image encoder shared by every view, and a fusion head.

    ``forward(image, image_mask, text, text_mask)`` (the keywords of a fusion head):
    ``image`` (B, V, S, S) uint8 gray pixels (or (B, V, C, S, S) float model input),
    ``image_mask`` (B, V) True where a view exists; only existing views go through the encoder.
    Returns the head's logits.
    """

    def __init__(self, encoder: ImageEncoder, head: FusionHead, frozen: Sequence[str] = ()):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.frozen = list(frozen)

    def train(self, mode: bool = True) -> FinetuneModel:
        """Like ``nn.Module.train``, but frozen backbone modules stay in eval mode."""
        super().train(mode)
        modules = dict(self.encoder.backbone.named_modules())
        for name in self.frozen:
            modules[name].eval()
        return self

    def embed_views(self, image: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """(B, V, S, S) uint8 or (B, V, C, S, S) float views -> (B, V, D) features."""
        b, v = image.shape[:2]
        mask = image_mask.bool()
        picked = image[mask]
        if picked.dtype == torch.uint8:
            picked = to_model_input(picked, self.encoder.spec)
        if picked.is_cuda:
            picked = picked.contiguous(memory_format=torch.channels_last)
        feats = self.encoder(picked) if picked.shape[0] else None
        dim = self.encoder.feature_dim
        dtype = feats.dtype if feats is not None else torch.float32
        out = torch.zeros((b, v, dim), dtype=dtype, device=image.device)
        if feats is not None:
            out[mask] = feats
        return out

    def forward(
        self,
        image: torch.Tensor,
        image_mask: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        views = self.embed_views(image, image_mask)
        return self.head(views, image_mask, text, text_mask)

    def param_groups(self, image_lr: float, head_lr: float) -> list[dict[str, Any]]:
        """Optimiser groups: trainable encoder parameters at ``image_lr``, the head at ``head_lr``."""
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        groups = [{"params": list(self.head.parameters()), "lr": head_lr, "name": "head"}]
        if encoder:
            groups.append({"params": encoder, "lr": image_lr, "name": "encoder"})
        return groups


def view_slots(manifest: Manifest, view_fusion: str) -> tuple[list[list[str | None]], int]:
    """Per study, the image paths in the slots the head's view fusion reads, and the width:
    :func:`cxrfuse.data.views.view_slots` over the views with a path (the store's layout),
    ``mean`` / ``attention`` padded to the widest study. Empty slots are None."""
    per_study = []
    for views in manifest.df["views"]:
        items = [(str(v["view"]), str(v["path"])) for v in views if v.get("path")]
        layout = slot_layout([view for view, _ in items], view_fusion)
        per_study.append([None if i is None else items[i][1] for i in layout])
    width = max([len(slots) for slots in per_study] + [len(slot_layout([], view_fusion)), 1])
    return [slots + [None] * (width - len(slots)) for slots in per_study], width


class StudyImages(Dataset):
    """One item per study: its views as uint8 pixels (augmented when ``augment`` is given),
    the frozen text vector, the labels.

    Items are dicts with ``image`` (V, S, S) uint8, ``image_mask`` (V,), ``text`` (Dt,) and
    ``text_mask`` () when text vectors are given, ``y`` (L,) float with NaN unknown, ``index``.
    A view that cannot be decoded is left out (mask False) and listed in ``errors``.
    """

    def __init__(
        self,
        slots: Sequence[Sequence[str | None]],
        size: int,
        labels: np.ndarray,
        text: np.ndarray | None = None,
        text_mask: np.ndarray | None = None,
        augment: Augment | None = None,
        cache: DecodedImageCache | None = None,
        cache_rows: Mapping[str, int] | None = None,
        fit: str = "crop",
    ) -> None:
        if len(slots) != len(labels) or (text is not None and len(text) != len(labels)):
            raise DataError("slots, labels and text vectors must have one row per study")
        self.slots = [list(s) for s in slots]
        self.size = int(size)
        self.fit = fit
        self.labels = np.array(labels, dtype=np.float32)  # a writable copy
        self.text = None if text is None else np.array(text, dtype=np.float32)
        self.text_mask = None if text_mask is None else np.asarray(text_mask, dtype=bool)
        self.augment = augment
        self.cache, self.cache_rows = cache, dict(cache_rows or {})

    def __len__(self) -> int:
        return len(self.slots)

    def _pixels(self, path: str) -> np.ndarray:
        """The view's uint8 pixels: from the decoded-image cache when it holds them."""
        row = self.cache_rows.get(path)
        hit = None if self.cache is None or row is None else self.cache.lookup(row)
        if hit is None:
            return decode_resized(path, self.size, self.fit)
        pixels, ok, error = hit
        if not ok:
            raise DataError(error)
        return np.array(pixels)  # a writable copy of the memory-mapped row

    def _load(self, path: str) -> tuple[torch.Tensor | None, str]:
        try:
            pixels = torch.from_numpy(self._pixels(path))
        except Exception as err:  # noqa: BLE001 - an unreadable view becomes a missing view
            return None, f"{path}: {type(err).__name__}: {err}"
        if self.augment is not None:
            x = self.augment(pixels[None].float() / 255.0)[0]
            pixels = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        return pixels, ""

    def __getitem__(self, index: int) -> dict[str, Any]:
        width = len(self.slots[index])
        images = torch.zeros((width, self.size, self.size), dtype=torch.uint8)
        mask = torch.zeros(width, dtype=torch.bool)
        errors = []
        for j, path in enumerate(self.slots[index]):
            if path is None:
                continue
            pixels, error = self._load(path)
            if pixels is None:
                errors.append(error)
                continue
            images[j], mask[j] = pixels, True
        item: dict[str, Any] = {
            "image": images,
            "image_mask": mask,
            "y": torch.from_numpy(self.labels[index]),
            "index": index,
            "errors": errors,
        }
        if self.text is not None:
            item["text"] = torch.from_numpy(self.text[index])
            assert self.text_mask is not None
            item["text_mask"] = torch.tensor(bool(self.text_mask[index]))
        return item


def collate_studies(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of :class:`StudyImages` items; ``errors`` become one flat list."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "errors":
            out[key] = [e for v in values for e in v]
        elif key == "index":
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = torch.stack(values)
    return out


def seed_worker_augment(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the dataset's augmentation from the worker seed.

    PyTorch gives each worker ``base_seed + worker_id``, with ``base_seed`` drawn from the
    (seeded) main-process RNG for each epoch's iterator, so workers and epochs get different
    but reproducible augmentation streams.
    """
    info = get_worker_info()
    augment = getattr(info.dataset, "augment", None) if info is not None else None
    if augment is not None:
        augment.set_random_state(torch.initial_seed() % 2**63)


class FinetuneModule(FusionModule):
    """:class:`FusionModule` around a :class:`FinetuneModel`: the same loss, metrics, history
    and schedules, with two learning rates (encoder ``image_lr``, head ``lr``); unreadable
    views met during training are collected in ``unreadable``."""

    def __init__(self, model: FinetuneModel, loss: nn.Module, *, image_lr: float, **kwargs: Any):
        super().__init__(model, loss, **kwargs)
        self.image_lr = image_lr
        self.unreadable: set[str] = set()

    def _step(self, batch: dict[str, Any], accumulator: Any) -> torch.Tensor:
        self.unreadable.update(batch.get("errors", ()))
        return super()._step(batch, accumulator)

    def on_fit_start(self) -> None:
        if self.device.type == "cuda":
            self.head.encoder.to(memory_format=torch.channels_last)

    def configure_optimizers(self) -> Any:
        groups = self.head.param_groups(image_lr=self.image_lr, head_lr=self.lr)
        optimizer = make_optimizer(groups, self.optimizer_kind, self.lr, self.weight_decay)
        scheduler = make_scheduler(optimizer, self.schedule, self.max_epochs)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}


def build_finetune_encoder(config: RunConfig) -> tuple[ImageEncoder, list[str]]:
    """The configured encoder (pretrained weights as configured), grayscale-adapted if asked,
    with ``finetune.freeze`` applied; returns it (train mode) and the frozen module names."""
    side, tune = config.image, config.finetune
    encoder = create_image_encoder(side.encoder, weights=side.weights,
                                   input_size=side.input_size, fit=side.fit)  # fmt: skip
    if tune.grayscale:
        adapt_to_grayscale(encoder)
    return encoder.train(), freeze_backbone(encoder, tune.freeze)


def finetune_loader(
    dataset: StudyImages,
    config: RunConfig,
    *,
    shuffle: bool = False,
    sampler: Any = None,
    batch_size: int | None = None,
) -> DataLoader:
    workers = config.training.num_workers
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(
        dataset,
        batch_size=batch_size or config.training.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        collate_fn=collate_studies,
        worker_init_fn=seed_worker_augment,
        pin_memory=torch.cuda.is_available(),
    )


def study_images(
    arrays: StudyArrays,
    rows: np.ndarray,
    slots: list[list[str | None]],
    size: int,
    augment: Augment | None = None,
    cache: tuple[DecodedImageCache, dict[str, int]] | None = None,
    fit: str = "crop",
) -> StudyImages:
    text = None if arrays.text is None else arrays.text[rows]
    text_mask = None if arrays.text_mask is None else arrays.text_mask[rows]
    return StudyImages([slots[r] for r in rows], size, arrays.y[rows], text, text_mask, augment,
                       *(cache or (None, None)), fit=fit)  # fmt: skip
