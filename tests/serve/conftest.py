"""Serving tests: one tiny fused run (image + indication) trained on the shared 64-px phantom
manifest, evaluated (val-chosen thresholds) and given a retrieval generator, once a session."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import run_config

from cxrfuse.data import read_manifest


@pytest.fixture(scope="session")
def served_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished, evaluated fused run with ``generation/retrieval`` (k = 3, medoid)."""
    from cxrfuse.config import validate_run
    from cxrfuse.evaluation import evaluate_run
    from cxrfuse.generation.pipeline import generate_retrieval
    from cxrfuse.rundir import RunDir
    from cxrfuse.runtime import quiet_lightning
    from cxrfuse.training import train_run

    tmp = tmp_path_factory.mktemp("serve")
    config = validate_run(run_config(tmp, tiny_phantoms), "serve-test")
    with quiet_lightning():
        run_dir = train_run(config, progress=False)
    evaluate_run(run_dir, "f1", 20, 0)
    generate_retrieval(RunDir(run_dir).generation_dir("retrieval").path, manifest=tiny_phantoms,
                       store=tmp / "store", image_encoder="efficientnet-lite0", input_size=64,
                       k=3, consensus="medoid",
                       score={"n_boot": 10, "n_boot_language": 5, "meteor": False},
                       progress=False)
    return Path(run_dir)


@pytest.fixture(scope="session")
def test_study(served_run: Path) -> dict:
    """A test-split study of the run's manifest: its view paths and indication."""
    import json

    info = json.loads((served_run / "run.json").read_text())
    df = read_manifest(info["manifest"]).df
    row = df[df["split"] == "test"].iloc[0]
    views = {v["view"]: v["path"] for v in row["views"]}
    return {"study_id": row["study_id"], "frontal": views["PA"], "lateral": views["LATERAL"],
            "indication": row["indication"]}
