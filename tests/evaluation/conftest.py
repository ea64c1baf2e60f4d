"""Fixtures: a small split IU manifest, a run and an experiment directory (see rundirs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rundirs import LABELS, build_run

from cxrfuse.data import Manifest
from cxrfuse.data.splits import assign_splits


@pytest.fixture(scope="session")
def small_manifest(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """900 bundled IU studies, a three-label task, patient-level 60/20/20 split, saved."""
    manifest = iu_manifest.replace(
        df=iu_manifest.df.head(900).copy(), tasks={**iu_manifest.tasks, "three": LABELS}
    )
    manifest = assign_splits(manifest, (0.6, 0.2, 0.2), seed=0, task="three")
    return manifest.save(tmp_path_factory.mktemp("manifest") / "iu.parquet")


@pytest.fixture
def run_dir(tmp_path: Path, small_manifest: Path) -> Path:
    return build_run(tmp_path, small_manifest, ["image", "text"], seed=0)


@pytest.fixture(scope="session")
def experiment_dir(tmp_path_factory: pytest.TempPathFactory, small_manifest: Path) -> Path:
    """An experiment: image, text and multimodal runs for seeds 0 and 1, and one failed run."""
    exp = tmp_path_factory.mktemp("exp") / "demo-exp"
    for seed in (0, 1):
        for modalities in (["image"], ["text"], ["image", "text"]):
            build_run(exp / "runs", small_manifest, modalities, seed)
    failed = exp / "runs" / "multimodal-seed2"
    failed.mkdir(parents=True)
    (failed / "run.json").write_text(
        json.dumps(
            {
                "name": "multimodal-seed2",
                "status": "failed",
                "error": "CUDA out of memory",
                "seed": 2,
                "labels": LABELS,
                "modalities": ["image", "text"],
            }
        )
    )
    (exp / "experiment.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "demo-exp",
                "grid": {"modalities": [["image"], ["text"], ["image", "text"]], "seed": [0, 1, 2]},
            }
        )
    )
    return exp
