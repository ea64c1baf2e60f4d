"""Pairs of a split as datasets, and frozen CLIP embeddings of images and report texts.

:func:`pair_dataset` builds the dataset of a split from a :class:`ClipConfig` (used by
training and by every analysis, so they read the same pairs); :func:`load_run` opens a trained
run directory and gives a :class:`ClipRun` whose ``embed_split`` returns unit-length image and
text embeddings, row i of both being study i of the split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrfuse.clip.checkpoint import load_clip_model
from cxrfuse.clip.data import (
    LockedPairDataset,
    PairDataset,
    Pairs,
    build_pairs,
    make_collate,
    tokenize,
)
from cxrfuse.clip.model import ClipModel
from cxrfuse.config import ClipConfig
from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.problems import DataError
from cxrfuse.rundir import RunDir


def split_pairs(
    config: ClipConfig,
    manifest: Manifest,
    split: str,
    text_sections: Sequence[str] | None = None,
) -> Pairs:
    """The (image path, report text, labels) pairs of ``split`` as the run's config defines them."""
    text_config = config.text.text_config()
    if text_sections is not None:
        text_config = text_config.model_copy(update={"sections": list(text_sections)})
    pairs = build_pairs(manifest, split, text_config, config.data.task, config.data.view)
    return pairs.head(config.data.limit) if config.data.limit is not None else pairs


def pair_dataset(
    config: ClipConfig,
    manifest: Manifest,
    split: str,
    model: ClipModel,
    tokenizer: Any,
    progress: bool = True,
    text_sections: Sequence[str] | None = None,
) -> tuple[PairDataset, float]:
    """The dataset of ``split`` and the fraction of its texts truncated at ``max_length``."""
    pairs = split_pairs(config, manifest, split, text_sections)
    tokens, truncated = tokenize(tokenizer, pairs.texts, config.text.max_length)
    encoder = model.image_encoder
    dataset = PairDataset(pairs, encoder.preprocess, encoder.spec.input_size, tokens,
                          cache=config.data.cache_images, progress=progress)  # fmt: skip
    return dataset, truncated


@torch.no_grad()
def embed_dataset(
    model: ClipModel, dataset: PairDataset, tokenizer: Any, batch_size: int = 64,
    progress: bool = True, device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(image, text) embeddings, float32 (N, D) each, unit length, in dataset order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=make_collate(tokenizer))
    images, texts = [], []
    for batch_images, tokens in tqdm(loader, desc=f"embed {dataset.pairs.split}", unit="batch",
                                     disable=not progress, leave=False):  # fmt: skip
        images.append(model.encode_image(batch_images.to(device)).cpu())
        texts.append(model.encode_text(**{k: v.to(device) for k, v in tokens.items()}).cpu())
    dim = model.projection_dim
    return (torch.cat(images) if images else torch.zeros(0, dim),
            torch.cat(texts) if texts else torch.zeros(0, dim))  # fmt: skip


@torch.no_grad()
def lock_towers(
    model: ClipModel, dataset: PairDataset, tokenizer: Any, batch_size: int = 64,
    progress: bool = True, device: str | torch.device = "cpu",
) -> PairDataset | LockedPairDataset:  # fmt: skip
    """Compute the features of the model's locked towers once; the dataset itself if none is.

    Runs the locked tower(s) in eval mode over the whole dataset, so that training steps only
    run the projections (and any tower still training).
    """
    if not (model.locked_image or model.locked_text):
        return dataset
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=make_collate(tokenizer))
    images, texts = [], []
    for batch_images, tokens in tqdm(loader, desc=f"locked features {dataset.pairs.split}",
                                     unit="batch", disable=not progress, leave=False):  # fmt: skip
        if model.locked_image:
            images.append(model.image_features(batch_images.to(device)).float().cpu())
        if model.locked_text:
            tokens = {k: v.to(device) for k, v in tokens.items()}
            texts.append(model.text_features(**tokens).float().cpu())
    model.train(was_training)
    return LockedPairDataset(dataset, torch.cat(images) if images else None,
                             torch.cat(texts) if texts else None)  # fmt: skip


@torch.no_grad()
def embed_texts(model: ClipModel, tokenizer: Any, texts: Sequence[str], max_length: int,
                batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    """Unit-length embeddings of free texts (prompts), (N, D)."""
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), truncation=True,
                        max_length=max_length, padding=True, return_tensors="pt")  # fmt: skip
        keep = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                      "token_type_ids")}  # fmt: skip
        out.append(model.encode_text(**keep))
    return torch.cat(out)


@dataclass
class ClipRun:
    """A trained CLIP run opened for analysis."""

    run_dir: Path
    config: ClipConfig
    model: ClipModel
    tokenizer: Any
    sidecar: dict[str, Any]
    manifest: Manifest
    progress: bool = True
    _cache: dict[tuple, tuple] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.manifest.images == "phantom"

    def embed_split(
        self, split: str, text_sections: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, Pairs]:
        """(image, text) embeddings and the pairs of ``split`` (cached per split and text)."""
        key = (split, tuple(text_sections) if text_sections else None)
        if key not in self._cache:
            dataset, _ = pair_dataset(self.config, self.manifest, split, self.model,
                                      self.tokenizer, self.progress, text_sections)  # fmt: skip
            if not len(dataset):
                raise DataError(f"{self.config.data.manifest}: no {split} study has both an "
                                "image and report text")  # fmt: skip
            image, text = embed_dataset(self.model, dataset, self.tokenizer,
                                        self.config.training.batch_size, self.progress)  # fmt: skip
            self._cache[key] = (image, text, dataset.pairs)
        return self._cache[key]

    def pairs(self, split: str) -> Pairs:
        """The pairs of ``split`` (texts, labels, image paths) without embedding anything."""
        return split_pairs(self.config, self.manifest, split)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return embed_texts(self.model, self.tokenizer, texts, self.config.text.max_length)


def load_run(run_dir: str | Path, progress: bool = True) -> ClipRun:
    """Open a CLIP run directory: its config, rebuilt model and manifest."""
    run = RunDir(run_dir)
    run.require(("clip",), action="this CLIP analysis")
    config = run.clip_config()
    model, tokenizer, sidecar = load_clip_model(run)
    manifest = read_manifest(config.data.manifest)
    return ClipRun(run.path, config, model, tokenizer, sidecar, manifest, progress)


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float32)
