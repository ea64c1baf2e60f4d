"""The embedding store: exact vectors, no rework, SIGKILL resume, bad images, keys, study assembly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.encoders import create_image_encoder, create_text_encoder
from cxrfuse.problems import DataError
from cxrfuse.store import (
    embed,
    embed_images,
    embed_texts,
    image_store_key,
    load_image_embeddings,
    load_text_embeddings,
)
from cxrfuse.text import TextConfig

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # tiny SVD

LABELS = ["abnormal", "Cardiomegaly", "Nodule"]
SIZE = 64


def _records(n: int, splits: bool = True) -> list[dict]:
    records = []
    for i in range(n):
        records.append(
            {
                "study_id": f"S{i:02d}",
                "patient_id": f"P{i:02d}",
                "indication": "" if i == 1 else f"cough and fever case {i} chest pain {i % 3}",
                "findings": f"heart size normal {i}",
                "split": (["train", "train", "val", "test"][i % 4]) if splits else None,
                "labels": {"abnormal": i % 2, "Cardiomegaly": i % 3 == 0, "Nodule": 0},
            }
        )
    return records


def _phantom_manifest(tmp: Path, n: int = 6, splits: bool = True) -> Manifest:
    manifest = Manifest.from_records(_records(n, splits), dataset="iu-xray", labels=LABELS)
    return make_phantoms(manifest, tmp, PhantomConfig(size=SIZE), progress=False)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return _phantom_manifest(tmp_path_factory.mktemp("phantoms"), n=6)


@pytest.fixture(scope="module")
def lite0():
    torch.set_num_threads(1)
    return create_image_encoder("efficientnet-lite0", weights="default", input_size=SIZE)


def _gray(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


# ----------------------------------------------------------------------------- images
def test_vectors_equal_a_direct_forward_and_rerun_does_no_work(
    phantoms: Manifest, lite0, tmp_path: Path
) -> None:
    store = embed_images(phantoms, lite0, tmp_path, batch_size=5, shard_size=4, progress=False)
    n_images = sum(len(v) for v in phantoms.df["views"])
    assert store.vectors.shape == (n_images, 1280) and len(store) == n_images
    assert store.path.parent == tmp_path and len(store.path.name) == 16
    assert store.meta["n_shards"] == 3 and store.meta["n_failed"] == 0
    assert store.meta["images_per_s"] > 0
    single = embed_images(phantoms, lite0, tmp_path / "one", batch_size=1, progress=False)
    assert single.image_ids == store.image_ids
    views = phantoms.df["views"]
    for sid, view in (
        (phantoms.df["study_id"][0], views[0][0]),
        (phantoms.df["study_id"][3], views[3][1]),
    ):
        with torch.inference_mode():
            direct = lite0(lite0.preprocess(_gray(view["path"]))[None]).numpy()[0]
        row = store.image_ids.index(view["image_id"])
        assert store.study_ids[row] == sid and store.views[row] == view["view"]
        # batch size changes the conv kernels' float rounding (~1e-5): exact at batch size 1
        np.testing.assert_allclose(single.vectors[row], direct, atol=1e-5)
        np.testing.assert_allclose(store.vectors[row], direct, rtol=1e-4, atol=1e-4)
    assert isinstance(store.shards[0], np.memmap)

    files = sorted(store.path.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    start = time.perf_counter()
    again = embed_images(phantoms, lite0, tmp_path, batch_size=5, shard_size=4, progress=False)
    assert time.perf_counter() - start < 1.0
    assert sorted(again.path.iterdir()) == files
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files)
    np.testing.assert_array_equal(again.vectors, store.vectors)
    loaded = load_image_embeddings(store.path)
    assert loaded.image_ids == store.image_ids


def test_float16_store_and_key_depends_on_dtype(phantoms: Manifest, lite0, tmp_path: Path) -> None:
    half = embed_images(phantoms, lite0, tmp_path, dtype="float16", progress=False)
    assert half.vectors.dtype == np.float16
    assert image_store_key(phantoms, lite0, "float16")[0] != image_store_key(phantoms, lite0)[0]
    workers = embed_images(phantoms, lite0, tmp_path / "w", num_workers=1, progress=False)
    np.testing.assert_allclose(workers.vectors, half.vectors.astype(np.float32), atol=1e-2)


def test_key_changes_with_weights(phantoms: Manifest, lite0) -> None:
    rand_other = create_image_encoder("efficientnet-lite0", weights="none", input_size=SIZE)
    with torch.no_grad():  # weights of the same architecture that differ: another key
        next(rand_other.parameters()).add_(1.0)
    rand_again = create_image_encoder("efficientnet-lite0", weights="none", input_size=SIZE)
    rand_b = create_image_encoder("efficientnet-lite0", weights="none", input_size=SIZE)
    keys = [image_store_key(phantoms, e)[0] for e in (lite0, rand_other, rand_again, rand_b)]
    assert len(set(keys[:3])) == 3 and keys[2] == keys[3]  # weights none: the same draw
    other = create_image_encoder("efficientnet-lite0", weights="default", input_size=32)
    assert image_store_key(phantoms, other)[0] != keys[0]  # preprocessing is in the key


def test_corrupt_image_is_reported_and_skipped(lite0, tmp_path: Path) -> None:
    manifest = _phantom_manifest(tmp_path / "data", n=3)
    bad = manifest.df["views"][1][0]
    Path(bad["path"]).write_bytes(b"this is not a png at all")
    store = embed_images(manifest, lite0, tmp_path / "store", shard_size=2, progress=False)
    assert len(store) == 5 and bad["image_id"] not in store.image_ids
    assert store.meta["n_failed"] == 1 and store.meta["n_embedded"] == 5
    [problem] = store.problems
    assert problem["kind"] == "unreadable-image" and problem["where"] == bad["path"]
    X, mask = store.study_matrix(manifest, "concat")
    assert mask.tolist() == [[True, True], [False, True], [True, True]]
    assert not X[1, :1280].any()


RESUME_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
from cxrfuse.data.manifest import read_manifest
from cxrfuse.encoders import create_image_encoder
from cxrfuse.store import embed_images
enc = create_image_encoder("efficientnet-lite0", weights="default", input_size=64)
forward = enc.forward
def slow(x):
    time.sleep(0.15)
    return forward(x)
enc.forward = slow
embed_images(read_manifest(sys.argv[1]), enc, sys.argv[2], batch_size=2, shard_size=4,
             progress=False)
"""


