"""End-to-end fine-tuning: the image encoder is trained with the fusion head, text stays frozen.

``training.mode: finetune`` (seeds 001, 003, 004). Each study's views are decoded in
DataLoader workers (:func:`cxrfuse.encoders.decode.decode_resized`: 8-bit gray, central
square, resized; with ``data.image_cache`` once, into the decoded-image cache, and read from
it in every epoch), augmented on the training split (:mod:`cxrfuse.training.augment`, on [0, 1]
pixels), and normalised on the device by the encoder's own spec
(:func:`cxrfuse.encoders.image.to_model_input`). Every view goes through the one shared
encoder; the (B, V, D) view features go to the head's view fusion, exactly like stored
embeddings do in the embedding path. The report side is the frozen text embedding from the
store.

Backbone modules can be frozen by name prefix (``finetune.freeze``, e.g. ResNet-50
``conv1, layer1, layer2`` as in seed 004): their parameters get no gradient and their batch
norm statistics stay as loaded. ``finetune.grayscale`` adapts the first convolution to one
input channel by summing its RGB filters (seed 004), which equals the RGB model on a gray
image replicated to three channels when the encoder normalises all channels alike
(EfficientNet-Lite, torchxrayvision) and is close to it otherwise (ImageNet mean/std differ by
channel; the gray input uses their averages).

The run directory is the one of the embedding path (``notes/rundir.md``) plus
``encoder.safetensors`` (the fine-tuned :class:`~cxrfuse.encoders.image.ImageEncoder`
state_dict); ``model.json`` marks ``"image": {..., "finetuned": true, "grayscale": ...}``.
:func:`load_finetuned_encoder` rebuilds the encoder from a run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from cxrfuse.data.manifest import FRONTAL_VIEWS, Manifest
from cxrfuse.encoders.cache import DecodedImageCache, fill_cache, manifest_image_cache
from cxrfuse.encoders.decode import decode_resized
from cxrfuse.encoders.image import ImageEncoder, to_model_input
from cxrfuse.encoders.registry import Normalisation
from cxrfuse.encoders.store import LATERAL_VIEWS
from cxrfuse.fusion import FusionHead
from cxrfuse.problems import ConfigError, CxrfuseError, DataError
from cxrfuse.training.artifacts import SIDECAR_FILE
from cxrfuse.training.module import FusionModule, make_optimizer, make_scheduler

if TYPE_CHECKING:
    import pandas as pd

    from cxrfuse.config import RunConfig
    from cxrfuse.encoders.store import ImageEmbeddings
    from cxrfuse.training.augment import Augment
    from cxrfuse.training.data import StudyArrays

ENCODER_FILE = "encoder.safetensors"
EVAL_BATCH = 4096


# ----------------------------------------------------------------------------- encoder surgery


def find_input_conv(backbone: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` of ``backbone`` (the one that reads the image) and its name."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise CxrfuseError(f"{type(backbone).__name__} has no Conv2d layer to adapt")


def gray_normalisation(normalisation: Normalisation) -> Normalisation:
    """The one-channel normalisation of a gray image: the channel means of mean and std."""
    if normalisation == "xrv":
        return normalisation
    mean, std = normalisation
    return ((float(np.mean(mean)),), (float(np.mean(std)),))


def adapt_to_grayscale(encoder: ImageEncoder) -> ImageEncoder:
    """Make ``encoder`` read one-channel images: sum the first conv's RGB filters (in place).

    The spec becomes ``channels=1`` with :func:`gray_normalisation`, so ``preprocess`` and
    :func:`to_model_input` feed it gray input. A one-channel encoder is returned unchanged.
    """
    if encoder.spec.channels == 1:
        return encoder
    name, conv = find_input_conv(encoder.backbone)
    if conv.in_channels != 3 or conv.groups != 1:
        raise CxrfuseError(
            f"{encoder.spec.name}: first conv {name!r} has {conv.in_channels} input channels "
            f"(groups {conv.groups}); grayscale adaptation needs a plain 3-channel conv"
        )
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True)
    conv.weight = nn.Parameter(summed, requires_grad=conv.weight.requires_grad)
    conv.in_channels = 1
    encoder.spec = replace(
        encoder.spec,
        channels=1,
        normalisation=gray_normalisation(encoder.spec.normalisation),
        grayscale_to_rgb="not-needed",
    )
    return encoder


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze_backbone(encoder: ImageEncoder, prefixes: Sequence[str]) -> list[str]:
    """Freeze the backbone modules whose names start with one of ``prefixes``.

    Also freezes the backbone's own classifier (``encoder.head_prefixes``), which the pooled
    features never reach. A prefix is a module name relative to the backbone (``layer1``,
    ``features.denseblock1``, ``_blocks.0``) and covers everything inside it; one that names no
    module raises :class:`ConfigError` listing the top-level names. Returns the frozen names.
    """
    backbone = encoder.backbone
    modules = dict(backbone.named_modules())
    frozen = list(dict.fromkeys(p.removeprefix("backbone.") for p in prefixes))
    for prefix in frozen:
        if not prefix or prefix not in modules:
            children = ", ".join(n for n, _ in backbone.named_children())
            raise ConfigError(
                f"finetune.freeze: {prefix!r} names no module of {encoder.spec.name}; "
                f"top-level modules: {children}"
            )
    for name, param in backbone.named_parameters():
        if any(_matches(name, f) for f in frozen) or encoder._is_head(name):
            param.requires_grad_(False)
    return frozen


# ----------------------------------------------------------------------------- model


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


# ----------------------------------------------------------------------------- data


def view_slots(manifest: Manifest, view_fusion: str) -> tuple[list[list[str | None]], int]:
    """Per study, the image paths in the slots the head's view fusion reads, and the width.

    ``frontal``: one slot, the first frontal view. ``concat``: [frontal, lateral]. ``mean`` and
    ``attention``: every view with a path, padded to the widest study. Empty slots are None.
    The same layout as :meth:`ImageEmbeddings.study_matrix` modes frontal/concat/stack.
    """
    per_study = [
        [(str(v["view"]), str(v["path"])) for v in views if v.get("path")]
        for views in manifest.df["views"]
    ]

    def first(items: list[tuple[str, str]], kinds: frozenset[str]) -> str | None:
        return next((p for view, p in items if view in kinds), None)

    if view_fusion == "frontal":
        return [[first(items, FRONTAL_VIEWS)] for items in per_study], 1
    if view_fusion == "concat":
        return [[first(i, FRONTAL_VIEWS), first(i, LATERAL_VIEWS)] for i in per_study], 2
    if view_fusion in ("mean", "attention"):
        width = max([len(items) for items in per_study] + [1])
        return [[p for _, p in items] + [None] * (width - len(items)) for items in per_study], width
    raise ConfigError(f"image.views: {view_fusion!r} unknown; choose frontal, mean, concat, attention")


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
    ) -> None:
        if len(slots) != len(labels) or (text is not None and len(text) != len(labels)):
            raise DataError("slots, labels and text vectors must have one row per study")
        self.slots = [list(s) for s in slots]
        self.size = int(size)
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
            return decode_resized(path, self.size)
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


# ----------------------------------------------------------------------------- weights


def save_encoder(encoder: ImageEncoder, path: Path) -> None:
    """The encoder's state_dict as safetensors (contiguous CPU copies, no pickles)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(path), metadata={"format": "cxrfuse-encoder/1", "encoder": encoder.spec.name})


