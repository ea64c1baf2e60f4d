"""End-to-end fine-tuning: the image encoder is trained with the fusion head, text stays frozen.

``training.mode: finetune`` (seeds 001, 003, 004). Each study's views are decoded in
DataLoader workers (:func:`cxrfuse.encoders.decode.decode_resized`: 8-bit gray, central
square, resized), augmented on the training split (:mod:`cxrfuse.training.augment`, on [0, 1]
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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

from cxrfuse.data.manifest import FRONTAL_VIEWS, Manifest
from cxrfuse.encoders.decode import decode_resized
from cxrfuse.encoders.image import ImageEncoder, to_model_input
from cxrfuse.encoders.registry import Normalisation
from cxrfuse.encoders.store import LATERAL_VIEWS
from cxrfuse.fusion import FusionHead
from cxrfuse.problems import ConfigError, CxrfuseError, DataError

if TYPE_CHECKING:
    from cxrfuse.training.augment import Augment

ENCODER_FILE = "encoder.safetensors"
SIDECAR_FILE = "model.json"


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

    ``forward(images, image_mask, text, text_mask)``: ``images`` (B, V, S, S) uint8 gray
    pixels (or (B, V, C, S, S) float model input), ``image_mask`` (B, V) True where a view
    exists; only existing views go through the encoder. Returns the head's logits.
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

    def embed_views(self, images: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        """(B, V, S, S) uint8 or (B, V, C, S, S) float views -> (B, V, D) features."""
        b, v = images.shape[:2]
        mask = image_mask.bool()
        picked = images[mask]
        if picked.dtype == torch.uint8:
            picked = to_model_input(picked, self.encoder.spec)
        feats = self.encoder(picked) if picked.shape[0] else None
        dim = self.encoder.feature_dim
        dtype = feats.dtype if feats is not None else torch.float32
        out = torch.zeros((b, v, dim), dtype=dtype, device=images.device)
        if feats is not None:
            out[mask] = feats
        return out

    def forward(
        self,
        images: torch.Tensor,
        image_mask: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        views = self.embed_views(images, image_mask)
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

    Items are dicts with ``images`` (V, S, S) uint8, ``image_mask`` (V,), ``text`` (Dt,) and
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
    ) -> None:
        if len(slots) != len(labels) or (text is not None and len(text) != len(labels)):
            raise DataError("slots, labels and text vectors must have one row per study")
        self.slots = [list(s) for s in slots]
        self.size = int(size)
        self.labels = np.array(labels, dtype=np.float32)  # a writable copy
        self.text = None if text is None else np.array(text, dtype=np.float32)
        self.text_mask = None if text_mask is None else np.asarray(text_mask, dtype=bool)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.slots)

    def _load(self, path: str) -> tuple[torch.Tensor | None, str]:
        try:
            pixels = torch.from_numpy(decode_resized(path, self.size))
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
            "images": images,
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
