"""Text encoders: pooling and chunking on a tiny local BERT, MiniLM offline, tf-idf fitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfuse.encoders import WeightsUnavailableError, create_text_encoder
from cxrfuse.encoders.text import (
    EncoderNotFittedError,
    HFTextEncoder,
    minilm_model_dir,
)
from cxrfuse.encoders.tfidf import TfidfEncoder
from cxrfuse.problems import CxrfuseError, DataError

REPORTS = [
    "heart size normal lungs clear no pleural effusion",
    "mild cardiomegaly no focal consolidation",
    "left base opacity no pneumothorax",
    "right pleural effusion",
    "",
]


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: Path) -> HFTextEncoder:
    return HFTextEncoder(tiny_bert_dir, name="tiny", pooling="cls", max_length=10, chunk_overlap=2)


def test_hf_encoder_shapes_and_pooling(tiny_bert_dir: Path, tiny: HFTextEncoder) -> None:
    cls = tiny.encode(REPORTS)
    assert cls.shape == (len(REPORTS), 32) and cls.dtype == np.float32 and tiny.dim == 32
    mean = HFTextEncoder(tiny_bert_dir, pooling="mean", max_length=10).encode(REPORTS)
    assert not np.allclose(cls, mean)

    enc = tiny.tokenizer(REPORTS[1], return_tensors="pt")
    with torch.no_grad():
        hidden = tiny.model(**enc).last_hidden_state[0]
    np.testing.assert_allclose(cls[1], hidden[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(mean[1], hidden.mean(0).numpy(), atol=1e-5)


def test_batch_size_does_not_change_embeddings(tiny: HFTextEncoder) -> None:
    np.testing.assert_allclose(
        tiny.encode(REPORTS, batch_size=1), tiny.encode(REPORTS, batch_size=8), atol=1e-5
    )
    assert tiny.encode([]).shape == (0, 32)


def test_long_text_is_chunked_not_truncated(tiny: HFTextEncoder) -> None:
    words = [f"w{i}" for i in range(30)]
    window, step = 8, 6  # max_length 10 less [CLS]/[SEP]; overlap 2
    starts = range(0, len(words) - 2, step)
    chunks = [" ".join(words[s : s + window]) for s in starts]
    assert chunks[-1].endswith("w29") and len(chunks) == 5
    long = tiny.encode([" ".join(words)])[0]
    np.testing.assert_allclose(long, tiny.encode(chunks).mean(axis=0), atol=1e-5)
    assert not np.allclose(long, tiny.encode([chunks[0]])[0], atol=1e-3)


def test_create_by_name_with_local_weights(tiny_bert_dir: Path, tiny: HFTextEncoder) -> None:
    encoder = create_text_encoder("bert-base-uncased", weights=tiny_bert_dir, pooling="mean")
    assert encoder.name == "bert-base-uncased" and encoder.pooling == "mean"
    assert encoder.max_length == 64  # clipped to the model's position embeddings


def test_random_init_needs_a_config(tiny_bert_dir: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="bert-base-uncased"):
        create_text_encoder("bert-base-uncased", weights="none")
    with pytest.raises(WeightsUnavailableError, match="not a model directory"):
        HFTextEncoder(tiny_bert_dir.parent, name="empty")


def test_fingerprint_tracks_weights_and_config(tiny_bert_dir: Path, tiny: HFTextEncoder) -> None:
    same = HFTextEncoder(tiny_bert_dir, name="tiny", pooling="cls", max_length=10, chunk_overlap=2)
    assert same.fingerprint() == tiny.fingerprint() == tiny.fingerprint()
    other_pooling = HFTextEncoder(tiny_bert_dir, pooling="mean", max_length=10, chunk_overlap=2)
    assert other_pooling.fingerprint() != tiny.fingerprint()
    before = same.fingerprint()
    with torch.no_grad():
        same.model.embeddings.word_embeddings.weight[5] += 1.0
    assert same.fingerprint() != before


def test_minilm_offline() -> None:
    encoder = create_text_encoder("minilm")
    assert encoder.dim == 384 and encoder.pooling == "mean" and encoder.max_length == 256
    emb = encoder.encode(REPORTS[:4])
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.3  # both normal-ish cardiac findings vs random vectors ~0

    long_text = " ".join(["the lungs are clear without focal consolidation."] * 40)
    assert len(encoder.tokenizer(long_text)["input_ids"]) > 256
    first_window = encoder.tokenizer.decode(encoder.tokenizer(long_text)["input_ids"][1:200])
    long_emb, head_emb = encoder.encode([long_text, first_window])
    assert abs(np.linalg.norm(long_emb) - 1) < 1e-5 and not np.allclose(
        long_emb, head_emb, atol=1e-4
    )

    random = create_text_encoder("minilm", weights="none")
    assert not np.allclose(random.encode(REPORTS[:1]), emb[:1], atol=1e-2)


def test_minilm_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_model_dir()), device="cpu")
    ours = create_text_encoder("minilm").encode(REPORTS[:4])
    np.testing.assert_allclose(ours, reference.encode(REPORTS[:4]), atol=1e-5)


def test_tfidf_fit_then_encode() -> None:
    encoder = TfidfEncoder(svd_dim=3)
    with pytest.raises(EncoderNotFittedError, match="fit") as err:
        encoder.encode(REPORTS)
    assert isinstance(err.value, CxrfuseError)
    with pytest.raises(EncoderNotFittedError):
        encoder.fingerprint()
    emb = encoder.fit(REPORTS[:4]).encode(REPORTS + ["unseen words only"])
    assert emb.shape == (6, 3) and emb.dtype == np.float32 and encoder.dim == 3
    assert np.all(emb[-1] == 0) and np.all(emb[-2] == 0)
    first = encoder.fingerprint()
    assert TfidfEncoder(svd_dim=3).fit(REPORTS[:4]).fingerprint() == first
    assert encoder.fit(REPORTS[1:4] + ["heart"]).fingerprint() != first


def test_tfidf_without_svd_and_too_large_svd() -> None:
    sparse = TfidfEncoder(svd_dim=None).fit(REPORTS)
    assert sparse.encode(REPORTS).shape == (len(REPORTS), sparse.dim) and sparse.dim > 10
    with pytest.raises(DataError, match="svd_dim=256 .* give a smaller svd_dim"):
        TfidfEncoder().fit(REPORTS)


@pytest.mark.network
def test_biobert_from_the_hub(online: None) -> None:
    encoder = create_text_encoder("biobert", max_length=64)
    emb = encoder.encode(REPORTS[:2])
    assert emb.shape == (2, 768) and np.isfinite(emb).all()