def load_finetuned_encoder(run_dir: str | Path, device: str | torch.device = "cpu") -> ImageEncoder:
    """The fine-tuned image encoder of a run directory, in eval mode.

    Rebuilt from ``model.json`` (encoder name, input size, grayscale) with random weights and
    then loaded from ``encoder.safetensors``, so no download is needed.
    """
    from safetensors.torch import load_file

    from cxrfuse.encoders import create_image_encoder

    run_dir = Path(run_dir)
    sidecar, weights = run_dir / SIDECAR_FILE, run_dir / ENCODER_FILE
    if not sidecar.is_file():
        raise DataError(f"{sidecar}: no such file; is {run_dir} a finished run directory?")
    image = json.loads(sidecar.read_text()).get("image") or {}
    if not image.get("finetuned"):
        raise DataError(
            f"{sidecar}: the image encoder of this run was not fine-tuned (it used stored "
            "embeddings); build it with cxrfuse.encoders.create_image_encoder"
        )
    if not weights.is_file():
        raise DataError(f"{weights}: no such file; the run did not finish writing its weights")
    encoder = create_image_encoder(image["encoder"], weights="none", input_size=image["input_size"])
    if image.get("grayscale"):
        adapt_to_grayscale(encoder)
    try:
        encoder.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except RuntimeError as err:
        raise DataError(f"{weights} does not fit {image['encoder']}: {err}") from err
    encoder.weights = str(weights)
    return encoder.to(device).eval()


