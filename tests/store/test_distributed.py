"""Data-parallel extraction: 2 CPU ranks (gloo) give the vectors one process gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrfuse.data.manifest import Manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.store import embed, load_image_embeddings
from cxrfuse.store.distributed import RankContext, free_port

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # tiny SVD

SIZE = 32
OPTIONS = {"input_size": SIZE, "batch_size": 3, "shard_size": 4, "num_workers": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    records = [
        {
            "study_id": f"S{i}",
            "patient_id": f"P{i}",
            "indication": f"cough {i}",
            "split": "train" if i < 5 else "test",
            "labels": {"abnormal": i % 2},
        }
        for i in range(7)
    ]
    manifest = Manifest.from_records(records, dataset="iu-xray", labels=["abnormal"])
    make_phantoms(manifest, folder, PhantomConfig(size=SIZE), progress=False)
    Path(manifest_views(folder)[3]).write_bytes(b"broken")  # one unreadable image
    return folder / "manifest.parquet"


def manifest_views(folder: Path) -> list[str]:
    from cxrfuse.data.manifest import read_manifest

    return [v["path"] for views in read_manifest(folder / "manifest.parquet").df["views"]
            for v in views]  # fmt: skip


def test_shards_are_dealt_round_robin() -> None:
    ranks = [RankContext(rank=r, world_size=3) for r in range(3)]
    owners = [[c.rank for c in ranks if c.owns(i)] for i in range(7)]
    assert owners == [[0], [1], [2], [0], [1], [2], [0]]
    assert RankContext().owns(5) and RankContext().sum(4) == 4


def test_two_gloo_ranks_equal_one_process(data: Path, tmp_path: Path) -> None:
    single = embed(data, "efficientnet-lite0", None, tmp_path / "one", device="cpu", **OPTIONS,
                   progress=False)["images"]  # fmt: skip
    double = embed(data, "efficientnet-lite0", "tfidf", tmp_path / "two", device="cpu",
                   nproc=2, progress=False, text_options={"svd_dim": 2}, **OPTIONS)  # fmt: skip
    images = double["images"]
    assert images["world_size"] == 2 and images["computed_this_run"] == 14
    assert images["n_failed"] == 1 and images["failed_paths"] == [manifest_views(data.parent)[3]]
    assert double["texts"]["n_with_text"] == 7  # texts are embedded once, by the caller
    one, two = load_image_embeddings(single["path"]), load_image_embeddings(images["path"])
    assert Path(single["path"]).name == Path(images["path"]).name  # same key
    assert len(two.shards) == 4 and two.image_ids == one.image_ids and len(two) == 13
    np.testing.assert_allclose(two.vectors, one.vectors, rtol=0, atol=1e-6)
    again = embed(data, "efficientnet-lite0", None, tmp_path / "two", device="cpu", nproc=2,
                  progress=False, **OPTIONS)["images"]  # fmt: skip
    assert again["reused"] and again["computed_this_run"] == 0


@pytest.mark.skipif(shutil.which("torchrun", path=Path(sys.executable).parent) is None,
                    reason="torchrun not installed next to python")  # fmt: skip
def test_torchrun_cli_two_ranks_resume_a_partial_store(data: Path, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    reference = embed(data, "efficientnet-lite0", None, tmp_path / "ref", device="cpu",
                      progress=False, **OPTIONS)["images"]  # fmt: skip
    partial = tmp_path / "store" / Path(reference["path"]).name
    partial.mkdir(parents=True)
    for name in ("images-00001.npy", "images-00001.ids.json"):  # one finished shard of four
        shutil.copy(Path(reference["path"]) / name, partial / name)
    command = [
        str(bindir / "torchrun"), "--no-python", "--nnodes", "1", "--nproc-per-node", "2",
        "--master-port", str(free_port()), str(bindir / "cxrfuse"), "embed", str(data),
        "--image-encoder", "efficientnet-lite0", "--input-size", str(SIZE), "--batch-size", "3",
        "--shard-size", "4", "--workers", "0", "--device", "cpu", "--store",
        str(tmp_path / "store"), "--json", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])  # only rank 0 prints
    assert summary["images"]["world_size"] == 2
    assert summary["images"]["computed_this_run"] == 10  # 14 images, 4 were already done
    result = load_image_embeddings(summary["images"]["path"])
    np.testing.assert_allclose(result.vectors, load_image_embeddings(reference["path"]).vectors,
                               rtol=0, atol=1e-6)  # fmt: skip