def test_resume_after_sigkill(lite0, tmp_path: Path) -> None:
    manifest = _phantom_manifest(tmp_path / "data", n=12)  # 24 images, 6 shards
    store_dir = tmp_path / "killed"
    key, _ = image_store_key(manifest, lite0)
    folder = store_dir / key
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RESUME_SCRIPT,
            str(tmp_path / "data" / "manifest.parquet"),
            str(store_dir),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not (folder / "images-00001.ids.json").exists():
            assert proc.poll() is None, "embedding subprocess ended early"
            assert time.monotonic() < deadline, "no shard appeared in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (folder / "meta.json").exists()
    done = sorted(folder.glob("images-*.ids.json"))
    assert 2 <= len(done) < 6
    finished = [p for d in done for p in (d, d.with_name(d.name.replace(".ids.json", ".npy")))]
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    resumed = embed_images(
        read_manifest(tmp_path / "data" / "manifest.parquet"),
        lite0,
        store_dir,
        batch_size=2,
        shard_size=4,
        progress=False,
    )
    assert resumed.path == folder
    assert all(p.stat().st_mtime_ns == stamps[p] for p in finished)
    assert resumed.meta["computed_this_run"] == 24 - 4 * len(done)
    assert not list(folder.glob("*.tmp-*"))
    clean = embed_images(
        manifest, lite0, tmp_path / "clean", batch_size=7, shard_size=4, progress=False
    )
    assert len(set(resumed.image_ids)) == len(resumed.image_ids) == 24
    assert resumed.image_ids == clean.image_ids
    np.testing.assert_allclose(resumed.vectors, clean.vectors, atol=1e-5)


def test_study_matrix_modes(lite0, tmp_path: Path) -> None:
    manifest = _phantom_manifest(tmp_path / "data", n=4)
    df = manifest.df.copy()
    views = [list(v) for v in df["views"]]
    views[1] = [views[1][0]]  # frontal only
    views[2] = [views[2][1]]  # lateral only
    views[3] = []  # no image at all
    df["views"] = views
    manifest = manifest.replace(df=df)
    store = embed_images(manifest, lite0, tmp_path / "store", progress=False)
    rows = {iid: i for i, iid in enumerate(store.image_ids)}
    vec = lambda s, j: store.vectors[rows[views[s][j]["image_id"]]]

    X, mask = store.study_matrix(manifest, "frontal")
    assert X.shape == (4, 1280) and mask.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(X[1], vec(1, 0))
    assert not X[2:].any()

    X, mask = store.study_matrix(manifest, "mean")
    assert mask.tolist() == [True, True, True, False]
    np.testing.assert_allclose(X[0], (vec(0, 0) + vec(0, 1)) / 2, atol=1e-6)
    np.testing.assert_array_equal(X[2], vec(2, 0))

    X, mask = store.study_matrix(manifest, "concat")
    assert X.shape == (4, 2560)
    assert mask.tolist() == [[True, True], [True, False], [False, True], [False, False]]
    np.testing.assert_array_equal(X[2, 1280:], vec(2, 0))
    assert not X[2, :1280].any() and not X[3].any()

    X, mask = store.study_matrix(manifest, "stack")
    assert X.shape == (4, 2, 1280) and mask.dtype == np.bool_
    assert mask.tolist() == [[True, True], [True, False], [True, False], [False, False]]
    assert not X[1, 1].any() and not X[3].any()
    with pytest.raises(ValueError, match="mode"):
        store.study_matrix(manifest, "bogus")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- texts
