"""Augmentation: seeded, each component does what it says, identity at zero strength."""

from __future__ import annotations

import pytest
import torch

from cxrfuse.problems import CxrfuseError
from cxrfuse.training.augment import (
    Augment,
    AugmentError,
    RandAffine,
    RandHorizontalFlip,
    RandIntensity,
    RandRotate,
    build_augment,
)

FULL = {"hflip": 0.5, "rotate_deg": 10, "translate": 0.05, "scale": [0.9, 1.1],
        "brightness": 0.1, "contrast": 0.1, "gamma": 0.2}


def _image(c: int = 1, size: int = 32) -> torch.Tensor:
    """A left-right asymmetric test image in [0, 1]: a bright block in the left half."""
    x = torch.full((c, size, size), 0.2)
    x[:, 8:24, 4:12] = 0.9
    return x


def test_same_seed_same_result_other_seed_differs():
    x = _image()
    a = build_augment(FULL, seed=3)
    b = build_augment(FULL, seed=3)
    assert a is not None and b is not None
    outs_a = [a(x) for _ in range(4)]
    outs_b = [b(x) for _ in range(4)]
    assert all(torch.equal(p, q) for p, q in zip(outs_a, outs_b))
    assert not torch.equal(outs_a[0], outs_a[1])  # the stream advances between calls
    c = build_augment(FULL, seed=4)
    assert not all(torch.equal(p, c(x)) for p in outs_a[:1])
    a.set_random_state(3)
    assert torch.equal(a(x), outs_a[0])  # reseeding replays the stream


def test_global_rng_does_not_change_the_stream():
    x = _image()
    a = build_augment(FULL, seed=1)
    first = a(x)
    a.set_random_state(1)
    torch.manual_seed(123)
    torch.rand(100)
    assert torch.equal(a(x), first)


def test_flip_mirrors_and_probability_bounds():
    x = _image(c=3)
    assert torch.equal(RandHorizontalFlip(1.0)(x), x.flip(-1))
    assert torch.equal(RandHorizontalFlip(0.0)(x), x)
    flip = RandHorizontalFlip(0.5).set_random_state(0)
    flipped = sum(bool(torch.equal(flip(x), x.flip(-1))) for _ in range(200))
    assert 70 < flipped < 130


def test_rotation_keeps_shape_and_moves_pixels():
    x = _image(size=33)
    rot = RandRotate(15).set_random_state(0)
    y = rot(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    assert y.min() >= 0 and y.max() <= 1.0 + 1e-6
    # the image centre stays where it was (rotation about the centre)
    assert torch.isclose(y[0, 16, 16], x[0, 16, 16], atol=0.05)


def test_affine_translates():
    x = torch.zeros(1, 32, 32)
    x[0, 16, 16] = 1.0
    aff = RandAffine(translate=0.25, scale=(1.0, 1.0)).set_random_state(5)
    y = aff(x)
    assert y.shape == x.shape
    r, c = divmod(int(y.argmax()), 32)
    assert (r, c) != (16, 16) and abs(r - 16) <= 8 and abs(c - 16) <= 8


def test_intensity_jitter_changes_values_within_range():
    x = _image()
    jit = RandIntensity(brightness=0.3, contrast=0.3, gamma=0.3).set_random_state(0)
    y = jit(x)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    # order preserved: jitter is monotone, so the bright block stays brighter
    assert float(y[0, 10, 6]) > float(y[0, 2, 20])


def test_identity_at_zero_strength():
    x = _image()
    zero = dict.fromkeys(FULL, 0)
    zero["scale"] = [1.0, 1.0]
    assert build_augment(zero) is None
    assert build_augment(None) is None
    for component in (RandHorizontalFlip(0.0), RandRotate(0.0), RandAffine(0.0, (1.0, 1.0)),
                      RandIntensity(0.0, 0.0, 0.0)):
        assert torch.equal(component(x), x)


def test_bad_settings_and_bad_input_name_the_problem():
    with pytest.raises(CxrfuseError, match="finetune.augment: unknown key.*rotate"):
        build_augment({"rotate": 10})
    with pytest.raises(CxrfuseError, match="finetune.augment.hflip"):
        build_augment({"hflip": 1.5})
    with pytest.raises(CxrfuseError, match="finetune.augment.scale"):
        build_augment({"scale": [1.2, 0.8]})
    aug = Augment([RandRotate(5)])
    with pytest.raises(AugmentError, match="float"):
        aug(torch.zeros(1, 8, 8, dtype=torch.uint8))
