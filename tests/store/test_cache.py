"""Decoding and the decoded-image cache: same vectors cached or not, no image read on a hit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfuse.data.images import decode_resized, gray8
from cxrfuse.data.manifest import Manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.encoders import create_image_encoder
from cxrfuse.encoders.image import preprocess_image, to_model_input
from cxrfuse.encoders.registry import get_image_encoder_spec
from cxrfuse.store import embed_images
from cxrfuse.store.cache import DecodedImageCache

SIZE = 32  # encoder input; phantoms are drawn larger so that decoding really resizes


def _manifest(tmp: Path, n: int = 5, size: int = 48) -> Manifest:
    records = [
        {
            "study_id": f"S{i}",
            "patient_id": f"P{i}",
            "findings": "x",
            "split": "train",
            "labels": {"abnormal": i % 2},
        }
        for i in range(n)
    ]
    manifest = Manifest.from_records(records, dataset="iu-xray", labels=["abnormal"])
    return make_phantoms(manifest, tmp, PhantomConfig(size=size), progress=False)


@pytest.fixture(scope="module")
def lite0():
    torch.set_num_threads(1)
    return create_image_encoder("efficientnet-lite0", weights="default", input_size=SIZE)


# ----------------------------------------------------------------------------- decoding
def test_decode_crops_the_centre_and_resizes(tmp_path: Path) -> None:
    img = np.zeros((60, 120), dtype=np.uint8)
    img[:, 30:90] = 200  # the central square is bright, the sides dark
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = decode_resized(tmp_path / "wide.png", 20)
    assert out.shape == (20, 20) and out.dtype == np.uint8 and out.flags.writeable
    assert (out == 200).all()
    same = decode_resized(tmp_path / "wide.png", 60)  # no resize: an exact crop
    np.testing.assert_array_equal(same, img[:, 30:90])


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    out = decode_resized(tmp_path / "wide.png", 64)
    np.testing.assert_array_equal(out, np.round(ramp / 257).astype(np.uint8))
    assert out.max() == 255 and out[32, 0] > 100  # PIL's convert("L") would give 255 here
    assert gray8(Image.fromarray(ramp)).mode == "L"


def test_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1024, 0:1024] / 1024
    img = (127 + 120 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.uint8)  # smooth, like a CXR
    Image.fromarray(img).save(tmp_path / "big.jpg", quality=95)
    opened = Image.open(tmp_path / "big.jpg")
    opened.draft("L", (128, 128))
    assert opened.size == (128, 128)  # what decode_resized asks PIL for: 1/8 DCT scale
    out = decode_resized(tmp_path / "big.jpg", 128)
    full = np.asarray(Image.open(tmp_path / "big.jpg").convert("L").resize((128, 128)))
    assert out.shape == (128, 128) and np.abs(out.astype(int) - full).mean() < 2


@pytest.mark.parametrize("name", ["efficientnet-lite0", "xrv-densenet121-nih"])
def test_batched_model_input_equals_preprocess_image(name: str) -> None:
    spec = get_image_encoder_spec(name)
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (3, spec.input_size, spec.input_size), dtype=np.uint8)
    expected = torch.stack([preprocess_image(b, spec) for b in batch])
    got = to_model_input(torch.from_numpy(batch), spec)
    assert got.shape == (3, spec.channels, spec.input_size, spec.input_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="uint8"):
        to_model_input(torch.from_numpy(batch).float(), spec)


# ----------------------------------------------------------------------------- cache
def test_cache_gives_identical_vectors_and_reads_no_image_file(lite0, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data")
    plain = embed_images(manifest, lite0, tmp_path / "plain", shard_size=4, progress=False)
    first = embed_images(
        manifest, lite0, tmp_path / "s1", shard_size=4, cache_dir=tmp_path / "cache",
        num_workers=1, progress=False,
    )  # fmt: skip
    assert first.meta["cache"]["hits"] == 0
    [folder] = (tmp_path / "cache").iterdir()
    assert folder.name.startswith(f"decoded-{SIZE}px-")
    assert sorted(p.name for p in folder.iterdir()) == [
        "cache.json", *[f"decoded-{i:05d}.{e}" for i in range(3) for e in ("json", "npy")]
    ]  # fmt: skip
    assert np.load(folder / "decoded-00000.npy").shape == (4, SIZE, SIZE)
    np.testing.assert_array_equal(first.vectors, plain.vectors)

    shutil.move(tmp_path / "data" / "images", tmp_path / "data" / "moved")  # no image left
    torch.manual_seed(0)
    other = create_image_encoder("efficientnet-lite0", weights="none", input_size=SIZE)
    second = embed_images(
        manifest, lite0, tmp_path / "s2", shard_size=4, cache_dir=tmp_path / "cache",
        progress=False,
    )  # fmt: skip
    assert second.meta["n_failed"] == 0 and second.meta["cache"]["hits"] == 10
    assert second.image_ids == plain.image_ids
    np.testing.assert_array_equal(second.vectors, plain.vectors)
    # a second encoder with the same input size is fed from the same cache
    random = embed_images(
        manifest, other, tmp_path / "s3", cache_dir=tmp_path / "cache", progress=False
    )
    assert random.meta["n_embedded"] == 10 and random.meta["cache"]["hits"] == 10
    without = embed_images(manifest, other, tmp_path / "s4", progress=False)
    assert without.meta["n_failed"] == 10  # the files really are gone


def test_changed_file_is_decoded_again(lite0, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data", n=2)
    cache = tmp_path / "cache"
    before = embed_images(manifest, lite0, tmp_path / "a", cache_dir=cache, progress=False)
    path = manifest.df["views"][0][0]["path"]
    Image.fromarray(np.full((48, 48), 255, dtype=np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # a different stamp even on coarse-mtime file systems
    after = embed_images(manifest, lite0, tmp_path / "b", cache_dir=cache, progress=False)
    assert after.meta["cache"]["hits"] == 3  # the other three views
    row = after.image_ids.index(manifest.df["views"][0][0]["image_id"])
    direct = lite0(to_model_input(torch.full((1, SIZE, SIZE), 255, dtype=torch.uint8),
                                  lite0.spec)).detach().numpy()[0]  # fmt: skip
    np.testing.assert_allclose(after.vectors[row], direct, atol=1e-4)
    assert not np.allclose(after.vectors[row], before.vectors[row], atol=1e-3)


def test_cache_shards_are_atomic_and_resumable(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{i}.png") for i in range(5)]
    stamps = [(1, i) for i in range(5)]
    cache = DecodedImageCache(tmp_path / "c", paths, stamps, size=4, shard_size=2)
    for i in range(3):
        cache.add(i, np.full((4, 4), i, np.uint8), ok=i != 1, error="bad" if i == 1 else "")
    assert cache.has_shard(0) and not cache.has_shard(1) and not cache.complete
    reopened = DecodedImageCache(tmp_path / "c", paths, stamps, size=4, shard_size=99)
    assert reopened.shard_size == 2 and reopened.folder == cache.folder
    px, ok, _ = reopened.lookup(0)
    assert ok and (px == 0).all()
    assert reopened.lookup(1)[1:] == (False, "bad")
    assert reopened.lookup(2) is None  # its shard was never completed
    info = json.loads((cache.folder / "decoded-00000.json").read_text())
    assert info["paths"] == paths[:2] and info["stamps"] == [[1, 0], [1, 1]]
    moved = DecodedImageCache(tmp_path / "c", paths, [(2, 0), *stamps[1:]], size=4)
    assert moved.lookup(0) is None  # the file changed since it was cached


def test_fill_cache_records_unreadable_files_and_bad_folders_fail_clearly(tmp_path: Path) -> None:
    from cxrfuse.problems import DataError
    from cxrfuse.store.cache import fill_cache

    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    cache = DecodedImageCache(tmp_path / "c", [str(good), str(bad)], [(1, 1), (1, 2)], size=4)
    assert fill_cache(cache, progress=False) == 2 and cache.complete
    assert fill_cache(cache, progress=False) == 0  # nothing left to decode
    px, ok, _ = cache.lookup(0)
    assert ok and (px == 200).all()
    _, ok, error = cache.lookup(1)
    assert not ok and "UnidentifiedImageError" in error
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create the decoded-image cache"):
        DecodedImageCache(blocker / "cache", [str(good)], [(1, 1)], size=4)


def test_workers_keep_ids_and_order(lite0, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "data", n=6)
    bad = manifest.df["views"][2][1]["path"]
    Path(bad).write_bytes(b"not an image")
    serial = embed_images(manifest, lite0, tmp_path / "a", batch_size=3, progress=False)
    parallel = embed_images(
        manifest, lite0, tmp_path / "b", batch_size=3, num_workers=2, progress=False
    )
    assert parallel.image_ids == serial.image_ids and parallel.study_ids == serial.study_ids
    assert parallel.meta["n_failed"] == 1 and parallel.problems[0]["where"] == bad
    np.testing.assert_array_equal(parallel.vectors, serial.vectors)
