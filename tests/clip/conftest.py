"""CLIP tests: offline, one torch thread, and a small phantom manifest shared by the session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrfuse.data import Manifest
from cxrfuse.data.phantoms import PhantomConfig, lesion_kind, make_phantoms
from cxrfuse.data.splits import assign_splits


@pytest.fixture(scope="session")
def phantom_manifest_path(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 real IU reports with 64-px frontal phantoms, split 60/20/20 at patient level.

    Studies whose labels draw a lesion are over-represented (120 of 160), so that the image
    side carries enough of the report's content for a short training to find it.
    """
    df = iu_manifest.df
    drawn = [c for n, c in zip(iu_manifest.labels, iu_manifest.label_columns) if lesion_kind(n)]
    lesion = (df[drawn].fillna(0) > 0).any(axis=1).to_numpy()
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.choice(np.flatnonzero(lesion), 120, replace=False),
                            rng.choice(np.flatnonzero(~lesion), 40, replace=False)])
    small = iu_manifest.replace(df=df.iloc[np.sort(picks)].copy())
    small = assign_splits(small, (0.6, 0.2, 0.2), seed=0, task="multilabel")
    out = tmp_path_factory.mktemp("clip-phantoms")
    make_phantoms(small, out, PhantomConfig(size=64, lateral=False), progress=False)
    return out / "manifest.parquet"

