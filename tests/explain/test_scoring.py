"""Scores on phantoms: pointing game and mass against random maps, deletion faithfulness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain_models import LABELS, RegionEncoder, image_head, smooth_images

from cxrfuse.data import Manifest
from cxrfuse.explain import Explainer, score_on_phantoms, write_scores
from cxrfuse.explain.gradcam import FusedImageClassifier, compute_cam, label_target
from cxrfuse.explain.scoring import (
    curve_auc,
    deletion_curve,
    hit_region,
    mass_inside,
    pointing_hit,
    random_maps,
    resize_mask,
)
from cxrfuse.problems import DataError


def test_pointing_and_mass_basics() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    cam = np.zeros((10, 10))
    cam[3, 3] = 1.0
    assert pointing_hit(cam, mask) and mass_inside(cam, mask) == 1.0
    cam[8, 8] = 2.0
    assert not pointing_hit(cam, mask) and mass_inside(cam, mask) == pytest.approx(1 / 3)
    assert not pointing_hit(np.zeros((10, 10)), mask)  # a flat map points nowhere
    assert hit_region(mask, 0).sum() == 4 and hit_region(mask, 1).sum() == 4 + 8
    assert resize_mask(np.pad(mask, ((0, 0), (5, 5))), 5).sum() == 1  # central square, halved


def test_random_maps_are_seeded_and_as_smooth_as_the_grid() -> None:
    a = random_maps((4, 4), 32, 3, np.random.default_rng(1))
    b = random_maps((4, 4), 32, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert np.abs(np.diff(a, axis=-1)).max() < 0.2  # bilinear from 4x4: no pixel noise


def test_deletion_is_faster_for_the_true_region() -> None:
    region = np.zeros((32, 32), bool)
    region[4:12, 18:26] = True
    head = image_head(1, 1)
    with torch.no_grad():
        head.mlp[0].weight.fill_(20.0)
        head.mlp[0].bias.fill_(-10.0)
    model = FusedImageClassifier(RegionEncoder(region), head)
    x = smooth_images(1, 32)
    cam = compute_cam(model, x, label_target(["r"], "r", "sigmoid")).maps[0]
    fractions = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
    good = deletion_curve(model, x[0], cam, 0, "sigmoid", fractions=fractions, baseline="mean")
    rand = random_maps((4, 4), 32, 1, np.random.default_rng(0))[0]
    bad = deletion_curve(model, x[0], rand, 0, "sigmoid", fractions=fractions, baseline="mean")
    assert good[0] == pytest.approx(bad[0])
    assert curve_auc(fractions, good) < curve_auc(fractions, bad)
    road = deletion_curve(model, x[0], cam, 0, "sigmoid", fractions=(0.0, 0.1), baseline="road")
    assert road.shape == (2,) and road[0] == pytest.approx(good[0])


def test_trained_model_hits_lesions_more_often_than_random_maps(
    phantoms_64: Manifest, trained_tiny, tmp_path
) -> None:
    """A tiny CNN trained for seconds on 64-px phantoms localises cardiomegaly and effusions."""
    encoder, head = trained_tiny
    scores = score_on_phantoms(Explainer(encoder, head, LABELS), phantoms_64, split="test",
                               n_random=10, progress=False)  # fmt: skip
    overall = scores.summary.set_index("label").loc["all"]
    assert overall["n"] > 100
    assert overall["hit_rate"] > 2 * overall["random_hit_rate"] + 0.05
    assert overall["hit_ci_low"] > overall["random_hit_rate"] and overall["p_value"] < 1e-4
    assert overall["mass_in_mask"] > overall["random_mass_in_mask"]
    assert overall["deletion_auc"] < overall["random_deletion_auc"]
    paths = write_scores(scores, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "cases.csv", "pointing_game.csv", "pointing_game.md", "pointing_game.png", "deletion.png"
    }  # fmt: skip
    assert "synthetic" in paths["table"].read_text().lower()


def test_scoring_needs_phantoms_and_lesion_labels(phantoms_64: Manifest, trained_tiny) -> None:
    encoder, head = trained_tiny
    explainer = Explainer(encoder, head, LABELS)
    with pytest.raises(DataError, match="phantom"):
        score_on_phantoms(explainer, phantoms_64.replace(images="real"), progress=False)
    with pytest.raises(DataError, match="lesion"):
        score_on_phantoms(Explainer(encoder, head, ["abnormal", "No Finding", "x"]),
                          phantoms_64, progress=False)  # fmt: skip
