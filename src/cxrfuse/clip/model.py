"""The CLIP-style image-report model: two trainable towers, projections, InfoNCE.

``ClipModel`` holds an image encoder from the registry (``cxrfuse.encoders``), a Hugging Face
text transformer (any BERT-family model, or the transformer inside a sentence-transformers
folder), one linear projection per tower to a shared ``projection_dim`` space, L2
normalisation, and the InfoNCE temperature (fixed, or learned as ``log(1/T)`` and clamped to
``[min, max]``). :func:`info_nce` is the symmetric loss of Radford et al. (2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrfuse.encoders import UnknownEncoderError, get_text_encoder_spec
from cxrfuse.encoders.image import (
    DenseNetEncoder,
    EfficientNetLiteEncoder,
    ImageEncoder,
    ResNetEncoder,
    TorchvisionEfficientNetEncoder,
    VGGEncoder,
    ViTEncoder,
)
from cxrfuse.encoders.text import (
    load_hf_model,
    minilm_model_dir,
    pool_tokens,
    read_sentence_transformer_config,
)
from cxrfuse.problems import CxrfuseError


def info_nce(
    image: torch.Tensor, text: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised (B, D) embeddings: pair i is the positive of row i.

    ``(CE(image -> texts) + CE(text -> images)) / 2`` over the logits ``image @ text.T / T``.
    """
    logits = image.float() @ text.float().T / temperature
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class Temperature(nn.Module):
    """The InfoNCE temperature; learned as ``log(1/T)`` (clamped) or a fixed buffer."""

    def __init__(self, init: float = 0.1, learn: bool = False, low: float = 0.01,
                 high: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if not 0 < low <= init <= high:
            raise ValueError(f"temperature init {init} must lie in [{low}, {high}], low > 0")
        self.learn, self.low, self.high = learn, low, high
        value = torch.tensor(math.log(1.0 / init))
        if learn:
            self.log_inv = nn.Parameter(value)
        else:
            self.register_buffer("log_inv", value)

    def clamp_(self) -> None:
        """Keep the stored value inside the range (call after each optimiser step)."""
        with torch.no_grad():
            self.log_inv.clamp_(math.log(1.0 / self.high), math.log(1.0 / self.low))

    def forward(self) -> torch.Tensor:
        log_inv = self.log_inv.clamp(math.log(1.0 / self.high), math.log(1.0 / self.low))
        return torch.exp(-log_inv)


# ----------------------------------------------------------------------------- text tower


@dataclass(frozen=True)
class TextSource:
    """Where a text tower's tokenizer and transformer come from, and how it pools."""

    name: str
    source: str
    pooling: str


def resolve_text_source(name: str, pooling: str | None = None) -> TextSource:
    """A registered text encoder name, a hub id or a local folder -> a transformer source.

    Sentence-transformers folders (``minilm``) give their inner transformer and pooling; tf-idf
    has no transformer and is refused.
    """
    try:
        spec = get_text_encoder_spec(name)
    except UnknownEncoderError:
        spec = None
    if spec is None:
        local = Path(name).expanduser()
        if (local / "modules.json").is_file():
            st = read_sentence_transformer_config(local)
            return TextSource(name, str(st.transformer_dir), pooling or st.pooling)
        return TextSource(name, name, pooling or "cls")
    if spec.kind == "tfidf":
        raise CxrfuseError(
            f"text encoder {name!r} has no transformer to train contrastively; choose a "
            "BERT-family model (biobert, bert-base-uncased, ...), minilm, a hub id or a folder"
        )
    if spec.kind == "sentence-transformers":
        st = read_sentence_transformer_config(minilm_model_dir())
        return TextSource(name, str(st.transformer_dir), pooling or st.pooling)
    return TextSource(name, spec.source, pooling or spec.pooling or "cls")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """[token embeddings, layer 1, layer 2, ...] of a BERT-family transformer."""
    embeddings = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if embeddings is None or layers is None:
        raise CxrfuseError(
            f"cannot freeze blocks of {type(model).__name__}: expected .embeddings and "
            ".encoder.layer (BERT family); set text.freeze_blocks: 0"
        )
    return [embeddings, *layers]


# ----------------------------------------------------------------------------- image tower


def image_blocks(encoder: ImageEncoder) -> list[nn.Module]:
    """The image encoder's blocks in forward order; block 1 is the stem / patch embedding."""
    b = encoder.backbone
    if isinstance(encoder, ViTEncoder):
        return [_Group(b.conv_proj, _ParamHolder(b.class_token), _ParamHolder(
            b.encoder.pos_embedding)), *b.encoder.layers]
    if isinstance(encoder, ResNetEncoder):
        return [_Group(b.conv1, b.bn1), b.layer1, b.layer2, b.layer3, b.layer4]
    if isinstance(encoder, EfficientNetLiteEncoder):
        return [_Group(b._conv_stem, b._bn0), *b._blocks, _Group(b._conv_head, b._bn1)]
    if isinstance(encoder, DenseNetEncoder | VGGEncoder | TorchvisionEfficientNetEncoder):
        return list(b.features.children())
    raise CxrfuseError(f"image encoder {encoder.spec.name!r}: block freezing not supported")


class _ParamHolder(nn.Module):
    """A bare parameter as a module, so it can be frozen with the others of its block."""

    def __init__(self, param: nn.Parameter) -> None:
        super().__init__()
        self.param = param


class _Group(nn.Module):
    """Several modules that count as one block (not part of the model's own tree)."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.parts = list(modules)

    def parameters(self, recurse: bool = True):  # type: ignore[no-untyped-def,override]
        for part in self.parts:
            yield from part.parameters(recurse)

    def modules(self):  # type: ignore[no-untyped-def,override]
        for part in self.parts:
            yield from part.modules()


def freeze_first(blocks: list[nn.Module], n: int, what: str) -> list[nn.Module]:
    """Turn off gradients of the first ``n`` blocks; returns them (kept in eval mode)."""
    if n > len(blocks):
        raise CxrfuseError(f"{what}.freeze_blocks={n}, but the encoder has {len(blocks)} blocks")
    for block in blocks[:n]:
        for p in block.parameters():
            p.requires_grad_(False)
    return blocks[:n]


# ----------------------------------------------------------------------------- the model


class ClipModel(nn.Module):
    """Image tower + text tower + projections to a shared, L2-normalised space."""

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_model: nn.Module,
        *,
        pooling: str = "cls",
        projection_dim: int = 512,
        temperature: Temperature | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_model = text_model
        self.pooling = pooling
        self.image_projection = nn.Linear(image_encoder.feature_dim, projection_dim, bias=False)
        text_dim = int(text_model.config.hidden_size)
        self.text_projection = nn.Linear(text_dim, projection_dim, bias=False)
        self.temperature = temperature or Temperature()
        self._frozen: list[nn.Module] = []
        self.locked_image = self.locked_text = False

    @property
    def projection_dim(self) -> int:
        return self.image_projection.out_features

    def freeze(self, image_blocks_n: int | str = 0, text_blocks_n: int | str = 0) -> None:
        """Freeze the first blocks of each tower (their norm layers stay in eval mode).

        ``"all"`` locks a whole tower (LiT, Zhai et al. 2022): nothing in it trains, so its
        features can be computed once and fed to :meth:`encode_pair` instead of its inputs.
        """
        self.locked_image, self.locked_text = image_blocks_n == "all", text_blocks_n == "all"
        self._frozen = []
        for tower, n, blocks, what in (
            (self.image_encoder, image_blocks_n, image_blocks, "image"),
            (self.text_model, text_blocks_n, transformer_blocks, "text"),
        ):
            if n == "all":
                tower.requires_grad_(False)
                self._frozen.append(tower)
            elif n:
                self._frozen += freeze_first(blocks(tower), int(n), what)
        self.train(self.training)

    def train(self, mode: bool = True) -> ClipModel:
        super().train(mode)
        for block in self._frozen:
            for module in block.modules():
                module.eval()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) preprocessed images -> the image tower's (B, feature_dim) features."""
        return self.image_encoder(images)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      **extra: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Token ids -> the text tower's pooled (B, hidden_size) features."""
        hidden = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, **extra
        ).last_hidden_state
        return pool_tokens(hidden, attention_mask, self.pooling)  # type: ignore[arg-type]

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Image tower features -> (B, projection_dim), unit length."""
        return F.normalize(self.image_projection(features).float(), dim=-1)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """Text tower features -> (B, projection_dim), unit length."""
        return F.normalize(self.text_projection(features).float(), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) preprocessed images -> (B, projection_dim), unit length."""
        return self.project_image(self.image_features(images))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    **extra: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Token ids -> (B, projection_dim), unit length."""
        return self.project_text(self.text_features(input_ids, attention_mask, **extra))

    def encode_pair(
        self, images: torch.Tensor, texts: torch.Tensor | dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings of a batch of pairs.

        ``images`` are preprocessed images (B, C, H, W) or, from a locked tower, its
        precomputed features (B, feature_dim); ``texts`` are token tensors or, likewise,
        precomputed pooled features (B, hidden_size).
        """
        image = self.project_image(images) if images.ndim == 2 else self.encode_image(images)
        text = (self.project_text(texts) if isinstance(texts, torch.Tensor)
                else self.encode_text(**texts))  # fmt: skip
        return image, text

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor | dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The InfoNCE loss of a batch of pairs (inputs as :meth:`encode_pair` takes them)."""
        return info_nce(*self.encode_pair(images, texts), self.temperature())


def load_text_tower(source: TextSource, random_init: bool = False) -> tuple[Any, nn.Module]:
    """(tokenizer, transformer) of a text source (offline-safe, clear errors)."""
    tokenizer, model = load_hf_model(source.name, source.source, random_init=random_init)
    if not getattr(tokenizer, "is_fast", False):
        raise CxrfuseError(f"text encoder {source.name!r}: a fast tokenizer is needed")
    return tokenizer, model
