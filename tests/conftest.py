"""Shared fixtures: the IU X-ray reports that torchxrayvision ships, ingested once per session."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfuse.data import Manifest
from cxrfuse.data.iu_xray import bundled_reports, ingest_iu_xray

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


CALLER_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
"""Variables a caller's shell may set (clusters without internet) that change cxrfuse's paths."""
KEPT_CXRFUSE_VARS = frozenset({"CXRFUSE_ONLINE",  # the opt-in for @pytest.mark.network tests
                               "CXRFUSE_SCREENSHOT"})  # where test_browser keeps its screenshot


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests do not depend on the caller's environment: the hub flags and ``CXRFUSE_*``
    variables are cleared, then the model hub is off (a test that needs a flag sets it)."""
    for var in CALLER_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("CXRFUSE_") and v not in KEPT_CXRFUSE_VARS]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: under pytest -n 2 on 2 cores more threads thrash."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def iu_manifest() -> Manifest:
    """All 3,955 bundled IU X-ray reports as a manifest (no images)."""
    manifest, _ = ingest_iu_xray()
    return manifest


@pytest.fixture(scope="session")
def iu_xml_bytes() -> dict[int, bytes]:
    """Raw XML of a few bundled reports, by report number (for building OpenI folders in tests)."""
    wanted = {f"ecgen-radiology/{n}.xml": n for n in (1, 2, 3, 4, 5, 6)}
    out: dict[int, bytes] = {}
    with tarfile.open(bundled_reports()) as archive:
        for member in archive.getmembers():
            if member.name in wanted:
                handle = archive.extractfile(member)
                assert handle is not None
                out[wanted[member.name]] = handle.read()
    return out


@pytest.fixture(scope="session")
def tiny_phantoms(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 IU studies (24 normal, 24 abnormal), split by patient, with 64-px phantom images."""
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits

    df = iu_manifest.df
    has_text = df["findings"].notna() & df["indication"].notna()
    abnormal = df["label_abnormal"]
    pick = np.concatenate([
        np.flatnonzero((abnormal == 0) & has_text)[:24],
        np.flatnonzero((abnormal == 1) & has_text)[:24],
    ])
    small = iu_manifest.replace(df=df.iloc[np.sort(pick)].reset_index(drop=True))
    small = assign_splits(small, (0.6, 0.2, 0.2), seed=0, task="normal-abnormal")
    out = tmp_path_factory.mktemp("phantoms")
    make_phantoms(small, out, PhantomConfig(size=64, seed=0), progress=False)
    return out / "manifest.parquet"


OFFLINE_CACHE_PACKAGES = ("encoders", "store")
"""Test folders whose tests run with empty model caches (nothing loaded from a user's cache)."""


@pytest.fixture(autouse=True)
def offline_caches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                   tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Under tests/encoders and tests/store: offline mode with empty torch / torchxrayvision /
    Hugging Face caches (the home folder it returns)."""
    if Path(str(request.node.path)).parent.name not in OFFLINE_CACHE_PACKAGES:
        return None
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(home))  # torchxrayvision caches under ~/.torchxrayvision
    return home


TINY_BERT_WORDS = [f"w{i}" for i in range(40)] + [
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


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer, 32-wide BERT with a small word vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + TINY_BERT_WORDS) + "\n")
    BertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(specials) + len(TINY_BERT_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder
