"""Image encoders: every registry entry with random weights (small inputs), real lite weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfuse.encoders import create_image_encoder, get_image_encoder_spec, list_image_encoders
from cxrfuse.encoders.image import ImageEncoder, preprocess_image

SIZE = 64


def _xray(height: int = 80, width: int = 100, seed: int = 0) -> np.ndarray:
    """A synthetic uint8 'chest X-ray': bright mediastinum, dark lungs, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    body = 180 - 120 * np.exp(-(((xx - width / 2) / (width / 4)) ** 2)) * (yy > height / 5)
    return np.clip(body + rng.normal(0, 10, (height, width)), 0, 255).astype(np.uint8)


def _identity_head(encoder: ImageEncoder) -> torch.nn.Module | None:
    """The backbone with its classifier replaced by Identity (its own pre-logit path)."""
    b = encoder.backbone
    if encoder.spec.arch.startswith("resnet"):
        b.fc = torch.nn.Identity()
    elif encoder.spec.arch.startswith("vgg"):
        b.classifier[-1] = torch.nn.Identity()
    elif encoder.spec.arch.startswith(("densenet121", "efficientnet_")):
        b.classifier = torch.nn.Identity()
    elif encoder.spec.arch.startswith("vit"):
        b.heads = torch.nn.Identity()
    else:
        return None
    return b


@pytest.mark.parametrize("name", list_image_encoders())
def test_registry_encoder_with_random_weights(name: str) -> None:
    torch.manual_seed(0)
    encoder = create_image_encoder(name, weights="none", input_size=SIZE)
    spec = encoder.spec
    assert encoder.weights == "none" and not encoder.training
    assert spec.input_size == SIZE and get_image_encoder_spec(name).input_size != SIZE

    batch = torch.stack([encoder.preprocess(_xray(seed=i)) for i in range(2)])
    assert batch.shape == (2, spec.channels, SIZE, SIZE) and batch.dtype == torch.float32

    seen: list[torch.Tensor] = []
    hook = encoder.target_layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        features = encoder(batch)
        fmap = encoder.forward_features(batch)
    hook.remove()
    assert features.shape == (2, spec.feature_dim) and torch.isfinite(features).all()
    assert fmap.ndim == 4 and fmap.shape[0] == 2 and seen, "target layer must run in forward"

    if name.startswith("xrv-"):  # torchxrayvision's own feature path
        with torch.no_grad():
            torch.testing.assert_close(features, encoder.backbone.features2(batch))
    elif (reference := _identity_head(encoder)) is not None:
        with torch.no_grad():
            torch.testing.assert_close(features, reference(batch))


def test_vit_input_size_must_fit_patches() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        create_image_encoder("vit-b-16", weights="none", input_size=70)


@pytest.fixture(scope="module")
def lite0_real() -> ImageEncoder:
    return create_image_encoder("efficientnet-lite0")


def test_efficientnet_lite0_real_weights_are_used(lite0_real: ImageEncoder) -> None:
    assert lite0_real.weights == "imagenet" and lite0_real.spec.offline
    x = lite0_real.preprocess(_xray(240, 256))[None]
    with torch.no_grad():
        real = lite0_real(x)
        again = lite0_real(x)
        other = create_image_encoder("efficientnet-lite0")(x)
        torch.manual_seed(0)
        random = create_image_encoder("efficientnet-lite0", weights="none")(x)
    assert real.shape == (1, 1280)
    torch.testing.assert_close(real, again, rtol=0, atol=0)
    torch.testing.assert_close(real, other)
    assert not torch.allclose(real, random, atol=1e-3)


