"""Saliency that cannot mislead: a fixed colour scale with a colour bar, flat and empty maps
reported instead of drawn, captions with the model's test AUROC and threshold, views of any
size (values overshooting 1.0 after resampling are clipped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain_models import LABELS, TinyCNN, image_head
from PIL import Image

from cxrfuse.data import Manifest
from cxrfuse.explain import Explainer
from cxrfuse.explain.explainer import CaptionFacts
from cxrfuse.explain.overlay import BAR_WIDTH, MapDrawing, map_note, overlay_panel


def _blob(size: int = 32, peak: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (peak * np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 30)).astype(np.float32)


def test_map_notes_empty_flat_and_faint_maps() -> None:
    assert "empty" in map_note(np.zeros((8, 8), np.float32))
    assert "flat" in map_note(np.full((8, 8), 0.3, np.float32))
    assert "does not depend on this image region" in map_note(np.full((8, 8), 0.3, np.float32))
    assert map_note(_blob()) is None
    assert "flat" in map_note(_blob(peak=1e-3), scale=1.0)  # faint against the run's scale
    assert map_note(_blob(peak=0.5), scale=1.0) is None
    assert "not finite" in map_note(np.full((4, 4), np.nan, np.float32))


def test_the_colour_scale_is_fixed_not_stretched_per_map() -> None:
    original = np.full((32, 32), 0.5, np.float32)
    right = slice(36, 68)  # view (32) | gap (4) | map (32) | bar

    def panel(raw: np.ndarray, scale: float) -> np.ndarray:
        return overlay_panel(original, MapDrawing(raw, scale), "", max_side=32)[:32, right]

    strong, weak = panel(_blob(), 1.0), panel(_blob(peak=0.1), 1.0)
    assert not np.array_equal(strong, weak)  # min-max scaling per map would make them equal
    assert int(strong[..., 0].max()) > int(weak[..., 0].max()) + 60  # the weak map is weak
    np.testing.assert_array_equal(panel(_blob(peak=0.1), 0.1), strong)  # same values/scale


def test_every_map_has_a_colour_bar_and_flat_maps_are_not_drawn() -> None:
    original = np.full((40, 40), 0.5, np.float32)
    shown = overlay_panel(original, MapDrawing(_blob(), 2.0), "caption", max_side=40)
    bar = shown[13:27, 84 + 2 : 84 + 2 + BAR_WIDTH]  # view | gap | map | bar
    assert bar[0, :, 0].mean() > 100 > bar[0, :, 2].mean()  # red at the top
    assert bar[-1, :, 2].mean() > 100 > bar[-1, :, 0].mean()  # blue at the bottom
    flat = overlay_panel(original, MapDrawing(np.full((32, 32), 0.3, np.float32), 1.0,
                                              note="the map is flat"), "caption", max_side=40)  # fmt: skip
    area = flat[20:40, 44:84].astype(int)  # below the "no map" text
    assert np.abs(area[..., 0] - area[..., 2]).max() <= 1  # gray: no colour drawn
    assert flat.shape[0] > shown.shape[0]  # the note is in the caption


def test_views_whose_resampling_overshoots_one_are_drawn() -> None:
    original = np.full((2160, 2048), 1.0, np.float32)
    original[::7] = np.random.default_rng(0).random((len(original[::7]), 2048))
    original[:300, :300] = 1.0
    panel = overlay_panel(original, MapDrawing(_blob(), 1.0), "x")
    assert panel.dtype == np.uint8 and panel.shape[1] > 2 * 485
    overshoot = np.nextafter(np.float32(1.0), np.float32(2.0))
    overlay_panel(np.full((50, 40), overshoot, np.float32), MapDrawing(_blob(), 1.0))


def test_a_model_that_ignores_the_image_gives_a_flat_map_not_a_picture(
    phantoms_64: Manifest, tmp_path
) -> None:
    torch.manual_seed(0)
    encoder, head = TinyCNN(64, 16).eval(), image_head(16, len(LABELS))
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()  # the output does not depend on the image at all
    explainer = Explainer(encoder, head, LABELS)
    [m] = explainer.explain_manifest(phantoms_64, split="test", limit=1, labels=["Nodule"],
                                     out_dir=tmp_path, progress=False)  # fmt: skip
    assert not m.shown and "the model's output does not depend" in m.note
    assert m.raw is not None and float(m.raw.max()) == 0.0


def test_calibrated_scale_and_captions(phantoms_64: Manifest, tmp_path) -> None:
    torch.manual_seed(0)
    facts = CaptionFacts({"Nodule": 0.37}, "f1", {"Nodule": (0.52, 0.41, 0.63)})
    explainer = Explainer(TinyCNN(64, 16).eval(), image_head(16, len(LABELS)), LABELS, facts=facts)
    scales = explainer.calibrate(phantoms_64, ["Nodule"], split="val", n=4)
    assert scales["Nodule"] > 0 and explainer.scales == scales
    maps = explainer.explain_manifest(phantoms_64, split="test", limit=3, labels=["Nodule"],
                                      out_dir=tmp_path, progress=False)  # fmt: skip
    for m in maps:
        assert m.scale == scales["Nodule"]
        lines = m.caption(facts)
        assert "threshold 0.37, val-chosen, f1" in lines[0]
        assert "AUROC 0.52 [0.41, 0.63]" in lines[1] and "chance" in lines[1]
        assert "run-level scale" in lines[2]
        assert Image.open(m.overlay).width > 2 * 64 + 4


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_explainer_decodes_as_the_store(phantoms_64: Manifest, tmp_path, fit: str) -> None:
    """A non-square view: the model input is data.images.fit_square of the file."""
    from cxrfuse.data.images import fit_square

    row = phantoms_64.df.iloc[0].copy()
    view = dict(row["views"][0])
    with Image.open(view["path"]) as img:
        wide = img.convert("L").resize((96, 64))
    wide.save(tmp_path / "wide.png")
    view["path"] = str(tmp_path / "wide.png")
    row["views"] = [view]
    explainer = Explainer(TinyCNN(64, 16).eval(), image_head(16, len(LABELS)), LABELS, fit=fit)
    [loaded] = explainer.load_views(row)
    expected = explainer.encoder.preprocess(fit_square(wide, 64, fit))
    assert torch.equal(loaded.tensor, expected) and loaded.original.shape == (64, 96)


def test_a_study_whose_map_fails_is_a_warning_and_the_rest_is_explained(
    phantoms_64: Manifest, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrfuse.explain.explainer as explainer_module

    real = explainer_module.compute_cam
    calls = {"n": 0}

    def first_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("The input image should np.float32 in the range [0, 1]")
        return real(*args, **kwargs)

    monkeypatch.setattr(explainer_module, "compute_cam", first_fails)
    explainer = Explainer(TinyCNN(64, 16).eval(), image_head(16, len(LABELS)), LABELS)
    maps = explainer.explain_manifest(phantoms_64, split="test", limit=3, labels=["Nodule"],
                                      out_dir=tmp_path, progress=False)  # fmt: skip
    assert len(maps) == 2 and len(explainer.failures) == 1
    assert "ValueError: The input image should np.float32" in explainer.failures[0]
