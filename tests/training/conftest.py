"""Training tests: one torch thread, offline caches, and a tiny phantom manifest with a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrfuse.data import Manifest


@pytest.fixture(scope="session")
def tiny_phantoms(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 IU studies (24 normal, 24 abnormal), split by patient, with 64-px phantom images."""
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits

    df = iu_manifest.df
    has_text = df["findings"].notna() & df["indication"].notna()
    abnormal = df["label_abnormal"]
    pick = np.concatenate([
        np.flatnonzero((abnormal == 0) & has_text)[:24],
        np.flatnonzero((abnormal == 1) & has_text)[:24],
    ])
    small = iu_manifest.replace(df=df.iloc[np.sort(pick)].reset_index(drop=True))
    small = assign_splits(small, (0.6, 0.2, 0.2), seed=0, task="normal-abnormal")
    out = tmp_path_factory.mktemp("phantoms")
    make_phantoms(small, out, PhantomConfig(size=64, seed=0), progress=False)
    return out / "manifest.parquet"
