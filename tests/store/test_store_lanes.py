"""The store's CPU lanes: threads that each decode their own batches and run a one-thread
forward give the vectors of the one-lane path (decode in line, forward on every thread)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfuse.data.manifest import Manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.encoders import create_image_encoder
from cxrfuse.store import embed_images

SIZE = 64


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    records = [
        {"study_id": f"S{i:02d}", "patient_id": f"P{i:02d}", "split": "train",
         "labels": {"abnormal": i % 2}}
        for i in range(7)
    ]  # fmt: skip
    manifest = Manifest.from_records(records, dataset="iu-xray", labels=["abnormal"])
    folder = tmp_path_factory.mktemp("phantoms")
    return make_phantoms(manifest, folder, PhantomConfig(size=96), progress=False)


@pytest.fixture(scope="module")
def encoder():
    return create_image_encoder("efficientnet-lite0", weights="default", input_size=SIZE)


def _lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cxrfuse-lane-")]


def test_lanes_give_the_one_lane_vectors_and_restore_threads(
    manifest: Manifest, encoder, tmp_path: Path
) -> None:
    threads_before = torch.get_num_threads()
    one = embed_images(manifest, encoder, tmp_path / "one", batch_size=3, shard_size=4,
                       lanes=1, progress=False)  # fmt: skip
    three = embed_images(manifest, encoder, tmp_path / "three", batch_size=3, shard_size=4,
                         lanes=3, progress=False)  # fmt: skip
    assert torch.get_num_threads() == threads_before and not _lane_threads()
    assert one.meta["lanes"] == 1 and three.meta["lanes"] == 3
    assert three.path.name == one.path.name  # the same vectors, so the same store key
    assert three.image_ids == one.image_ids and len(one) == 14
    assert three.meta["n_shards"] == 4 and three.meta["n_failed"] == 0
    # one-thread and two-thread kernels round differently; measured differences ~1e-7
    np.testing.assert_allclose(three.vectors, one.vectors, rtol=0, atol=1e-5)
    assert np.abs(one.vectors).max() > 1e-2  # real features, not zeros


def test_lanes_report_unreadable_images_and_fill_the_cache(
    manifest: Manifest, encoder, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    broken = make_phantoms(manifest.replace(df=manifest.df.iloc[:3].copy()), data,
                           PhantomConfig(size=96), progress=False)  # fmt: skip
    bad = broken.df["views"][2][1]
    Path(bad["path"]).write_bytes(b"not a png")
    first = embed_images(broken, encoder, tmp_path / "a", lanes=2, batch_size=2,
                         cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    assert first.meta["n_failed"] == 1 and bad["image_id"] not in first.image_ids
    assert [p["where"] for p in first.problems] == [bad["path"]]
    cached = embed_images(broken, encoder, tmp_path / "b", lanes=2, batch_size=2,
                          cache_dir=tmp_path / "cache", progress=False)  # fmt: skip
    assert cached.meta["cache"]["hits"] == 6 and cached.meta["n_failed"] == 1
    np.testing.assert_array_equal(cached.vectors, first.vectors)


def test_an_error_in_a_lane_is_raised_and_stops_the_lanes(
    manifest: Manifest, tmp_path: Path
) -> None:
    encoder = create_image_encoder("efficientnet-lite0", weights="none", input_size=SIZE)
    calls = {"n": 0}
    forward = encoder.forward

    def failing(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory in lane")
        return forward(x)

    encoder.forward = failing
    threads_before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="out of memory in lane"):
        embed_images(manifest, encoder, tmp_path, lanes=2, batch_size=1, shard_size=2,
                     progress=False)  # fmt: skip
    assert torch.get_num_threads() == threads_before and not _lane_threads()
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (folder / "meta.json").exists()
