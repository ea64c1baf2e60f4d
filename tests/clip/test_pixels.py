"""CLIP decodes images through the one decoder, ``data.images``: the same pixels as the store,
fine-tuning and predict get for the same file (16-bit scaled, not clipped; the pixel limit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrfuse.clip.data import load_grey
from cxrfuse.data import images
from cxrfuse.problems import DataError

NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-cxr14-sample" / "images"


def _same(path: Path, size: int) -> np.ndarray:
    got = load_grey(path, size)
    np.testing.assert_array_equal(got, images.decode_resized(path, size, images.LEGACY_FIT))
    assert got.shape == (size, size) and got.dtype == np.uint8
    return got


def test_synthetic_files_decode_as_data_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (90, 130), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "wide.png")
    Image.fromarray(gray.T).convert("RGB").save(tmp_path / "tall.jpg", quality=90)
    for name in ("wide.png", "tall.jpg"):
        _same(tmp_path / name, 32)
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # 16-bit: scaled by 1/257, not clipped
    deep = _same(tmp_path / "deep.png", 64)
    assert deep.max() == 255 and len(np.unique(deep)) > 200


def test_an_image_over_the_pixel_limit_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("L", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match="big.png"):
        load_grey(tmp_path / "big.png", 16)


def test_real_radiographs_decode_as_data_images() -> None:
    files = sorted(NIH.glob("*.png"))[:3] if NIH.is_dir() else []
    if not files:
        pytest.skip("../shared/data/nih-cxr14-sample is absent")
    for path in files:
        _same(path, 224)