# ----------------------------------------------------------------------------- training


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
    from cxrfuse.encoders import create_image_encoder

    side, tune = config.image, config.finetune
    encoder = create_image_encoder(side.encoder, weights=side.weights, input_size=side.input_size)
    if tune.grayscale:
        adapt_to_grayscale(encoder)
    return encoder.train(), freeze_backbone(encoder, tune.freeze)


def shape_stand_in(n: int, n_views: int, dim: int) -> np.ndarray:
    """A read-only zero array of shape (n, n_views, dim) that takes no memory (stride 0).

    It stands in for ``StudyArrays.image`` so that the runner's helpers that read only its
    shape (head size, view count) serve the fine-tuning path; the pixels live in
    :class:`StudyImages`.
    """
    return np.broadcast_to(np.zeros((1, 1, 1), dtype=np.float32), (n, n_views, dim))


def study_arrays(config: RunConfig, *, progress: bool = True) -> tuple[StudyArrays, Manifest]:
    """Labels, splits and frozen text embeddings of the run's studies (manifest order), via
    the embedding path's :func:`~cxrfuse.training.data.build_study_arrays` (text only)."""
    from cxrfuse.data.manifest import read_manifest
    from cxrfuse.training.data import assemble, build_study_arrays

    manifest = read_manifest(config.data.manifest)
    if "text" in config.model.modalities:
        text_only = config.model_copy(
            update={"model": config.model.model_copy(update={"modalities": ["text"]})}
        )
        arrays = build_study_arrays(text_only, progress=progress)
    else:
        arrays = assemble(manifest, config.data.task)
        arrays.info = {"manifest": str(config.data.manifest),
                       "stores": {"image": None, "text": None}}
    return arrays, manifest


def _loader(
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


def _study_images(
    arrays: StudyArrays,
    rows: np.ndarray,
    slots: list[list[str | None]],
    size: int,
    augment: Augment | None = None,
    cache: tuple[DecodedImageCache, dict[str, int]] | None = None,
) -> StudyImages:
    text = None if arrays.text is None else arrays.text[rows]
    text_mask = None if arrays.text_mask is None else arrays.text_mask[rows]
    return StudyImages([slots[r] for r in rows], size, arrays.y[rows], text, text_mask, augment,
                       *(cache or (None, None)))  # fmt: skip


def embed_eval_views(
    config: RunConfig,
    encoder: ImageEncoder,
    manifest: Manifest,
    study_ids: Sequence[str],
    *,
    progress: bool = True,
) -> tuple[ImageEmbeddings, np.ndarray, np.ndarray]:
    """Store the fine-tuned encoder's embeddings of the given studies' images (val and test).

    The store folder is keyed by the fine-tuned weights, so ``cxrfuse evaluate`` (shuffle
    ablations) and :class:`~cxrfuse.training.runner.LoadedRun` read these studies like any
    embedding-path run. Returns the embeddings and the (n, V, D) views and (n, V) mask of
    ``study_ids`` in that order.
    """
    from cxrfuse.encoders.store import embed_images
    from cxrfuse.training.data import study_level_image

    wanted = set(map(str, study_ids))
    keep = manifest.df["study_id"].astype(str).isin(wanted).to_numpy()
    subset = manifest.replace(df=manifest.df[keep].reset_index(drop=True))
    gpu = torch.cuda.is_available() and config.training.accelerator in ("auto", "gpu", "cuda")
    embeddings = embed_images(
        subset,
        encoder.eval(),
        config.data.store,
        batch_size=config.image.embed_batch_size,
        num_workers=config.training.num_workers,
        progress=progress,
        device="cuda" if gpu else "cpu",
    )
    X, mask = study_level_image(embeddings, subset, config.image.views)
    pos = {sid: i for i, sid in enumerate(subset.df["study_id"].astype(str))}
    order = np.array([pos[str(s)] for s in study_ids], dtype=np.int64)
    return embeddings, X[order], mask[order]


@torch.no_grad()
def head_probabilities(
    head: FusionHead, output: str, inputs: dict[str, np.ndarray | None]
) -> np.ndarray:
    """Positive-class probabilities (n, n_labels) of a head on (n, V, D) views and text."""
    from cxrfuse.training.module import probabilities

    head = head.cpu().eval()
    tensors = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in inputs.items() if v is not None}
    n = len(next(iter(tensors.values())))
    out = [
        probabilities(head(**{k: v[s : s + EVAL_BATCH] for k, v in tensors.items()}), output)
        for s in range(0, n, EVAL_BATCH)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, head.n_outputs), np.float32)


