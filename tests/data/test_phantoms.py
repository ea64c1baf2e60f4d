"""Synthetic chest radiographs: determinism, masks, label signal, and the phantom manifest."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from cxrfuse.data.labels import CHEXPERT_LABELS, IU_DEFAULT_FINDINGS, NIH_LABELS
from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.data.phantoms import (
    PhantomConfig,
    encode_png,
    lesion_kind,
    make_phantoms,
    mask_path,
    render_phantom,
    study_rng,
)
from cxrfuse.problems import DataError

IU_LABELS = ["abnormal", *(f.name for f in IU_DEFAULT_FINDINGS)]
SMALL = PhantomConfig(size=128)


def _render(labels: dict, study: str, view: str = "frontal", config: PhantomConfig = SMALL):
    return render_phantom(labels, view=view, rng=study_rng(config, study), config=config)


# ---------------------------------------------------------------------------- label rules
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("Cardiomegaly", "cardiomegaly"),
        ("Enlarged Cardiomediastinum", "cardiomegaly"),
        ("Pleural Effusion", "effusion"),
        ("Effusion", "effusion"),
        ("Calcinosis", "calcinosis"),
        ("Calcified Granuloma", "granuloma"),
        ("Opacity", "opacity"),
        ("Lung Opacity", "opacity"),
        ("Airspace Disease", "opacity"),
        ("Consolidation", "opacity"),
        ("Pneumonia", "opacity"),
        ("Infiltration", "opacity"),
        ("Edema", "opacity"),
        ("Pulmonary Atelectasis", "atelectasis"),
        ("Atelectasis", "atelectasis"),
        ("Nodule", "nodule"),
        ("Lung Lesion", "nodule"),
        ("Mass", "mass"),
        ("Pneumothorax", "pneumothorax"),
        ("abnormal", None),
        ("No Finding", None),
        ("Support Devices", None),
        ("Fracture", None),
        ("Pleural_Thickening", None),
    ],
)
def test_lesion_kind_matches_names_of_all_vocabularies(name: str, kind: str | None) -> None:
    assert lesion_kind(name) == kind
    assert lesion_kind(name.upper()) == kind


def test_every_vocabulary_has_drawable_labels() -> None:
    for vocabulary in (IU_LABELS, CHEXPERT_LABELS, NIH_LABELS):
        assert sum(lesion_kind(n) is not None for n in vocabulary) >= 5


# ---------------------------------------------------------------------------- rendering
def test_render_is_deterministic_per_seed_and_study() -> None:
    labels = {"Cardiomegaly": 1.0, "Nodule": 1.0, "abnormal": 1.0}
    config = PhantomConfig(size=256)
    a, masks_a = _render(labels, "CXR1", config=config)
    b, masks_b = _render(labels, "CXR1", config=config)
    assert a.dtype == np.uint8 and a.shape == (256, 256)
    assert encode_png(a) == encode_png(b)
    assert all(np.array_equal(masks_a[k], masks_b[k]) for k in masks_a)
    other, _ = _render(labels, "CXR2", config=config)
    reseeded, _ = _render(labels, "CXR1", config=PhantomConfig(size=256, seed=1))
    assert not np.array_equal(a, other)
    assert not np.array_equal(a, reseeded)


PINNED_PIXELS = "7992f396b3b1e0c16492b6d956ed4ced5af0c631515beea98858b5ecf9c3d844"
"""sha256 over the PNG bytes and masks below, as drawn by cxrfuse at e5e557c (before the module
was split): the demo's store, runs and predictions depend on these exact pixels. Change it only
for a deliberate change of the phantoms (and say so: cached phantoms go stale)."""


def test_pixels_are_pinned() -> None:
    names = ["abnormal", "Cardiomegaly", "Pleural Effusion", "Nodule", "Calcified Granuloma",
             "Opacity", "Pneumothorax", "Atelectasis", "Calcinosis", "Mass"]  # fmt: skip
    digest = hashlib.sha256()
    for size, seed in [(256, 0), (128, 3), (100, 1)]:  # half-res, stored, odd-size paths
        config = PhantomConfig(size=size, seed=seed)
        for i in range(4):
            labels = {n: float((i + j) % 3 == 0) for j, n in enumerate(names)}
            for view in ("frontal", "lateral"):
                image, masks = _render(labels, f"CXR{i}", view, config)
                digest.update(encode_png(image, 1))
                for name in sorted(masks):
                    digest.update(name.encode() + np.packbits(masks[name]).tobytes())
    assert digest.hexdigest() == PINNED_PIXELS

@pytest.mark.parametrize("level", [0, 1, 9])
def test_encode_png_round_trips(level: int) -> None:
    image = np.random.default_rng(level).integers(0, 256, (37, 53)).astype(np.uint8)
    image[:10] = 7  # a run, for the run-length coder
    with Image.open(io.BytesIO(encode_png(image, level))) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), image)


def test_views_of_a_study_differ_but_share_the_patient() -> None:
    frontal, fm = _render({"Nodule": 1}, "CXR9", "frontal")
    lateral, lm = _render({"Nodule": 1}, "CXR9", "LATERAL")
    assert not np.array_equal(frontal, lateral)
    assert fm["Nodule"].any() and lm["Nodule"].any()
    # same patient: the nodule sits at the same height in both views
    rows_f, rows_l = np.nonzero(fm["Nodule"])[0], np.nonzero(lm["Nodule"])[0]
    assert abs(rows_f.mean() - rows_l.mean()) < 0.15 * frontal.shape[0]


@pytest.mark.parametrize("view", ["frontal", "lateral"])
def test_masks_exactly_for_positive_labels_with_a_rule(view: str) -> None:
    names = [*IU_LABELS, "Pneumothorax", "Mass", "Support Devices"]
    for i in range(6):
        rng = np.random.default_rng(i)
        values = rng.choice([1.0, 0.0, np.nan], size=len(names), p=[0.5, 0.3, 0.2])
        labels = dict(zip(names, values.tolist()))
        labels["Support Devices"] = 1.0
        img, masks = _render(labels, f"S{i}", view)
        expected = {n for n, v in labels.items() if v == 1.0 and lesion_kind(n)}
        assert set(masks) == expected
        for name, mask in masks.items():
            assert mask.dtype == np.bool_ and mask.shape == img.shape
            assert mask.any(), f"empty mask for {name}"
            assert mask.mean() < 0.35, f"{name} covers most of the image"
            border = np.r_[mask[0], mask[-1], mask[:, 0], mask[:, -1]]
            assert not border.any(), f"{name} mask touches the image border"


def test_unknown_and_negative_labels_draw_nothing() -> None:
    blank, masks = _render({"Nodule": np.nan, "Opacity": None, "Cardiomegaly": 0.0}, "X")
    assert masks == {}
    none, _ = _render({}, "X")
    assert np.array_equal(blank, none)


def test_signal_zero_hides_lesions_but_keeps_masks() -> None:
    config = PhantomConfig(size=128, signal=0.0)
    positive, masks = _render(
        {"Nodule": 1, "Pleural Effusion": 1, "Cardiomegaly": 1}, "Z", config=config
    )
    negative, _ = _render({}, "Z", config=config)
    assert np.array_equal(positive, negative)
    assert set(masks) == {"Nodule", "Pleural Effusion", "Cardiomegaly"}


def test_looks_like_a_radiograph() -> None:
    img, _ = _render({}, "look", config=PhantomConfig(size=256))
    n = img.shape[0]
    lungs = np.r_[
        img[n // 3 : n // 2, n // 5 : n // 3].ravel(),
        img[n // 3 : n // 2, -n // 3 : -n // 5].ravel(),
    ]
    mediastinum = img[n // 3 : n // 2, n // 2 - 6 : n // 2 + 6]
    abdomen = img[-n // 8 :, n // 3 : -n // 3]
    assert lungs.mean() + 40 < mediastinum.mean()  # dark lungs, bright middle
    assert lungs.mean() + 40 < abdomen.mean()
    assert img.std() > 30  # uses the grey range, like a windowed radiograph


def _heart_width(img: np.ndarray) -> int:
    """Width (px) of the bright middle band on rows through the heart."""
    n = img.shape[0]
    profile = img[int(0.58 * n) : int(0.68 * n)].astype(float).mean(0)
    lung = np.r_[
        profile[int(0.18 * n) : int(0.28 * n)], profile[int(0.72 * n) : int(0.82 * n)]
    ].mean()
    heart = profile[int(0.45 * n) : int(0.60 * n)].max()
    return int((profile[int(0.12 * n) : int(0.88 * n)] > (lung + heart) / 2).sum())


def test_cardiomegaly_widens_the_heart() -> None:
    widths: dict[int, list[int]] = {0: [], 1: []}
    for i in range(40):
        img, _ = _render({"Cardiomegaly": float(i % 2)}, f"heart{i}")
        widths[i % 2].append(_heart_width(img))
    neg, pos = np.array(widths[0]), np.array(widths[1])
    assert pos.mean() - neg.mean() > 0.04 * SMALL.size  # ~0.07 of the image width in practice
    assert np.median(pos) > np.percentile(neg, 90)


def _pixel_auroc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``x`` as a score for ``y`` (either direction)."""
    ranks = rankdata(x, axis=0)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    auc = (ranks[y == 1].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.maximum(auc, 1 - auc)


def test_labels_are_learnable_but_no_single_pixel_gives_them_away() -> None:
    n = 200
    y = np.arange(n) % 2
    images = np.stack(
        [
            _render({"Cardiomegaly": float(t), "abnormal": 1.0}, f"clf{i}")[0]
            for i, t in enumerate(y)
        ]
    )
    small = images.reshape(n, 32, 4, 32, 4).mean((2, 4)).reshape(n, -1) / 255.0
    scores = cross_val_predict(
        LogisticRegression(C=0.1, max_iter=2000), small, y, cv=5, method="predict_proba"
    )
    assert roc_auc_score(y, scores[:, 1]) > 0.8
    best_pixel = _pixel_auroc(images.reshape(n, -1).astype(np.float32), y).max()
    assert best_pixel < 0.97, f"a single pixel separates the label (AUROC {best_pixel:.3f})"


# ---------------------------------------------------------------------------- make_phantoms
def _manifest() -> Manifest:
    def rec(i: int, labels: dict, views: list | None = None) -> dict:
        return {
            "study_id": f"CXR{i}",
            "patient_id": str(i),
            "findings": f"report {i}",
            "impression": "no acute disease" if not labels.get("abnormal") else "see findings",
            "views": views
            if views is not None
            else [{"image_id": f"CXR{i}_IM-1", "path": None, "view": "PA"}],
            "labels": labels,
        }

    records = [
        rec(1, {"abnormal": 0, **{f.name: 0 for f in IU_DEFAULT_FINDINGS}}),
        rec(2, {"abnormal": 1, "Cardiomegaly": 1, "Pleural Effusion": 1}),
        rec(
            3,
            {"abnormal": 1, "Nodule": 1, "Calcified Granuloma": 1},
            views=[
                {"image_id": "a", "path": None, "view": "PA"},
                {"image_id": "b", "path": None, "view": "LL"},
            ],
        ),
        rec(4, {"abnormal": 1, "Opacity": 1, "Airspace Disease": 1, "Pulmonary Atelectasis": 1}),
        rec(5, {"abnormal": None}),  # unindexed: every label unknown
        rec(6, {"abnormal": 1, "Calcinosis": 1}, views=[]),  # no views at all
    ]
    return Manifest.from_records(
        records, dataset="iu-xray", labels=IU_LABELS, tasks={"abnormal": ["abnormal"]}
    )


def test_make_phantoms_writes_files_and_a_phantom_manifest(tmp_path: Path) -> None:
    manifest = _manifest()
    out = make_phantoms(manifest, tmp_path, SMALL, progress=False)
    assert out.images == "phantom" and manifest.images == "none"
    meta = out.info["phantoms"]
    assert meta["config"]["size"] == 128 and meta["out_dir"] == str(tmp_path.resolve())
    assert "synthetic" in meta["note"]
    again = read_manifest(tmp_path / "manifest.parquet")
    assert again.images == "phantom" and again.info["phantoms"] == meta
    assert list(again.df["study_id"]) == list(manifest.df["study_id"])
    np.testing.assert_array_equal(again.label_matrix(), manifest.label_matrix())
    assert list(again.df["findings"]) == list(manifest.df["findings"])
    for sid, views in zip(again.df["study_id"], again.df["views"]):
        assert [v["view"] for v in views] == ["PA", "LATERAL"]
        assert [v["image_id"] for v in views] == [
            f"{sid}-phantom-frontal",
            f"{sid}-phantom-lateral",
        ]
        for v in views:
            with Image.open(v["path"]) as im:
                assert im.size == (128, 128) and im.mode == "L"
    for view in ("frontal", "lateral"):
        assert mask_path(tmp_path, "CXR2", view, "Pleural Effusion").exists()
        assert mask_path(tmp_path, "CXR6", view, "Calcinosis").exists()
        assert not mask_path(tmp_path, "CXR2", view, "Nodule").exists()
        with Image.open(mask_path(tmp_path, "CXR3", view, "Nodule")) as im:
            mask = np.asarray(im)
        assert mask.dtype == np.bool_ and mask.any()
    assert not list((tmp_path / "masks").glob("CXR1_*")) and not list(
        (tmp_path / "masks").glob("CXR5_*")
    )


def test_make_phantoms_resumes_without_rewriting(tmp_path: Path) -> None:
    manifest = _manifest()
    make_phantoms(manifest, tmp_path, SMALL, progress=False)
    files = sorted(p for p in tmp_path.rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    first = files[0].read_bytes()
    files[0].unlink()  # an interrupted run: one file missing
    out = make_phantoms(manifest, tmp_path, SMALL, progress=False)
    assert files[0].read_bytes() == first
    assert all(p.stat().st_mtime_ns == stamps[p] for p in files[1:])
    assert len(out) == len(manifest)
    with pytest.raises(DataError, match="different|config"):
        make_phantoms(manifest, tmp_path, PhantomConfig(size=128, seed=3), progress=False)


def test_make_phantoms_without_lateral_and_in_parallel(tmp_path: Path) -> None:
    config = PhantomConfig(size=64, lateral=False)
    serial = make_phantoms(_manifest(), tmp_path / "a", config, progress=False)
    parallel = make_phantoms(_manifest(), tmp_path / "b", config, progress=False, workers=2)
    for va, vb in zip(serial.df["views"], parallel.df["views"]):
        assert [v["view"] for v in va] == ["PA"]
        assert Path(va[0]["path"]).read_bytes() == Path(vb[0]["path"]).read_bytes()


def test_study_ids_with_odd_characters_get_safe_distinct_files(tmp_path: Path) -> None:
    records = [{"study_id": sid, "patient_id": "p", "labels": {}} for sid in ("a/b", "a_b", "a b")]
    manifest = Manifest.from_records(records, dataset="x", labels=["Nodule"])
    out = make_phantoms(manifest, tmp_path, PhantomConfig(size=64, lateral=False), progress=False)
    paths = [views[0]["path"] for views in out.df["views"]]
    assert len(set(paths)) == 3
    assert all(Path(p).parent == (tmp_path / "images").resolve() for p in paths)
