"""CheXbert (Smit et al. 2020) as a labeler: the public checkpoint, loaded without a model hub.

The checkpoint (``chexbert.pth``) is a ``torch.save`` of ``{"model_state_dict": ...}`` of the
authors' ``bert_labeler``: a BERT encoder (bert-base-uncased) whose [CLS] state feeds 14
linear heads, 4 classes (blank, positive, negative, uncertain) for the first 13 observations
of :data:`~cxrfuse.generation.labeler.CHEXPERT_LABELS` and 2 (blank, positive) for No
Finding; keys carry the ``module.`` prefix of ``nn.DataParallel``. The BERT configuration is
read from the tensor shapes (a ``config.json`` beside the checkpoint wins). The tokenizer is
bert-base-uncased's: a ``vocab.txt`` (or tokenizer files) beside the checkpoint, the folder
given as ``tokenizer``, or the local Hugging Face cache; nothing is downloaded, and a tokenizer
whose vocabulary size differs from the checkpoint's embedding table is refused.

Reports are prepared as CheXbert does: line breaks and runs of spaces collapsed, WordPiece
tokens, at most 512 with [CLS] and [SEP]; an empty report is [CLS] [SEP]. Loading uses
``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrfuse.generation.labeler import CHECKPOINT_HELP, CHEXPERT_LABELS
from cxrfuse.problems import DataError

CLASS_VALUES = (np.nan, 1.0, 0.0, -1.0)
"""Head class -> CheXpert value: blank, positive, negative, uncertain (No Finding: first two)."""
MAX_TOKENS = 512


def _torch() -> Any:
    import torch

    return torch


def _build_model(config: Any) -> Any:
    torch = _torch()
    from transformers import BertModel

    class BertLabeler(torch.nn.Module):
        """The authors' ``bert_labeler``: BERT, dropout, 13 four-class heads and a two-class one."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config)
            self.dropout = torch.nn.Dropout(0.1)
            hidden = config.hidden_size
            heads = [torch.nn.Linear(hidden, 4) for _ in range(13)] + [torch.nn.Linear(hidden, 2)]
            self.linear_heads = torch.nn.ModuleList(heads)

        def forward(self, ids: Any, mask: Any) -> list[Any]:
            cls = self.dropout(self.bert(ids, attention_mask=mask)[0][:, 0, :])
            return [head(cls) for head in self.linear_heads]

    return BertLabeler()


def _infer_config(state: dict[str, Any], path: Path, num_attention_heads: int | None) -> Any:
    from transformers import BertConfig

    beside = path.parent / "config.json"
    if beside.exists():
        return BertConfig.from_json_file(str(beside))
    try:
        vocab, hidden = state["bert.embeddings.word_embeddings.weight"].shape
        layers = {int(m.group(1)) for k in state if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))}
        intermediate = state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]
        positions = state["bert.embeddings.position_embeddings.weight"].shape[0]
        types = state["bert.embeddings.token_type_embeddings.weight"].shape[0]
    except KeyError as exc:
        raise DataError(f"{path}: not a CheXbert checkpoint (no tensor {exc.args[0]!r}); {CHECKPOINT_HELP}") from exc
    heads = num_attention_heads or max(1, hidden // 64)
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers),
                      num_attention_heads=heads, intermediate_size=intermediate,
                      max_position_embeddings=positions, type_vocab_size=types)


def _load_tokenizer(path: Path, tokenizer: str | Path | None, vocab_size: int) -> Any:
    """bert-base-uncased's tokenizer, checked against the checkpoint's vocabulary size (some
    transformers versions return a tokenizer of special tokens only when no vocab is found)."""
    tok = _find_tokenizer(path, tokenizer)
    if len(tok) != vocab_size:
        raise DataError(
            f"{path}: the tokenizer found ({getattr(tok, 'name_or_path', '?')}) has {len(tok)} tokens but "
            f"the checkpoint's vocabulary has {vocab_size}; put bert-base-uncased's vocab.txt beside the "
            "checkpoint or pass tokenizer=FOLDER"
        )
    return tok


def _find_tokenizer(path: Path, tokenizer: str | Path | None) -> Any:
    from transformers import BertTokenizer

    candidates: list[Path] = []
    if tokenizer is not None:
        t = Path(tokenizer)
        candidates.append(t.parent if t.is_file() else t)
    elif (path.parent / "vocab.txt").exists() or (path.parent / "tokenizer.json").exists():
        candidates.append(path.parent)
    for folder in candidates:
        if not folder.exists():
            raise DataError(f"{folder}: tokenizer folder not found (needs bert-base-uncased's vocab.txt)")
        return BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    try:
        return BertTokenizer.from_pretrained("bert-base-uncased", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: no tokenizer for CheXbert: put bert-base-uncased's vocab.txt beside the "
            "checkpoint, pass tokenizer=FOLDER, or have bert-base-uncased in the local Hugging Face cache"
        ) from exc


class CheXbertLabeler:
    """CheXbert labels for report texts: ``label(texts)`` -> (n, 14) of 1 / 0 / -1 / NaN."""

    name = "chexbert"

    def __init__(self, path: str | Path, *, tokenizer: str | Path | None = None,
                 device: str = "cpu", batch_size: int = 16,
                 num_attention_heads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: CheXbert checkpoint not found; {CHECKPOINT_HELP}")
        from cxrfuse.encoders.hub import WeightsUnavailableError, read_state_dict

        try:  # the encoders' one weight reader: tensors only, never pickled code
            state = read_state_dict("chexbert", self.path)
        except WeightsUnavailableError as exc:
            raise DataError(f"{self.path}: cannot read the CheXbert checkpoint ({exc.reason}); "
                            f"{CHECKPOINT_HELP}") from exc  # fmt: skip
        state = {k.removeprefix("module."): v for k, v in state.items()}
        config = _infer_config(state, self.path, num_attention_heads)
        self.model = _build_model(config)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise DataError(
                f"{self.path}: not a CheXbert checkpoint (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); {CHECKPOINT_HELP}"
            )
        self.model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.tokenizer = _load_tokenizer(self.path, tokenizer, config.vocab_size)

    def encode(self, text: str | None) -> list[int]:
        """Token ids of one report as CheXbert builds them."""
        tok = self.tokenizer
        clean = re.sub(r"\s+", " ", (text or "").replace("\n", " ")).strip()
        ids = tok.convert_tokens_to_ids(tok.tokenize(clean)) if clean else []
        ids = [tok.cls_token_id, *ids, tok.sep_token_id]
        return ids if len(ids) <= MAX_TOKENS else [*ids[: MAX_TOKENS - 1], tok.sep_token_id]

    def label(self, texts: Sequence[str]) -> np.ndarray:
        torch = _torch()
        out = np.full((len(texts), len(CHEXPERT_LABELS)), np.nan)
        encoded = [self.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = max(len(encoded[i]) for i in rows)
                ids = torch.zeros((len(rows), width), dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[r, : len(encoded[i])] = 1
                logits = self.model(ids.to(self.device), mask.to(self.device))
                for j, head in enumerate(logits):
                    classes = head.argmax(dim=1).cpu().numpy()
                    out[rows, j] = np.take(CLASS_VALUES, classes)
        return out


__all__ = ["CHECKPOINT_HELP", "CLASS_VALUES", "CheXbertLabeler"]