def train_finetune(config: RunConfig, run_dir: Path, *, progress: bool = True) -> None:
    """Fine-tune the image encoder with the head and write the run directory.

    Same files as the embedding path (``/work/notes/rundir.md``) plus ``encoder.safetensors``;
    the val/test predictions come from the fine-tuned encoder's embeddings, which are stored
    (``run.json`` ``stores.image``) so that evaluation reads them like any other run.
    """
    import lightning.pytorch as pl
    import pandas as pd

    from cxrfuse.training.augment import build_augment
    from cxrfuse.training.module import METRICS
    from cxrfuse.training.runner import (
        build_sidecar,
        environment_info,
        fit_module,
        make_head,
        make_loss,
        missing_counts,
        now_iso,
        plot_training_curves,
        predictions_frame,
        training_rows,
        write_run_json,
    )
    from cxrfuse.training.sampling import weighted_sampler

    if config.training.mode != "finetune":
        raise ConfigError("train_finetune needs training.mode 'finetune'")
    started, start = now_iso(), time.perf_counter()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    arrays, manifest = study_arrays(config, progress=progress)
    side = config.image
    slots_all, width = view_slots(manifest, side.views)
    row_of = {sid: i for i, sid in enumerate(manifest.df["study_id"].astype(str))}
    slots = [slots_all[row_of[str(sid)]] for sid in arrays.study_ids]
    has_view = np.array([[p is not None for p in s] for s in slots], dtype=bool)
    if not has_view.any():
        raise DataError(f"{config.data.manifest}: no study of the task has an image path "
                        "(`cxrfuse phantoms` draws stand-ins)")
    encoder, frozen = build_finetune_encoder(config)
    arrays.image = shape_stand_in(len(arrays), width, encoder.feature_dim)
    arrays.image_mask = has_view
    model = FinetuneModel(encoder, make_head(config, arrays), frozen)
    size = model.encoder.spec.input_size

    train_rows = training_rows(config, arrays)
    val_rows, test_rows = arrays.indices("val"), arrays.indices("test")
    training = config.training
    augment = build_augment(config.finetune.augment, seed=config.seed)
    sampler = (weighted_sampler(arrays.y[train_rows], seed=config.seed)
               if config.data.sampler == "weighted" else None)
    cache = None
    if config.data.image_cache:  # decode once, read pixels from the cache in every epoch
        cache = manifest_image_cache(config.data.image_cache, manifest, size)
        fill_cache(cache[0], progress)
    train_loader = _loader(_study_images(arrays, train_rows, slots, size, augment, cache), config,
                           shuffle=True, sampler=sampler)
    val_loader = _loader(_study_images(arrays, val_rows, slots, size, cache=cache), config)
    module = FinetuneModule(
        model, make_loss(config, arrays.y[train_rows]), image_lr=config.finetune.image_lr,
        output=config.model.output, optimizer=training.optimizer, lr=training.lr,
        weight_decay=training.weight_decay, schedule=training.schedule,
        max_epochs=training.max_epochs,
    )
    fit = fit_module(module, train_loader, val_loader, training, run_dir / ".checkpoints",
                     progress=progress)

    eval_rows = np.concatenate([val_rows, test_rows])
    embeddings, views, view_mask = embed_eval_views(
        config, model.encoder, manifest, [str(s) for s in arrays.study_ids[eval_rows]],
        progress=progress)
    if not fit["is_global_zero"]:
        return
    probs = head_probabilities(model.head, config.model.output, {
        "image": views, "image_mask": view_mask,
        "text": None if arrays.text is None else arrays.text[eval_rows],
        "text_mask": None if arrays.text_mask is None else arrays.text_mask[eval_rows],
    })
    predictions_frame(arrays, eval_rows, probs).to_parquet(run_dir / "predictions.parquet",
                                                              index=False)
    history = pd.DataFrame(module.history, columns=["epoch", "split", *METRICS, "lr"])
    history = history.sort_values(["epoch", "split"], kind="stable").reset_index(drop=True)
    history.to_csv(run_dir / "epochs.csv", index=False)
    plot_training_curves(history, run_dir / "plots" / "training_curves.png", config.name)

    spec = model.encoder.spec
    arrays.info["image"] = {
        "encoder": side.encoder, "weights": side.weights, "views": side.views,
        "input_size": spec.input_size, "dim": int(model.encoder.feature_dim),
        "finetuned": True, "grayscale": bool(config.finetune.grayscale),
        "channels": spec.channels, "freeze": list(model.frozen), "file": ENCODER_FILE,
    }
    arrays.info["stores"] = {**arrays.info.get("stores", {}), "image": str(embeddings.path)}
    save_encoder(model.encoder, run_dir / ENCODER_FILE)
    from cxrfuse.training.artifacts import save_head

    save_head(model.head, run_dir, build_sidecar(config, arrays, model.head, run_dir))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info: dict[str, Any] = {
        "name": config.name, "status": "finished", "started": started, "seed": config.seed,
        "task": config.data.task, "labels": list(arrays.labels), "output": config.model.output,
        "modalities": list(config.model.modalities), "images": arrays.images_kind,
        "manifest": arrays.info.get("manifest"), "stores": arrays.info["stores"],
        "n": {"train": len(train_rows), "val": len(val_rows), "test": len(test_rows)},
        "n_train_before_subsample": len(arrays.indices("train")),
        "missing": missing_counts(arrays),
        "fit": {k: v for k, v in fit.items() if k != "is_global_zero"},
        "finetune": {
            "trainable_parameters": int(trainable),
            "frozen": list(model.frozen),
            "image_lr": config.finetune.image_lr,
            "augment": None if augment is None else repr(augment),
            "unreadable_views": sorted(module.unreadable)[:100],
            "n_unreadable_views": len(module.unreadable),
        },
        "environment": environment_info(),
        "finished": now_iso(),
        "timing_s": round(time.perf_counter() - start, 3),
    }
    write_run_json(run_dir / "run.json", info)


