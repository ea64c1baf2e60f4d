"""Explanation tests: one torch thread, offline caches, shared small phantom data."""

from __future__ import annotations

import pytest
import torch
from explain_models import LABELS, TinyCNN, image_head, label_manifest
from PIL import Image

from cxrfuse.data import Manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No hub downloads: empty caches and offline flags."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture(scope="session")
def phantoms_64(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """300 labelled studies drawn as 64-px frontal phantoms (synthetic, with lesion masks)."""
    out = tmp_path_factory.mktemp("phantoms64")
    config = PhantomConfig(size=64, lateral=False)
    return make_phantoms(label_manifest(300, seed=0), out, config, progress=False)


@pytest.fixture(scope="session")
def phantoms_two_views(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """12 studies as 64-px frontal + lateral phantoms."""
    out = tmp_path_factory.mktemp("phantoms2v")
    config = PhantomConfig(size=64, lateral=True)
    return make_phantoms(label_manifest(12, seed=1), out, config, progress=False)


def train_tiny_cnn(manifest: Manifest, epochs: int = 15, seed: int = 0):
    """A TinyCNN + linear head trained end to end on the train split (BCE, Adam)."""
    torch.manual_seed(seed)
    encoder, head = TinyCNN(64, 32), image_head(32, len(LABELS))
    train = manifest.df[manifest.df["split"] == "train"]
    x = torch.stack([encoder.preprocess(Image.open(v[0]["path"])) for v in train["views"]])
    y = torch.from_numpy(manifest.label_matrix()[train.index.to_numpy()])
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        encoder.train()
        head.train()
        for idx in torch.randperm(len(x), generator=generator).split(32):
            logits = head(encoder(x[idx])[:, None], torch.ones(len(idx), 1, dtype=torch.bool))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return encoder.eval(), head.eval()


@pytest.fixture(scope="session")
def trained_tiny(phantoms_64: Manifest):
    """(encoder, head) trained briefly on the 64-px phantoms (a few seconds on one core)."""
    torch.set_num_threads(1)
    return train_tiny_cnn(phantoms_64)
