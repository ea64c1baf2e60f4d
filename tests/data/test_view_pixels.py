"""The pixel frontal/lateral study behind README's "no check from the pixels is used":
its scores on phantoms (always) and on the real NIH frontals (skipped when absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrfuse.data.images import decode_resized

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from view_pixels import SCORES, phantom_scores

NIH = ROOT.parent / "shared" / "data" / "nih-cxr14-sample"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return phantom_scores(12, tmp_path_factory.mktemp("view-pixels"))


def test_scores_on_phantoms(phantoms: dict) -> None:
    mirror = phantoms["mirror"]
    assert len(mirror["frontal"]) == len(mirror["lateral"]) == 12
    assert all(-1 <= s <= 1 for kind in mirror.values() for s in kind)
    flat = np.full((64, 64), 100, np.uint8)
    ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    assert SCORES["mirror"](ramp) == pytest.approx(-1.0)
    assert SCORES["centre"](flat) == 0.0


@pytest.mark.skipif(not (NIH / "labels.csv").exists(), reason="shared NIH sample absent")
def test_no_threshold_keeps_real_frontals_and_catches_phantom_laterals(phantoms: dict) -> None:
    names = pd.read_csv(NIH / "labels.csv")["Image Index"]
    pixels = [decode_resized(NIH / "images" / n, 128) for n in names]
    for name, score in SCORES.items():
        real = np.array([score(p) for p in pixels])
        threshold = np.percentile(real, 1)  # keeps 99 % of the real frontals
        caught = np.mean(np.array(phantoms[name]["lateral"]) < threshold)
        assert caught < 0.5, (name, caught)  # the reason no pixel check is used
