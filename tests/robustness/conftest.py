"""The bad-input battery's fixtures: a tiny trained run (phantom images, efficientnet-lite0 +
tf-idf, 32 px), built once per session, and the inputs every case starts from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from battery_inputs import tiny_run_config
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import Manifest


@pytest.fixture(scope="session")
def battery_phantoms(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 IU studies (16 normal, 16 abnormal) with 32-px phantom images, split by patient."""
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits

    df = iu_manifest.df
    has_text = df["findings"].notna() & df["indication"].notna()
    abnormal = df["label_abnormal"]
    pick = np.concatenate([np.flatnonzero((abnormal == 0) & has_text)[:16],
                           np.flatnonzero((abnormal == 1) & has_text)[:16]])  # fmt: skip
    small = iu_manifest.replace(df=df.iloc[np.sort(pick)].reset_index(drop=True))
    small = assign_splits(small, (0.6, 0.2, 0.2), seed=0, task="normal-abnormal")
    out = tmp_path_factory.mktemp("battery-phantoms")
    make_phantoms(small, out, PhantomConfig(size=32, seed=0), progress=False)
    return out / "manifest.parquet"


@pytest.fixture(scope="session")
def battery_run(battery_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory (do not modify: copy it first, see ``Ctx.run_copy``)."""
    tmp = tmp_path_factory.mktemp("battery-run")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tmp, battery_phantoms)))
    result = CliRunner().invoke(app, ["train", str(config), "--offline", "--no-progress"])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny"


@pytest.fixture(scope="session")
def mimic_tree_writer():
    """``write_mimic_tree`` of tests/data/mimic_tree.py (the tiny MIMIC-CXR-JPG tree)."""
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "data")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from mimic_tree import write_mimic_tree

    return write_mimic_tree