def test_embed_texts_with_tfidf_fits_on_train_only(phantoms: Manifest, tmp_path: Path) -> None:
    config = TextConfig(sections=["indication"])
    encoder = create_text_encoder("tfidf", svd_dim=2)
    texts = embed_texts(phantoms, encoder, config, tmp_path)
    assert texts.vectors.shape[0] == 6 and texts.mask.tolist() == [True, False, *[True] * 4]
    assert not texts.vectors[1].any() and texts.texts[1] == ""
    assert (texts.path / "texts.parquet").is_file() and (texts.path / "texts.npy").is_file()

    from cxrfuse.store import prepare_texts_list

    prepared = prepare_texts_list(phantoms, config, None)
    train = [t for t, s in zip(prepared, phantoms.df["split"]) if s == "train" and t]
    reference = create_text_encoder("tfidf", svd_dim=2).fit(train)
    assert texts.meta["key_inputs"]["fingerprint"] == reference.fingerprint()
    np.testing.assert_allclose(texts.vectors[0], reference.encode([prepared[0]])[0], atol=1e-6)

    stamp = (texts.path / "meta.json").stat().st_mtime_ns
    again = embed_texts(phantoms, create_text_encoder("tfidf", svd_dim=2), config, tmp_path)
    assert again.path == texts.path and (texts.path / "meta.json").stat().st_mtime_ns == stamp
    loaded = load_text_embeddings(texts.path)
    assert loaded.texts == texts.texts
    X, mask = loaded.study_matrix(phantoms)
    np.testing.assert_array_equal(X, texts.vectors)
    np.testing.assert_array_equal(mask, texts.mask)

    other = embed_texts(
        phantoms,
        create_text_encoder("tfidf", svd_dim=2),
        TextConfig(sections=["findings"]),
        tmp_path,
    )
    assert other.path != texts.path


def test_tfidf_needs_a_split(tmp_path: Path) -> None:
    manifest = Manifest.from_records(_records(4, splits=False), dataset="x", labels=LABELS)
    with pytest.raises(DataError, match="split"):
        embed_texts(
            manifest,
            create_text_encoder("tfidf", svd_dim=2),
            TextConfig(sections=["indication"]),
            tmp_path,
        )


def test_embed_runs_both_and_summarises(tmp_path: Path) -> None:
    _phantom_manifest(tmp_path / "data", n=8)
    summary = embed(
        tmp_path / "data" / "manifest.parquet",
        "efficientnet-lite0",
        "tfidf",
        tmp_path / "store",
        input_size=SIZE,
        progress=False,
        text_options={"svd_dim": 2},
    )
    assert summary["images"]["n_embedded"] == 16 and summary["images"]["dim"] == 1280
    assert summary["images"]["problems"] == []
    assert summary["texts"]["n_with_text"] == 7 and summary["texts"]["n_empty"] == 1
    assert Path(summary["images"]["path"]).is_dir() and Path(summary["texts"]["path"]).is_dir()
    meta = json.loads((Path(summary["images"]["path"]) / "meta.json").read_text())
    assert meta["key_inputs"]["encoder"] == "efficientnet-lite0"


def test_manifest_without_images_keeps_masks(lite0, tmp_path: Path) -> None:
    manifest = Manifest.from_records(_records(3), dataset="iu-xray", labels=LABELS)  # reports only
    store = embed_images(manifest, lite0, tmp_path, progress=False)
    assert len(store) == 0 and store.meta["n_images"] == 0 and store.dim == 1280
    for mode, shape, mask_shape in (
        ("frontal", (3, 1280), (3,)),
        ("mean", (3, 1280), (3,)),
        ("concat", (3, 2560), (3, 2)),
        ("stack", (3, 1, 1280), (3, 1)),
    ):
        X, mask = load_image_embeddings(store.path).study_matrix(manifest, mode)  # type: ignore[arg-type]
        assert X.shape == shape and mask.shape == mask_shape and not mask.any() and not X.any()


def test_precision_is_in_the_key_and_bfloat16_is_close(
    phantoms: Manifest, lite0, tmp_path: Path
) -> None:
    assert (
        image_store_key(phantoms, lite0)[0]
        != image_store_key(phantoms, lite0, "float32", "bfloat16")[0]
    )
    full = embed_images(phantoms, lite0, tmp_path, progress=False)
    half = embed_images(phantoms, lite0, tmp_path, precision="bfloat16", progress=False)
    assert half.path != full.path and half.meta["key_inputs"]["precision"] == "bfloat16"
    assert full.meta["key_inputs"]["precision"] == "float32"  # "auto" on CPU
    a, b = np.asarray(full.vectors), np.asarray(half.vectors)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.abs(a - b).max() > 0 and cosine.min() > 0.97, cosine.min()
    with pytest.raises(ValueError, match="precision"):
        embed_images(phantoms, lite0, tmp_path, precision="int8", progress=False)  # type: ignore[arg-type]
