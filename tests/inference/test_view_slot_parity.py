"""Train/serve parity of the view-slot layout: for every view fusion mode, the head inputs
training builds from the embedding store equal those :class:`Predictor` builds from the same
image files, for studies with a frontal and a lateral view, views of unknown position, a
lateral view only, and views listed lateral first; fine-tuning and explain pick the same files
for the same slots; and ``predict`` on a run's own test studies reproduces its
``predictions.parquet`` (phantom images, efficientnet-lite0 at 64 px: its ``weights: none`` draw gives near-constant
features, and a model whose output ignores the image would pass any layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrfuse.data import read_manifest
from cxrfuse.data.views import VIEW_MODES, view_slots
from cxrfuse.explain.explainer import view_slots as explain_slots
from cxrfuse.inference import Predictor, StudyImage, ViewRead
from cxrfuse.problems import ConfigError
from cxrfuse.rundir import RunDir, p_column
from cxrfuse.training.finetune import view_slots as finetune_slots

KINDS = ("known", "unknown", "lateral-only", "lateral-first")
"""The study kinds of the parity manifest, in turn by row."""


def _views(views: list[dict], kind: str) -> list[dict]:
    views = [dict(v) for v in views]
    if kind == "unknown":
        return [{**v, "view": "UNKNOWN"} for v in views]
    if kind == "lateral-only":
        return [v for v in views if v["view"] == "LATERAL"]
    if kind == "lateral-first":
        return sorted(views, key=lambda v: v["view"] != "LATERAL")
    return views


@pytest.fixture(scope="module")
def parity_manifest(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny phantom manifest with every fourth study's views unknown, lateral only, or
    listed lateral first (the rest PA + LATERAL)."""
    manifest = read_manifest(tiny_phantoms)
    df = manifest.df.copy()
    df["views"] = [_views(list(v), KINDS[i % 4]) for i, v in enumerate(df["views"])]
    path = tmp_path_factory.mktemp("parity") / "manifest.parquet"
    manifest.replace(df=df).save(path)
    return path


@pytest.fixture(scope="module", params=VIEW_MODES)
def parity_run(request: pytest.FixtureRequest, parity_manifest: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:  # fmt: skip
    """One image-only stored-embedding run per view fusion mode (one store shared)."""
    from cxrfuse.config import validate_run
    from cxrfuse.runtime import quiet_lightning
    from cxrfuse.training import train_run

    root = parity_manifest.parent
    config = {
        "name": f"parity-{request.param}",
        "runs_dir": str(root / "runs"),
        "data": {"manifest": str(parity_manifest), "task": "normal-abnormal",
                 "store": str(root / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": 64,
                  "views": request.param, "embed_batch_size": 16},
        "model": {"kind": "concat-mlp", "modalities": ["image"], "hidden": [16]},
        "training": {"max_epochs": 4, "batch_size": 8},
    }  # fmt: skip
    with quiet_lightning():
        return Path(train_run(validate_run(config, "parity"), progress=False))


def _study_images(views: list[dict]) -> list[StudyImage]:
    return [StudyImage.from_path(v["path"], str(v["view"])) for v in views]


def test_layout_rule() -> None:
    positions = ["LATERAL", "UNKNOWN", "PA", "AP"]
    assert view_slots(positions, "frontal") == [2]
    assert view_slots(positions, "concat") == [2, 0]
    assert view_slots(positions, "mean") == view_slots(positions, "attention") == [0, 1, 2, 3]
    # no stand-in: a missing kind leaves its slot empty, an unknown view fills no fixed slot
    assert view_slots(["UNKNOWN", "LATERAL"], "frontal") == [None]
    assert view_slots(["UNKNOWN", "UNKNOWN"], "concat") == [None, None]
    assert view_slots([], "mean") == []
    with pytest.raises(ConfigError, match="image.views"):
        view_slots(positions, "max")


def test_training_and_predictor_build_the_same_head_inputs(parity_run: Path) -> None:
    predictor = Predictor(parity_run)
    mode = predictor.run.sidecar.image.views
    arrays = predictor.run.arrays()
    manifest = predictor.run.manifest()
    rows = {str(s): r for s, r in zip(manifest.df["study_id"], manifest.df.itertuples())}
    position = {str(s): i for i, s in enumerate(manifest.df["study_id"])}
    tuned_all, _ = finetune_slots(manifest, mode)
    kinds = {str(s): KINDS[i % 4] for i, s in enumerate(manifest.df["study_id"])}
    seen = set()
    for i, sid in enumerate(arrays.study_ids):
        views = list(rows[str(sid)].views)
        got = predictor.predict(_study_images(views)).inputs
        image, mask = got["image"][0].numpy(), got["image_mask"][0].numpy()
        if mode == "mean":  # training stores the study's mean view (one slot), predict every view
            assert arrays.image.shape[1] == 1 and mask.any() == arrays.image_mask[i, 0]
            if mask.any():
                np.testing.assert_allclose(image[mask].mean(0), arrays.image[i, 0], rtol=1e-4,
                                           atol=1e-5, err_msg=f"{mode} {sid}")  # fmt: skip
            image, mask = arrays.image[i], arrays.image_mask[i]  # checked: the rest as usual
        width = image.shape[0]
        np.testing.assert_array_equal(mask, arrays.image_mask[i][:width], err_msg=f"{mode} {sid}")
        assert not arrays.image_mask[i][width:].any()  # training's padding only
        # the same vectors up to float noise of encoding in another batch size
        np.testing.assert_allclose(image, arrays.image[i][:width], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{mode} {sid} ({kinds[str(sid)]})")  # fmt: skip
        seen.add(kinds[str(sid)])
        # fine-tuning and explain put the same files in the same slots
        paths = [str(v["path"]) for v in views]
        reads = [ViewRead(p, "png", 64, 64, str(v["view"]), "client", None)
                 for p, v in zip(paths, views)]  # fmt: skip
        served = {slot: paths[index] for index, slot in predictor.slots(reads)}
        tuned = tuned_all[position[str(sid)]]
        assert {s: p for s, p in enumerate(tuned) if p is not None} == served
        assert {s: str(v["path"]) for s, v in explain_slots(views, mode)} == served
        if mode in ("frontal", "concat") and kinds[str(sid)] in ("unknown", "lateral-only"):
            assert not mask[0]  # no frontal view: the frontal slot is empty, as in training
    assert seen == set(KINDS)


def test_predict_reproduces_the_runs_test_predictions(parity_run: Path) -> None:
    predictor = Predictor(parity_run)
    manifest = predictor.run.manifest()
    saved = pd.read_parquet(RunDir(parity_run).predictions_path)
    test = saved[saved["split"] == "test"]
    views = dict(zip(manifest.df["study_id"].astype(str), manifest.df["views"]))
    kinds = {str(s): KINDS[i % 4] for i, s in enumerate(manifest.df["study_id"])}
    assert {kinds[str(s)] for s in test["study_id"]} == set(KINDS)  # every kind is tested
    assert saved[p_column(predictor.labels[0])].std() > 1e-3  # the output reads the image
    for row in test.itertuples():
        result = predictor.predict(_study_images(list(views[str(row.study_id)])))
        for label in predictor.labels:
            assert result.probabilities[label] == pytest.approx(
                getattr(row, p_column(label)), abs=1e-5), (row.study_id, label)
