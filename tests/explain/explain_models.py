"""Small image models for explanation tests: a known-answer region model and a tiny CNN."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from cxrfuse.data import Manifest
from cxrfuse.encoders import get_image_encoder_spec
from cxrfuse.encoders.image import ImageEncoder
from cxrfuse.fusion import build_head

LABELS = ["Cardiomegaly", "Pleural Effusion", "Nodule"]
INDICATIONS = ["cough", "chest pain", "shortness of breath", "fever and cough", "preoperative exam"]


def gray_spec(name: str, size: int, dim: int):
    """A registry spec re-targeted to a 1-channel model of ``size`` px, [0, 1] -> [-1, 1]."""
    return replace(
        get_image_encoder_spec("resnet18"), name=name, arch=name, family="test",
        feature_dim=dim, input_size=size, channels=1, normalisation=((0.5,), (0.5,)),
        grayscale_to_rgb="not-needed",
    )  # fmt: skip


class RegionGate(nn.Module):
    """Multiplies the image by a fixed 0/1 region: the CAM target layer."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) * self.region  # back to [0, 2], zero outside the region


class RegionEncoder(ImageEncoder):
    """Feature = mean image intensity inside a known region (the known-answer model)."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__(gray_spec("region", region.shape[0], 1), RegionGate(torch.from_numpy(region)), "none")

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class TinyCNN(ImageEncoder):
    """Three stride-2 conv blocks: an 8x8 feature grid at 64 px."""

    def __init__(self, size: int = 64, width: int = 32) -> None:
        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )  # fmt: skip

        backbone = nn.Sequential(block(1, width // 2), block(width // 2, width), block(width, width))
        super().__init__(gray_spec("tiny-cnn", size, width), backbone, "none")

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def image_head(dim: int, n_outputs: int):
    """A linear image-only head (frontal view)."""
    return build_head("concat-mlp", modalities=["image"], n_outputs=n_outputs, image_dim=dim,
                      view_fusion="frontal", n_views=1, hidden=[], dropout=0.0)  # fmt: skip


def label_manifest(n: int, seed: int = 0, prevalence: float = 0.4) -> Manifest:
    """``n`` studies with independent random labels from :data:`LABELS` and patient splits."""
    rng = np.random.default_rng(seed)
    splits = np.array(["train", "val", "test"])[rng.choice(3, size=n, p=[0.6, 0.1, 0.3])]
    records = [
        {
            "study_id": f"S{i:04d}", "patient_id": f"P{i:04d}", "split": str(splits[i]),
            "indication": str(rng.choice(INDICATIONS)), "views": [],
            "labels": {lab: float(rng.uniform() < prevalence) for lab in LABELS},
        }
        for i in range(n)
    ]  # fmt: skip
    return Manifest.from_records(records, dataset="iu-xray", labels=LABELS,
                                 tasks={"lesions": LABELS})


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) smooth random images in [-1, 1] (the TinyCNN/Region input range)."""
    rng = np.random.default_rng(seed)
    raw = gaussian_filter(rng.uniform(size=(n, size, size)), sigma=(0, 2, 2))
    raw = (raw - raw.min()) / (raw.max() - raw.min())
    return torch.from_numpy(raw * 2 - 1).float()[:, None]


