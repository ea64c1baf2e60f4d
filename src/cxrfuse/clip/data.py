"""Image-report pairs for contrastive training: one image and one report text per study.

:func:`build_pairs` picks, per study of a split, one view (the first frontal one by default)
and the report text the :class:`~cxrfuse.text.TextConfig` builds; studies without an image
file or without text are left out and counted. :class:`PairDataset` decodes each image once
(when caching), centre-crops and resizes it to the encoder's input size as 8-bit grey, and
applies the encoder's channel layout and normalisation per item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cxrfuse.data.images import LEGACY_FIT, decode_resized
from cxrfuse.data.manifest import Manifest
from cxrfuse.problems import DataError
from cxrfuse.text import TextConfig, prepare_texts
from cxrfuse.vocab import FRONTAL_VIEWS


@dataclass
class Pairs:
    """The studies of one split that have both an image and report text."""

    split: str
    study_ids: list[str]
    patient_ids: list[str]
    image_paths: list[str]
    texts: list[str]
    labels: np.ndarray  # (n, L) float32, NaN unknown
    label_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.study_ids)

    def head(self, n: int) -> Pairs:
        """The first ``n`` pairs (for quick runs)."""
        return Pairs(self.split, self.study_ids[:n], self.patient_ids[:n], self.image_paths[:n],
                     self.texts[:n], self.labels[:n], self.label_names, dict(self.dropped))  # fmt: skip


def choose_view(views: Sequence[dict[str, Any]], mode: str = "frontal") -> str | None:
    """The image path of a study: the first frontal view with a file (else the first view)."""
    present = [v for v in views if v.get("path")]
    if not present:
        return None
    if mode == "frontal":
        frontal = [v for v in present if v.get("view") in FRONTAL_VIEWS]
        return str((frontal or present)[0]["path"])
    return str(present[0]["path"])


def build_pairs(
    manifest: Manifest,
    split: str,
    text_config: TextConfig,
    task: str | None = None,
    view: str = "frontal",
    texts: Sequence[str] | None = None,
) -> Pairs:
    """The (image, text, labels) pairs of ``split``; ``texts`` overrides the prepared text."""
    if manifest.df["split"].isna().all():
        raise DataError(
            "the manifest has no split column values: run `cxrfuse split MANIFEST` first"
        )
    labels = manifest.task_labels(task)
    all_texts = list(texts) if texts is not None else list(prepare_texts(manifest, text_config,
                                                                         task))  # fmt: skip
    df = manifest.df
    y = manifest.label_matrix(labels)
    keep = np.flatnonzero((df["split"] == split).to_numpy())
    out = Pairs(split, [], [], [], [], np.zeros((0, len(labels)), np.float32), labels,
                {"no_image": 0, "no_text": 0})  # fmt: skip
    rows = []
    for i in keep:
        path = choose_view(df["views"].iat[i], view)
        text = all_texts[i]
        if path is None:
            out.dropped["no_image"] += 1
            continue
        if not text.strip():
            out.dropped["no_text"] += 1
            continue
        out.study_ids.append(str(df["study_id"].iat[i]))
        out.patient_ids.append(str(df["patient_id"].iat[i]))
        out.image_paths.append(path)
        out.texts.append(text)
        rows.append(i)
    out.labels = y[rows] if rows else out.labels
    return out


def load_grey(path: str | Path, size: int) -> np.ndarray:
    """An image file as 8-bit grey, its central square resized to ``size``: the one decoder
    of :func:`cxrfuse.data.images.decode_resized` (16-bit scaled, pixel limit, crop fit as
    CLIP runs have always used)."""
    return decode_resized(path, size, LEGACY_FIT)


class PairDataset(Dataset):
    """(image tensor, token ids) per pair; images decoded once when ``cache``."""

    def __init__(
        self,
        pairs: Pairs,
        preprocess: Callable[[np.ndarray], torch.Tensor],
        size: int,
        tokens: dict[str, list[list[int]]],
        cache: bool = True,
        progress: bool = True,
    ) -> None:
        self.pairs, self.preprocess, self.size, self.tokens = pairs, preprocess, size, tokens
        self.images: list[np.ndarray] | None = None
        if cache:
            self.images = [
                load_grey(p, size)
                for p in tqdm(pairs.image_paths, desc=f"decode {pairs.split}", unit="img",
                              disable=not progress, leave=False)
            ]

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, i: int) -> torch.Tensor:
        grey = self.images[i] if self.images is not None else load_grey(
            self.pairs.image_paths[i], self.size)  # fmt: skip
        return self.preprocess(grey)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, list[int]]]:
        return self.image(i), {k: v[i] for k, v in self.tokens.items()}


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[dict[str, list], float]:
    """Token ids of every text (truncated to ``max_length``) and the fraction truncated."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    full = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    truncated = float(np.mean([len(ids) > max_length for ids in full])) if len(full) else 0.0
    keep = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                  "token_type_ids")}  # fmt: skip
    return keep, truncated


class LockedPairDataset(Dataset):
    """A :class:`PairDataset` whose locked towers' features were computed once.

    Items are (image features or image tensor, text features or token ids): a locked tower's
    precomputed feature row replaces its input, the other tower still gets its input.
    """

    def __init__(self, base: PairDataset, image_features: torch.Tensor | None,
                 text_features: torch.Tensor | None) -> None:  # fmt: skip
        self.base, self.image_features, self.text_features = base, image_features, text_features
        self.pairs = base.pairs

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | dict[str, list[int]]]:
        image = self.image_features[i] if self.image_features is not None else self.base.image(i)
        text = (self.text_features[i] if self.text_features is not None
                else {k: v[i] for k, v in self.base.tokens.items()})  # fmt: skip
        return image, text


def make_collate(
    tokenizer: Any,
) -> Callable[[list], tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]]:
    """Stack images (or features) and pad token ids per batch (or stack text features)."""

    def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        images = torch.stack([b[0] for b in batch])
        if isinstance(batch[0][1], torch.Tensor):
            return images, torch.stack([b[1] for b in batch])
        tokens = tokenizer.pad([b[1] for b in batch], return_tensors="pt")
        return images, dict(tokens)

    return collate
