"""End-to-end fine-tuning: encoder surgery, freezing, the study dataset, a tiny run on phantoms."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfuse.data.manifest import Manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.encoders import create_image_encoder
from cxrfuse.encoders.image import to_model_input
from cxrfuse.fusion import build_head
from cxrfuse.problems import ConfigError
from cxrfuse.training.augment import build_augment
from cxrfuse.training.finetune import (
    FinetuneModel,
    StudyImages,
    adapt_to_grayscale,
    collate_studies,
    freeze_backbone,
    view_slots,
)

SIZE = 64


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One intra-op thread (2 shared cores) and offline model hubs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """36 one-patient studies, half with cardiomegaly; PA + lateral phantoms at 64 px."""
    splits = ["train"] * 20 + ["val"] * 8 + ["test"] * 8
    records = [
        {
            "study_id": f"s{i:02d}",
            "patient_id": f"p{i:02d}",
            "indication": "shortness of breath" if i % 2 else "routine check",
            "split": split,
            "labels": {"Cardiomegaly": i % 2},
            "views": [{"image_id": f"i{i}", "path": None, "view": "PA"}],
        }
        for i, split in enumerate(splits)
    ]
    manifest = Manifest.from_records(
        records, dataset="test", labels=["Cardiomegaly"], tasks={"cardiomegaly": ["Cardiomegaly"]}
    )
    out = tmp_path_factory.mktemp("phantoms")
    return make_phantoms(manifest, out, PhantomConfig(size=96), progress=False)


# ----------------------------------------------------------------------------- surgery


def test_grayscale_adaptation_equals_rgb_model_on_replicated_gray():
    torch.manual_seed(0)
    gray = (torch.rand(3, SIZE, SIZE) * 255).to(torch.uint8)
    encoder = create_image_encoder("efficientnet-lite0", input_size=SIZE)  # ImageNet, offline
    rgb_in = to_model_input(gray, encoder.spec)
    assert rgb_in.shape[1] == 3 and torch.equal(rgb_in[:, 0], rgb_in[:, 2])
    with torch.no_grad():
        rgb = encoder(rgb_in)
    adapt_to_grayscale(encoder)
    gray_in = to_model_input(gray, encoder.spec)
    assert gray_in.shape[1] == 1 and encoder.spec.channels == 1
    assert encoder.backbone._conv_stem.weight.shape[1] == 1
    with torch.no_grad():
        adapted = encoder(gray_in)
    assert rgb.abs().mean() > 0.05  # real features, not a degenerate all-zero comparison
    assert torch.allclose(adapted, rgb, atol=1e-4)
    # ResNet: ImageNet mean/std differ by channel, so the gray model is close, not equal
    resnet = create_image_encoder("resnet18", weights="none", input_size=SIZE).eval()
    adapt_to_grayscale(resnet)
    assert resnet.backbone.conv1.in_channels == 1
    assert resnet(to_model_input(gray, resnet.spec)).shape == (3, 512)


def test_frozen_modules_get_no_gradient_and_keep_weights_while_the_rest_change():
    torch.manual_seed(0)
    encoder = create_image_encoder("resnet18", weights="none", input_size=SIZE)
    frozen = freeze_backbone(encoder, ["conv1", "bn1", "layer1"])
    head = build_head("concat-mlp", modalities=["image"], n_outputs=1, image_dim=512,
                      view_fusion="mean", n_views=2)
    model = FinetuneModel(encoder, head, frozen).train()
    assert not encoder.backbone.layer1.training and encoder.backbone.layer2.training
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    groups = model.param_groups(image_lr=0.01, head_lr=0.01)
    optimiser = torch.optim.SGD(groups, lr=0.01)
    images = (torch.rand(4, 2, SIZE, SIZE) * 255).to(torch.uint8)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    loss = model(images, mask).pow(2).mean()
    loss.backward()
    assert encoder.backbone.conv1.weight.grad is None
    assert all(p.grad is None for p in encoder.backbone.layer1.parameters())
    assert encoder.backbone.fc.weight.grad is None  # the unused classifier is frozen too
    assert encoder.backbone.layer4[1].conv2.weight.grad.abs().sum() > 0
    optimiser.step()
    after = encoder.backbone.state_dict()
    for key, value in before.items():
        frozen_key = key.startswith(("conv1.", "bn1.", "layer1.", "fc."))
        same = torch.equal(after[key], value)
        if frozen_key:  # weights and batch-norm statistics
            assert same, key
    assert not torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    n_trainable = sum(p.numel() for g in groups if g["name"] == "encoder" for p in g["params"])
    assert n_trainable == sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def test_freeze_names_the_bad_prefix():
    encoder = create_image_encoder("resnet18", weights="none", input_size=SIZE)
    with pytest.raises(ConfigError, match=r"finetune.freeze: 'blocks' .*layer1"):
        freeze_backbone(encoder, ["conv1", "blocks"])


def test_views_go_through_the_shared_encoder_one_by_one():
    torch.manual_seed(0)
    encoder = create_image_encoder("efficientnet-lite0", input_size=SIZE).eval()
    head = build_head("concat-mlp", modalities=["image"], n_outputs=1, image_dim=1280,
                      view_fusion="concat", n_views=2)
    model = FinetuneModel(encoder, head).eval()
    images = (torch.rand(2, 2, SIZE, SIZE) * 255).to(torch.uint8)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    with torch.no_grad():
        views = model.embed_views(images, mask)
        single = encoder(to_model_input(images[1, :1], encoder.spec))
    assert views.shape == (2, 2, 1280)
    assert torch.allclose(views[1, 0], single[0], atol=1e-5)
    assert torch.equal(views[1, 1], torch.zeros(1280))  # a missing view stays zero


# ----------------------------------------------------------------------------- data


def test_view_slots_follow_the_store_layout(phantoms: Manifest):
    frontal, width = view_slots(phantoms, "frontal")
    assert width == 1 and frontal[0][0].endswith("s00_frontal.png")
    concat, width = view_slots(phantoms, "concat")
    assert width == 2 and concat[0][1].endswith("s00_lateral.png")
    with pytest.raises(ConfigError, match="image.views"):
        view_slots(phantoms, "max")


def test_study_dataset_augments_only_when_asked_and_flags_unreadable_views(
    phantoms: Manifest, tmp_path: Path
):
    slots, _ = view_slots(phantoms, "concat")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    slots = [list(s) for s in slots[:4]]
    slots[1][1] = str(bad)
    y = phantoms.label_matrix("cardiomegaly")[:4]
    text = np.arange(8, dtype=np.float32).reshape(4, 2)
    plain = StudyImages(slots, SIZE, y, text, np.ones(4, dtype=bool))
    a, b = plain[0], plain[0]
    assert a["images"].dtype == torch.uint8 and a["images"].shape == (2, SIZE, SIZE)
    assert torch.equal(a["images"], b["images"])  # no augmentation: deterministic
    assert plain[1]["image_mask"].tolist() == [True, False] and "broken.png" in plain[1]["errors"][0]
    aug = StudyImages(slots, SIZE, y, augment=build_augment({"hflip": 1.0}))
    assert torch.equal(aug[0]["images"][0], a["images"][0].flip(-1))
    batch = collate_studies([plain[i] for i in range(4)])
    assert batch["images"].shape == (4, 2, SIZE, SIZE) and batch["text"].shape == (4, 2)
    assert batch["y"].shape == (4, 1) and len(batch["errors"]) == 1
