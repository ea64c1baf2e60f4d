"""InfoNCE, the temperature, block freezing and retrieval ranks, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrfuse.clip.model import Temperature, freeze_first, image_blocks, info_nce
from cxrfuse.clip.retrieval import pair_ranks, recall_at_k
from cxrfuse.clip.train import chunked_info_nce, warmup_cosine
from cxrfuse.encoders import create_image_encoder


def _hand_info_nce(image: np.ndarray, text: np.ndarray, t: float) -> float:
    """Cross-entropy of each row and each column of the similarity matrix, by formula."""
    s = image @ text.T / t
    rows = [-(s[i, i] - math.log(np.exp(s[i]).sum())) for i in range(len(s))]
    cols = [-(s[i, i] - math.log(np.exp(s[:, i]).sum())) for i in range(len(s))]
    return (np.mean(rows) + np.mean(cols)) / 2


def test_info_nce_equals_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    expected = _hand_info_nce(image.double().numpy(), text.double().numpy(), 0.1)
    assert float(info_nce(image, text, 0.1)) == pytest.approx(expected, rel=1e-5)


def test_info_nce_is_symmetric_and_rewards_alignment() -> None:
    g = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    text = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    assert float(info_nce(image, text, 0.1)) == pytest.approx(float(info_nce(text, image, 0.1)))
    aligned = float(info_nce(image, image, 0.1))
    assert aligned < float(info_nce(image, text, 0.1))
    assert aligned < math.log(6)  # better than chance (uniform logits give log N)
    # permuting the pairs together leaves the loss unchanged
    perm = torch.randperm(6, generator=g)
    assert float(info_nce(image[perm], text[perm], 0.1)) == pytest.approx(
        float(info_nce(image, text, 0.1)), rel=1e-6
    )


def test_chunked_loss_is_the_mean_of_chunk_losses() -> None:
    g = torch.Generator().manual_seed(2)
    image = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    text = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    halves = (float(info_nce(image[:4], text[:4], 0.1)) + float(info_nce(image[4:], text[4:], 0.1)))
    assert chunked_info_nce(image, text, 0.1, 4) == pytest.approx(halves / 2)


def test_fixed_temperature_is_a_buffer() -> None:
    t = Temperature(0.1, learn=False)
    assert not list(t.parameters())
    assert float(t().detach()) == pytest.approx(0.1)


def test_learned_temperature_stays_in_range() -> None:
    t = Temperature(0.1, learn=True, low=0.05, high=0.5)
    opt = torch.optim.SGD(t.parameters(), lr=100.0)
    for direction in (1.0, -1.0):  # push hard towards 0 and towards infinity
        for _ in range(20):
            opt.zero_grad()
            (direction * t.log_inv).backward()
            opt.step()
            t.clamp_()
            assert 0.05 - 1e-6 <= float(t().detach()) <= 0.5 + 1e-6
        assert float(t().detach()) == pytest.approx(0.5 if direction > 0 else 0.05, rel=1e-5)
    with pytest.raises(ValueError):
        Temperature(0.001, low=0.01)


def test_ranks_and_recall_by_hand() -> None:
    s = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.0, 0.0, 0.0]])
    i2t, t2i = pair_ranks(s)
    assert i2t.tolist() == [0, 1, 2]  # row 2: a three-way tie counts against the model
    assert t2i.tolist() == [0, 0, 2]
    r = recall_at_k(s, (1, 2))
    assert r["image_to_text"] == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
    assert r["chance"] == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_warmup_then_cosine() -> None:
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0, abs=1e-9)


def test_freezing_the_first_blocks_of_an_image_encoder() -> None:
    encoder = create_image_encoder("efficientnet-lite0", weights="none", input_size=64)
    blocks = image_blocks(encoder)
    assert len(blocks) == 18  # stem, 16 MBConv blocks, head conv
    freeze_first(blocks, 3, "image")
    stem = encoder.backbone._conv_stem.weight
    assert not stem.requires_grad and not encoder.backbone._blocks[1]._depthwise_conv.weight.requires_grad
    assert encoder.backbone._blocks[2]._depthwise_conv.weight.requires_grad
    with pytest.raises(Exception, match="freeze_blocks"):
        freeze_first(blocks, 99, "image")


def test_locked_tower_features_give_the_same_embeddings() -> None:
    """encode_pair on precomputed tower features equals encoding the inputs."""
    from cxrfuse.clip.model import ClipModel, load_text_tower, resolve_text_source

    torch.manual_seed(0)
    image = create_image_encoder("efficientnet-lite0", weights="none", input_size=32)
    tokenizer, text_model = load_text_tower(resolve_text_source("minilm"))
    model = ClipModel(image, text_model, pooling="mean", projection_dim=8)
    model.freeze("all", "all")
    assert model.locked_image and model.locked_text
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.text_model.parameters())
    assert model.image_projection.weight.requires_grad
    model.train()
    assert not model.image_encoder.training and not model.text_model.training
    images = torch.randn(3, 3, 32, 32)
    tokens = dict(tokenizer(["no effusion.", "cardiomegaly.", "clear lungs"], padding=True,
                            return_tensors="pt"))  # fmt: skip
    with torch.no_grad():
        direct = model.encode_pair(images, tokens)
        features = model.image_features(images), model.text_features(**tokens)
        locked = model.encode_pair(*features)
        loss = float(model(*features))
    for a, b in zip(direct, locked):
        assert torch.allclose(a, b, atol=1e-6)
    assert loss == pytest.approx(float(info_nce(*direct, model.temperature())))


def test_label_ceiling_is_the_expected_recall_of_the_label_oracle() -> None:
    """Studies 0 and 1 share a label set (one tie each), 2 and 3 are unique; NaN = absent."""
    from cxrfuse.clip.retrieval import label_ceiling

    labels = np.array([[1, 0], [1, np.nan], [0, 1], [np.nan, 0]])
    out = label_ceiling(labels, ks=[1, 2])
    assert out["image_to_text"] == out["text_to_image"] == {1: 0.75, 2: 1.0}
    assert out["chance"] == {1: 0.25, 2: 0.5} and out["n"] == 4
    # the sampled oracle agrees with the exact expectation
    rng = np.random.default_rng(0)
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    hits = []
    for _ in range(2000):
        noise = rng.random((4, 4)) * 1e-3
        hits.append(recall_at_k(torch.tensor(-np.abs(y[:, None] - y[None]).sum(-1) + noise),
                                [1])["image_to_text"][1])  # fmt: skip
    assert np.mean(hits) == pytest.approx(0.75, abs=0.02)