# ----------------------------------------------------------------------------- backbone comparison


def compare_backbones(
    experiment_dir: str | Path,
    metrics: Sequence[str] = ("auroc", "f1", "accuracy"),
    *,
    backbone_key: str = "image.encoder",
    task_key: str = "data.task",
) -> pd.DataFrame:
    """Seed 001's table: test metrics per task (rows) and backbone (columns) of a grid.

    Reads the experiment's ``summary.csv`` (finished runs; mean over seeds) and writes
    ``backbones.csv`` (long form: task, backbone, metric, mean, sd, n_seeds),
    ``backbones.md`` (one task x backbone table per metric, best backbone per task in bold) and
    ``plots/backbones_<metric>.png`` (grouped bars). Returns the long table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    folder = Path(experiment_dir)
    path = folder / "summary.csv"
    if not path.is_file():
        raise DataError(f"{path}: no such file; run `cxrfuse experiment` on the grid first")
    table = pd.read_csv(path)
    missing = [k for k in (backbone_key, task_key) if k not in table.columns]
    if missing:
        raise DataError(f"{path}: the grid has no {missing} column(s); compare_backbones needs a "
                        f"grid over {backbone_key} and {task_key}")
    done = table[table["status"] == "finished"]
    if done.empty:
        raise DataError(f"{path}: no finished run to compare")
    rows = []
    for (task, backbone), part in done.groupby([task_key, backbone_key], sort=False):
        for metric in metrics:
            values = part[f"test_{metric}"].astype(float)
            rows.append({"task": task, "backbone": backbone, "metric": metric,
                         "mean": values.mean(), "sd": values.std(ddof=1) if len(values) > 1 else 0.0,
                         "n_seeds": len(values)})
    long = pd.DataFrame(rows)
    long.to_csv(folder / "backbones.csv", index=False)
    lines = [f"# Backbone comparison: {folder.name}", "",
             (f"Test metrics (threshold 0.5) per task and backbone, mean over seeds; "
             f"{len(done)} finished run(s) of {len(table)}. Best backbone per task in bold."), ""]
    for metric in metrics:
        wide = long[long["metric"] == metric].pivot(index="task", columns="backbone", values="mean")
        shown = wide.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        for task, row in wide.iterrows():
            if row.notna().any():
                best = row.idxmax()
                shown.loc[task, best] = f"**{row[best]:.3f}**"
        lines += [f"## {metric}", "", shown.reset_index().to_markdown(index=False), ""]
        ax = wide.plot.bar(figsize=(max(6, 1.2 * len(wide)), 4), rot=30)
        ax.set_ylabel(f"test {metric}")
        ax.set_ylim(0, 1)
        ax.set_title(f"{folder.name}: test {metric} per task and backbone")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        (folder / "plots").mkdir(exist_ok=True)
        ax.figure.tight_layout()
        ax.figure.savefig(folder / "plots" / f"backbones_{metric}.png", dpi=110)
        plt.close(ax.figure)
    (folder / "backbones.md").write_text("\n".join(lines))
    return long