def test_efficientnet_lite0_recognises_a_cat(lite0_real: ImageEncoder) -> None:
    """ImageNet weights and the (x - 127) / 128 normalisation are right: the cat is a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    x = lite0_real.preprocess(skimage_data.chelsea())[None]
    with torch.no_grad():
        top5 = lite0_real.backbone(x).topk(5).indices[0].tolist()
    assert set(top5) & set(range(281, 286))  # ImageNet domestic cat classes


def test_xrv_preprocessing_matches_torchxrayvision() -> None:
    import torchxrayvision as xrv

    spec = get_image_encoder_spec("xrv-densenet121-nih")
    img = _xray(224, 224)
    x = preprocess_image(img, spec)
    expected = xrv.datasets.normalize(img, 255)[None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-3)
    small = preprocess_image(_xray(300, 400), spec)
    assert small.shape == (1, 224, 224) and -1024 <= small.min() and small.max() <= 1024
    rgb = np.stack([img, img, img], axis=2)
    torch.testing.assert_close(preprocess_image(rgb, spec), x)


def test_imagenet_preprocessing_replicates_gray() -> None:
    spec = get_image_encoder_spec("resnet18")
    img = _xray(120, 160)
    x = preprocess_image(img, spec)
    assert x.shape == (3, 224, 224)
    mean, std = (torch.tensor(v)[:, None, None] for v in spec.normalisation)
    unit = x * std + mean
    torch.testing.assert_close(unit[0], unit[1])
    torch.testing.assert_close(unit[0], unit[2])
    assert 0.0 <= unit.min() and unit.max() <= 1.0 + 1e-5


def test_preprocess_accepts_pil_and_uint16() -> None:
    spec = get_image_encoder_spec("efficientnet-lite1")
    img = _xray(90, 90)
    from_array = preprocess_image(img, spec)
    torch.testing.assert_close(preprocess_image(Image.fromarray(img), spec), from_array)
    torch.testing.assert_close(
        preprocess_image(Image.fromarray(img).convert("RGB"), spec), from_array
    )
    wide = img.astype(np.uint16) * 257  # same picture in 16 bits
    torch.testing.assert_close(preprocess_image(wide, spec), from_array, atol=1e-4, rtol=0)
    with pytest.raises(TypeError, match="uint8 or uint16"):
        preprocess_image(img.astype(np.float64), spec)
    with pytest.raises(ValueError, match="HxW"):
        preprocess_image(np.zeros((2, 3, 4, 5), dtype=np.uint8), spec)


def test_center_crop_keeps_the_middle() -> None:
    spec = get_image_encoder_spec("xrv-densenet121-all")
    img = np.zeros((50, 150), dtype=np.uint8)
    img[:, 50:100] = 255  # the central square is white, the sides black
    x = create_image_encoder("xrv-densenet121-all", weights="none", input_size=50).preprocess(img)
    assert x.shape == (1, 50, 50) and torch.all(x == 1024)
    assert spec.input_size == 224


@pytest.mark.network
@pytest.mark.parametrize("name", ["resnet18", "xrv-densenet121-nih"])
def test_registry_weights_download(online: None, name: str) -> None:
    encoder = create_image_encoder(name)
    x = encoder.preprocess(_xray())[None]
    with torch.no_grad():
        assert encoder(x).shape == (1, encoder.feature_dim)
    assert encoder.weights == encoder.spec.default_weights


def test_torchvision_weights_are_read_from_the_torch_hub_cache(offline_caches: Path) -> None:
    """A checkpoint already in $TORCH_HOME/hub/checkpoints is used without any download."""
    import torchvision

    torch.manual_seed(3)
    model = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = offline_caches / "torch" / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cached)
    encoder = create_image_encoder("resnet18", input_size=SIZE)
    assert encoder.weights == "IMAGENET1K_V1"
    model.fc = torch.nn.Identity()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model.eval()(x))


def test_xrv_weights_are_read_from_the_torchxrayvision_cache(offline_caches: Path) -> None:
    """torchxrayvision's own cache file (a pickled model) is loaded by torchxrayvision."""
    import torchxrayvision as xrv

    torch.manual_seed(4)
    model = xrv.models.DenseNet(weights=None).eval()
    url = xrv.models.model_urls["densenet121-res224-pc"]["weights_url"]
    cached = Path(xrv.utils.get_cache_dir()) / Path(url).name
    assert str(cached).startswith(str(offline_caches))
    cached.parent.mkdir(parents=True)
    torch.save(model, cached)
    encoder = create_image_encoder("xrv-densenet121-pc")
    assert encoder.weights == "densenet121-res224-pc"
    x = torch.rand(1, 1, 224, 224) * 2048 - 1024
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model.features2(x))
