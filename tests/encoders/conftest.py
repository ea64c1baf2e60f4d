"""Encoder tests run offline: hub and download caches point at empty temporary folders
(``offline_caches`` in tests/conftest.py, autouse here and in tests/store)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

WORDS = [f"w{i}" for i in range(40)] + [
    "heart",
    "size",
    "normal",
    "lungs",
    "clear",
    "no",
    "pleural",
    "effusion",
    "pneumothorax",
    "focal",
    "consolidation",
    "mild",
    "cardiomegaly",
    "left",
    "right",
    "base",
    "opacity",
]





def _hub_reachable() -> bool:
    if os.environ.get("CXRFUSE_ONLINE") == "1":
        return True
    try:
        urllib.request.urlopen(
            urllib.request.Request("https://huggingface.co", method="HEAD"), timeout=3
        )
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """For @pytest.mark.network tests: skip offline, else lift the offline flag."""
    if not _hub_reachable():
        pytest.skip("needs a model hub (set CXRFUSE_ONLINE=1 or be online)")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants  # reads the flag at import: lift it there too

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, 32-wide BERT with a small word vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
    BertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(specials) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder
