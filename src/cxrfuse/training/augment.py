"""Training-time image augmentation: small seeded callables on (C, H, W) tensors in [0, 1].

MONAI style: every random component owns a local ``torch.Generator`` (``set_random_state``),
so a pipeline is reproducible whatever else draws random numbers, and an error says which
component failed on what input. The pixel operations are torchvision's
(``torchvision.transforms.v2.functional``); only the parameter draws are ours, because the
v2 random transforms draw from the global RNG.

Augmentation runs on images scaled to [0, 1] *before* the encoder's normalisation (gamma is
only defined there); :mod:`cxrfuse.training.finetune` applies it in the DataLoader workers and
normalises afterwards. Components whose strength is zero are left out by
:func:`build_augment`, and each component returns its input unchanged when its drawn
parameters are the identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cxrfuse.problems import ConfigError, CxrfuseError

AUGMENT_KEYS = ("hflip", "rotate_deg", "translate", "scale", "brightness", "contrast", "gamma")
"""Keys of the ``finetune.augment`` config section."""


class AugmentError(CxrfuseError):
    """An augmentation component failed; the message names the component and the input."""


class RandomTransform:
    """Base class: a callable with its own random generator (``set_random_state(seed)``)."""

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(0)

    def set_random_state(self, seed: int) -> RandomTransform:
        """Reseed this component's generator; returns ``self`` for chaining."""
        self.generator.manual_seed(int(seed))
        return self

    def uniform(self, low: float, high: float) -> float:
        """One draw from U(low, high) with this component's generator."""
        u = torch.rand((), generator=self.generator).item()
        return low + (high - low) * u

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "generator")
        return f"{type(self).__name__}({params})"


class RandHorizontalFlip(RandomTransform):
    """Mirror left-right with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        super().__init__()
        self.prob = _check_range("hflip", prob, 0.0, 1.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return TF.horizontal_flip(x) if self.uniform(0.0, 1.0) < self.prob else x


class RandRotate(RandomTransform):
    """Rotate by an angle drawn from U(-max_degrees, max_degrees), bilinear, black fill."""

    def __init__(self, max_degrees: float = 10.0) -> None:
        super().__init__()
        self.max_degrees = _check_range("rotate_deg", max_degrees, 0.0, 180.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        angle = self.uniform(-self.max_degrees, self.max_degrees)
        if angle == 0.0:
            return x
        return TF.rotate(x, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])


class RandAffine(RandomTransform):
    """Translate by up to ``translate`` of the image side (each axis) and scale by U(scale)."""

    def __init__(self, translate: float = 0.05, scale: Sequence[float] = (0.9, 1.1)) -> None:
        super().__init__()
        self.translate = _check_range("translate", translate, 0.0, 0.5)
        lo, hi = _pair("scale", scale)
        if not 0.0 < lo <= hi:
            raise ConfigError(f"finetune.augment.scale: need 0 < low <= high, got {[lo, hi]}")
        self.scale = (lo, hi)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tx = round(self.uniform(-self.translate, self.translate) * w)
        ty = round(self.uniform(-self.translate, self.translate) * h)
        s = self.uniform(*self.scale)
        if tx == 0 and ty == 0 and s == 1.0:
            return x
        return TF.affine(
            x,
            angle=0.0,
            translate=[tx, ty],
            scale=s,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=[0.0],
        )


class RandIntensity(RandomTransform):
    """Brightness, contrast and gamma factors drawn from U(1 - s, 1 + s) each; output in [0, 1]."""

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, gamma: float = 0.0) -> None:
        super().__init__()
        self.brightness = _check_range("brightness", brightness, 0.0, 1.0)
        self.contrast = _check_range("contrast", contrast, 0.0, 1.0)
        self.gamma = _check_range("gamma", gamma, 0.0, 0.9)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = self.uniform(1 - self.brightness, 1 + self.brightness)
        c = self.uniform(1 - self.contrast, 1 + self.contrast)
        g = self.uniform(1 - self.gamma, 1 + self.gamma)
        if b != 1.0:
            x = TF.adjust_brightness(x, b)
        if c != 1.0:
            x = TF.adjust_contrast(x, c)
        if g != 1.0:
            x = TF.adjust_gamma(x.clamp(0.0, 1.0), g)
        return x.clamp(0.0, 1.0)


class Augment:
    """Components applied in order; ``set_random_state(seed)`` seeds each one independently."""

    def __init__(self, transforms: Sequence[RandomTransform]) -> None:
        self.transforms = list(transforms)

    def set_random_state(self, seed: int) -> Augment:
        """Give every component its own stream derived from ``seed`` (numpy SeedSequence)."""
        children = np.random.SeedSequence(int(seed) % 2**63).spawn(len(self.transforms))
        for transform, child in zip(self.transforms, children):
            transform.set_random_state(int(child.generate_state(1, dtype=np.uint64)[0] >> 1))
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or not x.is_floating_point():
            raise AugmentError(
                f"augmentation expects a float (C, H, W) tensor in [0, 1], got "
                f"{x.dtype} {tuple(x.shape)}"
            )
        for transform in self.transforms:
            try:
                x = transform(x)
            except Exception as err:  # name the component and the input, keep the cause
                raise AugmentError(
                    f"augmentation {transform!r} failed on a {x.dtype} tensor of shape "
                    f"{tuple(x.shape)}: {type(err).__name__}: {err}"
                ) from err
        return x

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Augment({self.transforms!r})"


def build_augment(settings: Mapping[str, Any] | Any | None, seed: int = 0) -> Augment | None:
    """The pipeline of a ``finetune.augment`` section (mapping or pydantic model), or None.

    Keys (all optional, zero or null switches a component off): ``hflip`` (probability),
    ``rotate_deg`` (max degrees), ``translate`` (fraction of the side), ``scale`` ([low, high]),
    ``brightness``, ``contrast``, ``gamma`` (each: factors drawn from U(1 - s, 1 + s)).
    Order: flip, rotation, affine, intensity.
    """
    if settings is None:
        return None
    values = dict(settings.model_dump() if hasattr(settings, "model_dump") else settings)
    unknown = sorted(set(values) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(
            f"finetune.augment: unknown key(s) {unknown}; allowed: {', '.join(AUGMENT_KEYS)}"
        )
    hflip = float(values.get("hflip") or 0.0)
    rotate = float(values.get("rotate_deg") or 0.0)
    translate = float(values.get("translate") or 0.0)
    scale = _pair("scale", values.get("scale") or (1.0, 1.0))
    brightness, contrast, gamma = (
        float(values.get(k) or 0.0) for k in ("brightness", "contrast", "gamma")
    )
    parts: list[RandomTransform] = []
    if hflip > 0:
        parts.append(RandHorizontalFlip(hflip))
    if rotate > 0:
        parts.append(RandRotate(rotate))
    if translate > 0 or scale != (1.0, 1.0):
        parts.append(RandAffine(translate, scale))
    if brightness > 0 or contrast > 0 or gamma > 0:
        parts.append(RandIntensity(brightness, contrast, gamma))
    if not parts:
        return None
    return Augment(parts).set_random_state(seed)


def _check_range(key: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not low <= value <= high:
        raise ConfigError(f"finetune.augment.{key}: {value} is outside [{low}, {high}]")
    return value


def _pair(key: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"finetune.augment.{key}: expected [low, high], got {value!r}") from err
    return lo, hi
