"""Changes to a built image encoder before fine-tuning, or to rebuild a fine-tuned one:
reading one-channel input (design 004's grayscale ResNet-50) and freezing backbone modules
by name (design 004 freezes ResNet-50's ``conv1, layer1, layer2``).

``adapt_to_grayscale`` sums the first convolution's RGB filters, which equals the RGB model on
a gray image replicated to three channels when the encoder normalises all channels alike
(EfficientNet-Lite, torchxrayvision) and is close to it otherwise (ImageNet mean/std differ by
channel; the gray input uses their averages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from cxrfuse.encoders.image import ImageEncoder
from cxrfuse.encoders.registry import Normalisation
from cxrfuse.problems import ConfigError, CxrfuseError


def find_input_conv(backbone: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` of ``backbone`` (the one that reads the image) and its name."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise CxrfuseError(f"{type(backbone).__name__} has no Conv2d layer to adapt")


def gray_normalisation(normalisation: Normalisation) -> Normalisation:
    """The one-channel normalisation of a gray image: the channel means of mean and std."""
    if normalisation == "xrv":
        return normalisation
    mean, std = normalisation
    return ((float(np.mean(mean)),), (float(np.mean(std)),))


def adapt_to_grayscale(encoder: ImageEncoder) -> ImageEncoder:
    """Make ``encoder`` read one-channel images: sum the first conv's RGB filters (in place).

    The spec becomes ``channels=1`` with :func:`gray_normalisation`, so ``preprocess`` and
    :func:`to_model_input` feed it gray input. A one-channel encoder is returned unchanged.
    """
    if encoder.spec.channels == 1:
        return encoder
    name, conv = find_input_conv(encoder.backbone)
    if conv.in_channels != 3 or conv.groups != 1:
        raise CxrfuseError(
            f"{encoder.spec.name}: first conv {name!r} has {conv.in_channels} input channels "
            f"(groups {conv.groups}); grayscale adaptation needs a plain 3-channel conv"
        )
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True)
    conv.weight = nn.Parameter(summed, requires_grad=conv.weight.requires_grad)
    conv.in_channels = 1
    encoder.spec = replace(
        encoder.spec,
        channels=1,
        normalisation=gray_normalisation(encoder.spec.normalisation),
        grayscale_to_rgb="not-needed",
    )
    return encoder


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze_backbone(encoder: ImageEncoder, prefixes: Sequence[str]) -> list[str]:
    """Freeze the backbone modules whose names start with one of ``prefixes``.

    Also freezes the backbone's own classifier (``encoder.head_prefixes``), which the pooled
    features never reach. A prefix is a module name relative to the backbone (``layer1``,
    ``features.denseblock1``, ``_blocks.0``) and covers everything inside it; one that names no
    module raises :class:`ConfigError` listing the top-level names. Returns the frozen names.
    """
    backbone = encoder.backbone
    modules = dict(backbone.named_modules())
    frozen = list(dict.fromkeys(p.removeprefix("backbone.") for p in prefixes))
    for prefix in frozen:
        if not prefix or prefix not in modules:
            children = ", ".join(n for n, _ in backbone.named_children())
            raise ConfigError(
                f"finetune.freeze: {prefix!r} names no module of {encoder.spec.name}; "
                f"top-level modules: {children}"
            )
    for name, param in backbone.named_parameters():
        if any(_matches(name, f) for f in frozen) or encoder._is_head(name):
            param.requires_grad_(False)
    return frozen
