"""CAMs through the fused classifier: known answer, every method, registered encoders, hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain_models import RegionEncoder, TinyCNN, image_head, smooth_images
from torch import nn

from cxrfuse.encoders import create_image_encoder
from cxrfuse.explain.gradcam import (
    CAM_METHODS,
    FusedImageClassifier,
    cam_target_layer,
    compute_cam,
    label_target,
    non_inplace_relu,
)
from cxrfuse.explain.scoring import mass_inside, pointing_hit, random_maps
from cxrfuse.fusion import build_head
from cxrfuse.problems import CxrfuseError


def _region(size: int = 32) -> np.ndarray:
    region = np.zeros((size, size), dtype=bool)
    region[4:12, 18:26] = True  # 1/16 of the image, away from the centre
    return region


def test_known_answer_model_points_into_its_region() -> None:
    """logit = mean intensity inside a fixed region: Grad-CAM must point there, random maps
    only as often as the region's area."""
    region = _region()
    encoder = RegionEncoder(region)
    head = image_head(1, 1)
    with torch.no_grad():
        head.mlp[0].weight.fill_(1.0)
        head.mlp[0].bias.zero_()
    model = FusedImageClassifier(encoder, head)
    x = smooth_images(24, 32)
    cams = compute_cam(model, x, label_target(["region"], "region", "sigmoid"), "gradcam")
    hits = [pointing_hit(c, region) for c in cams.maps]
    rng = np.random.default_rng(0)
    rand = random_maps(cams.grid, 32, 200, rng)
    random_rate = np.mean([pointing_hit(r, region) for r in rand])
    assert np.mean(hits) == 1.0
    assert random_rate < 0.2  # about the area share, 1/16
    assert min(mass_inside(c, region) for c in cams.maps) > 0.99
    assert np.mean([mass_inside(r, region) for r in rand]) < 0.15


def _fused(encoder, text_dim: int = 8, view_fusion: str = "mean"):
    torch.manual_seed(0)
    head = build_head("concat-mlp", modalities=["image", "text"], n_outputs=2,
                      image_dim=encoder.feature_dim, text_dim=text_dim, view_fusion=view_fusion,
                      n_views=2, hidden=[16], dropout=0.0).eval()  # fmt: skip
    return head


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_runs_through_the_fused_head(method: str) -> None:
    encoder = TinyCNN(32, 16).eval()
    head = _fused(encoder)
    context = torch.randn(1, 2, 16)
    model = FusedImageClassifier(encoder, head, views=context,
                                 view_mask=torch.tensor([[False, True]]), slot=0,
                                 text=torch.randn(1, 8), text_mask=torch.tensor([True]))  # fmt: skip
    options = {"batch_size": 8} if method in ("scorecam", "ablationcam") else {}
    out = compute_cam(model, smooth_images(2, 32), label_target(["a", "b"], "b", "sigmoid"),
                      method, **options)  # fmt: skip
    assert out.maps.shape == (2, 32, 32) and out.grid == (4, 4)
    assert np.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 1 + 1e-6
    assert not model.cam_layer._forward_hooks  # released by the context manager


def test_fused_model_places_the_view_in_its_slot_and_holds_the_report() -> None:
    encoder = TinyCNN(32, 16).eval()
    head = _fused(encoder, view_fusion="concat")
    x = smooth_images(3, 32)
    context, text = torch.randn(1, 2, 16), torch.randn(1, 8)
    model = FusedImageClassifier(encoder, head, views=context,
                                 view_mask=torch.tensor([[True, False]]), slot=1, text=text,
                                 text_mask=torch.tensor([True]))  # fmt: skip
    with torch.no_grad():
        features = encoder(x)
        image = torch.stack([context[0, 0].expand(3, -1), features], dim=1)
        expected = head(image, torch.ones(3, 2, dtype=torch.bool), text.expand(3, -1),
                        torch.ones(3, dtype=torch.bool))  # fmt: skip
        np.testing.assert_allclose(model(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        other = FusedImageClassifier(encoder, head, views=context, slot=1, text=-text)
        assert not torch.allclose(other(x), model(x))  # the report is an input of the head
    assert not text.requires_grad  # held fixed: only the image branch is differentiated


@pytest.mark.parametrize(
    ("name", "size"),
    [("xrv-densenet121-nih", 64), ("resnet18", 64), ("efficientnet-lite0", 64), ("vit-b-16", 32)],
)
def test_registered_encoders_give_nonzero_maps(name: str, size: int) -> None:
    torch.manual_seed(0)
    encoder = create_image_encoder(name, weights="none", input_size=size)
    head = _fused(encoder)
    model = FusedImageClassifier(encoder, head, text=torch.randn(1, 8))
    inplace_before = [m.inplace for m in encoder.modules() if isinstance(m, nn.ReLU)]
    x = torch.randn(1, encoder.spec.channels, size, size)
    out = compute_cam(model, x, label_target(["a", "b"], "a", "sigmoid"), "gradcam")
    against = compute_cam(model, x, lambda logits: -logits[..., 0], "gradcam")  # evidence against
    assert out.maps.shape == (1, size, size)
    assert max(out.maps.max(), against.maps.max()) > 0.5  # gradients reach the hooked map
    assert [m.inplace for m in encoder.modules() if isinstance(m, nn.ReLU)] == inplace_before
    assert not model.cam_layer._forward_hooks and not cam_target_layer(encoder)._forward_hooks


def test_vit_is_hooked_where_patch_tokens_have_gradients() -> None:
    """At the last block's output only the class token gets a gradient: that map is empty."""
    from pytorch_grad_cam import GradCAM

    encoder = create_image_encoder("vit-b-16", weights="none", input_size=32)
    target = label_target(["a"], "a", "sigmoid")
    peaks = []
    for seed in range(4):  # a random head and image can leave every weighted token negative
        torch.manual_seed(seed)
        model = FusedImageClassifier(encoder, image_head(768, 1))
        x = torch.randn(1, 3, 32, 32)
        with GradCAM(model, [encoder.target_layer], reshape_transform=encoder.tokens_to_map) as cam:
            assert cam(x, [target]).max() == 0
        peaks.append(float(compute_cam(model, x, target).maps.max()))
    assert sum(p > 0.5 for p in peaks) >= 2, peaks


def test_non_inplace_relu_restores_the_flags() -> None:
    net = nn.Sequential(nn.ReLU(inplace=True), nn.ReLU(), nn.ReLU6(inplace=True))
    with non_inplace_relu(net):
        assert [m.inplace for m in net] == [False, False, False]
    assert [m.inplace for m in net] == [True, False, True]


def test_clear_errors() -> None:
    encoder = TinyCNN(32, 16)
    text_only = build_head("concat-mlp", modalities=["text"], n_outputs=1, text_dim=8)
    with pytest.raises(CxrfuseError, match="reads no images"):
        FusedImageClassifier(encoder, text_only)
    with pytest.raises(CxrfuseError, match="text embedding"):
        FusedImageClassifier(encoder, _fused(encoder))
    with pytest.raises(CxrfuseError, match="not one of"):
        label_target(["a"], "b", "sigmoid")
    with pytest.raises(CxrfuseError, match="unknown CAM method"):
        compute_cam(FusedImageClassifier(encoder, image_head(16, 1)), smooth_images(1, 32),
                    label_target(["a"], "a", "sigmoid"), "magic")  # fmt: skip
    assert label_target(["a"], "a", "softmax").category == 1
