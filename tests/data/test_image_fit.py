"""The image fit: ``pad`` letterboxes a non-square radiograph (nothing dropped), ``crop`` keeps
the central square (stores and runs before the option); a square image is bit-identical under
both, down to the stored vectors, so the phantom demo does not change. Real radiographs (NIH
sample) where the shared data exists, synthetic ones always."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrfuse.data import read_manifest
from cxrfuse.data.images import (
    decode_resized,
    decode_resized_bytes,
    fit_square,
    square_region,
)
from cxrfuse.encoders import create_image_encoder
from cxrfuse.explain.overlay import cam_to_original
from cxrfuse.store import embed_images
from cxrfuse.store.keys import image_store_key

NIH = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nih-cxr14-sample" / "images"


def radiographs() -> list[np.ndarray]:
    """A synthetic film (always) and a real NIH one (when the shared data exists), 8-bit."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :300]
    synthetic = (120 + 80 * np.exp(-((yy - 150) ** 2 + (xx - 150) ** 2) / 4000)
                 + rng.normal(0, 6, (300, 300))).clip(0, 255).astype(np.uint8)  # fmt: skip
    out = [synthetic]
    files = sorted(NIH.glob("*.png")) if NIH.is_dir() else []
    if files:
        with Image.open(files[0]) as img:
            out.append(np.asarray(img.convert("L")))
    return out


@pytest.mark.parametrize("index", [0, 1])
def test_square_images_are_identical_under_both_fits(index: int, tmp_path: Path) -> None:
    films = radiographs()
    if index >= len(films):
        pytest.skip("../shared/data/nih-cxr14-sample is absent")
    film = films[index]
    for size in (64, 224, film.shape[0]):
        img = Image.fromarray(film)
        assert np.array_equal(fit_square(img, size, "crop"), fit_square(img, size, "pad"))
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(film.astype(np.uint16) * 257).save(sixteen)
    assert np.array_equal(decode_resized(sixteen, 128, "crop"), decode_resized(sixteen, 128, "pad"))
    data = sixteen.read_bytes()
    assert np.array_equal(decode_resized_bytes(data, 96, "pad"), decode_resized(sixteen, 96, "crop"))


@pytest.mark.parametrize("index", [0, 1])
def test_pad_keeps_the_apices_and_bases_that_crop_drops(index: int) -> None:
    films = radiographs()
    if index >= len(films):
        pytest.skip("../shared/data/nih-cxr14-sample is absent")
    base = Image.fromarray(films[index]).resize((1700, 2100), Image.Resampling.BILINEAR)
    portrait = np.asarray(base).copy()
    portrait[:120] = 255  # marks at the apex and the base, inside the film
    portrait[-120:] = 250
    img = Image.fromarray(portrait)
    crop, pad = fit_square(img, 224, "crop"), fit_square(img, 224, "pad")
    assert crop.shape == pad.shape == (224, 224)
    assert crop[:5].mean() < 250 and crop[-5:].mean() < 245  # the crop lost both marks
    rows = np.flatnonzero(pad.max(axis=1) > 0)  # the film, between the black bars
    assert rows[0] == 0 and rows[-1] == 223
    cols = np.flatnonzero(pad.max(axis=0) > 0)
    assert 0 < cols[0] and cols[-1] < 223  # letterboxed left and right
    assert pad[2, cols[0] + 5 : cols[-1] - 5].min() >= 250 and pad[-3, cols[0] + 5].min() >= 240
    # 1700 x 2100: the crop keeps 1700 of 2100 rows (drops 19 %); pad keeps all
    assert square_region(1700, 2100, "crop").side == 1700
    assert square_region(1700, 2100, "pad").covers_all(1700, 2100)
    assert not square_region(1700, 2100, "crop").covers_all(1700, 2100)


def test_a_padded_map_lands_on_the_whole_image() -> None:
    cam = np.zeros((8, 8), np.float32)
    cam[1:7, :] = 1.0  # the image rows of a padded 80 x 60 landscape input (bars above, below)
    heat = cam_to_original(cam, (60, 80), square_region(80, 60, "pad"))
    assert heat.shape == (60, 80) and heat[5:55, 5:75].min() > 0.9
    crop = cam_to_original(np.ones((8, 8), np.float32), (60, 80), square_region(80, 60, "crop"))
    assert crop[:, :10].max() == 0 and crop[:, 10:70].min() == 1.0


def test_store_keys_of_crop_are_unchanged_and_pad_vectors_of_square_images_identical(
    tiny_phantoms: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(tiny_phantoms)
    small = manifest.replace(df=manifest.df.head(6).reset_index(drop=True))
    # 64-px phantoms resized to 48 px: the resize path the demo takes (256 -> 128 px)
    crop = create_image_encoder("efficientnet-lite0", weights="none", input_size=48)
    pad = create_image_encoder("efficientnet-lite0", weights="none", input_size=48, fit="pad")
    key_crop, inputs_crop = image_store_key(small, crop)
    key_pad, inputs_pad = image_store_key(small, pad)
    assert "fit" not in inputs_crop["preprocessing"]  # the key every crop store had before
    assert inputs_pad["preprocessing"]["fit"] == "pad" and key_pad != key_crop
    a = embed_images(small, crop, tmp_path / "store", progress=False)
    b = embed_images(small, pad, tmp_path / "store", progress=False)
    assert a.path != b.path and len(a) == len(b) > 0
    assert np.array_equal(a.vectors, b.vectors)  # square phantoms: bit-identical
    assert (a.meta["fit"], b.meta["fit"]) == ("crop", "pad")

