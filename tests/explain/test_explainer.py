"""Study-level explanations: view slots, overlays beside the view, index, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from explain_models import LABELS, TinyCNN
from PIL import Image

from cxrfuse.data import Manifest
from cxrfuse.explain import Explainer
from cxrfuse.explain.explainer import select_studies, view_slots
from cxrfuse.explain.overlay import MIN_PANEL_SIDE, cam_to_original, overlay_panel
from cxrfuse.fusion import build_head
from cxrfuse.problems import CxrfuseError, DataError


def _fused_explainer(manifest: Manifest, view_fusion: str = "mean") -> Explainer:
    torch.manual_seed(0)
    encoder = TinyCNN(64, 16).eval()
    head = build_head("late-fusion", modalities=["image", "text"], n_outputs=len(LABELS),
                      image_dim=16, text_dim=6, view_fusion=view_fusion, n_views=2,
                      projection_dim=8)  # fmt: skip
    rng = np.random.default_rng(0)
    texts = {sid: (rng.normal(size=6).astype(np.float32), True) for sid in manifest.df["study_id"]}
    return Explainer(encoder, head, LABELS, texts=texts)


def test_view_slots_follow_the_view_fusion() -> None:
    views = [{"image_id": "l", "path": "l.png", "view": "LATERAL"},
             {"image_id": "f", "path": "f.png", "view": "PA"},
             {"image_id": "x", "path": None, "view": "AP"}]  # fmt: skip
    assert [(s, v["image_id"]) for s, v in view_slots(views, "frontal")] == [(0, "f")]
    assert [(s, v["image_id"]) for s, v in view_slots(views, "concat")] == [(0, "f"), (1, "l")]
    assert [(s, v["image_id"]) for s, v in view_slots(views, "mean")] == [(0, "l"), (1, "f")]


@pytest.mark.parametrize("view_fusion", ["mean", "concat", "frontal"])
def test_split_overlays_and_index(phantoms_two_views: Manifest, tmp_path, view_fusion) -> None:
    explainer = _fused_explainer(phantoms_two_views, view_fusion)
    out = explainer.explain_manifest(phantoms_two_views, split="test", limit=2,
                                     labels=["Nodule"], method="gradcam++", out_dir=tmp_path,
                                     progress=False)  # fmt: skip
    views_per_study = 1 if view_fusion == "frontal" else 2
    assert len(out) == 2 * views_per_study
    index = pd.read_csv(tmp_path / "index.csv")
    assert list(index["overlay"]) == [str(r.overlay) for r in out]
    assert set(index["label"]) == {"Nodule"} and set(index["method"]) == {"gradcam++"}
    for r in out:
        panel = np.asarray(Image.open(r.overlay))
        side = MIN_PANEL_SIDE  # a 64-px view is enlarged for drawing
        assert panel.shape[0] > side and panel.shape[1] > 2 * side + 4  # view | map | bar, caption
        view = np.asarray(Image.open(r.path), dtype=np.float32) / 255
        drawn = np.round(cv2.resize(view, (side, side), interpolation=cv2.INTER_LINEAR) * 255)
        np.testing.assert_allclose(panel[:side, :side, 0], drawn, atol=1)
        assert 0.0 <= r.probability <= 1.0 and r.cam.shape == (64, 64)
        assert r.raw is not None and r.raw.shape == (64, 64) and r.raw.min() >= 0
        assert {"raw_max", "scale", "shown", "note"} <= set(index.columns)


def test_one_study_all_labels(phantoms_two_views: Manifest) -> None:
    explainer = _fused_explainer(phantoms_two_views)
    sid = str(phantoms_two_views.df["study_id"].iloc[0])
    [row] = [r for _, r in select_studies(phantoms_two_views, studies=[sid]).iterrows()]
    out = explainer.explain_study(row)
    assert [(r.view, r.label) for r in out] == [(v, lab) for v in ("PA", "LATERAL") for lab in LABELS]
    # the probability is that of the fused model for this study, whatever the explained view
    for label in LABELS:
        probs = [r.probability for r in out if r.label == label]
        assert probs[0] == pytest.approx(probs[1], abs=1e-5)


def test_overlay_maps_back_to_the_central_square() -> None:
    cam = np.ones((8, 8), dtype=np.float32)
    heat = cam_to_original(cam, (30, 50))
    assert heat.shape == (30, 50)
    assert heat[:, 10:40].min() == 1.0 and heat[:, :10].max() == 0 and heat[:, 40:].max() == 0
    panel = overlay_panel(np.zeros((1000, 800), np.float32), cam, "caption", max_side=100)
    assert panel.shape[0] > 100 + 13 * 2 and panel.shape[1] == 2 * 80 + 4 + 18  # captions; bar


def test_errors_name_the_problem(phantoms_two_views: Manifest) -> None:
    with pytest.raises(DataError, match="NOPE"):
        select_studies(phantoms_two_views, studies=["NOPE"])
    with pytest.raises(DataError, match="split 'holdout'"):
        select_studies(phantoms_two_views, split="holdout")
    text_only = build_head("concat-mlp", modalities=["text"], n_outputs=1, text_dim=6)
    with pytest.raises(CxrfuseError, match="image"):
        Explainer(TinyCNN(64, 16), text_only, ["Nodule"])
    fused = _fused_explainer(phantoms_two_views).head
    with pytest.raises(CxrfuseError, match="text embeddings"):
        Explainer(TinyCNN(64, 16), fused, LABELS)
    broken = phantoms_two_views.df.iloc[0].copy()
    broken["views"] = [{"image_id": "x", "path": "/no/such.png", "view": "PA"}]
    with pytest.raises(DataError, match="such.png"):
        _fused_explainer(phantoms_two_views).load_views(broken)
