"""Views you can trust at predict time: run.json records the view kinds training read, the
warnings state them (and name a kind the run never read), views default to the upload order,
'L' is lateral, an unknown view spelling is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import png_as_dicom
from typer.testing import CliRunner

from cxrfuse.cli import app as cli
from cxrfuse.data import read_manifest
from cxrfuse.data.manifest import view_kind
from cxrfuse.inference import Predictor, StudyImage
from cxrfuse.problems import DataError
from cxrfuse.rundir import RunDir
from cxrfuse.serve import Service, create_app

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
NIH = SHARED / "nih-cxr14-sample"


@pytest.fixture
def predictor(served_run: Path) -> Predictor:
    return Predictor(served_run)


def test_run_json_counts_the_views_training_read(served_run: Path) -> None:
    info = RunDir(served_run).info()
    df = read_manifest(info.manifest).df
    train = df[df["split"] == "train"]
    # the served run fuses views by their mean: every view with pixels is read
    expected = {"frontal": 0, "lateral": 0, "unknown": 0}
    for views in train["views"]:
        for v in views:
            if v.get("path"):
                expected[view_kind(v["view"])] += 1
    assert info.views["train"] == {**expected, "studies": len(train)}
    assert expected["frontal"] > 0 and expected["lateral"] > 0
    assert set(info.views) == {"train", "val", "test"}


def test_warnings_state_the_real_training_views(predictor: Predictor, test_study: dict) -> None:
    counts = predictor.run.info.views["train"]
    text = predictor.training_views_text()
    assert text == (f"frontal and lateral views ({counts['frontal']} frontal, "
                    f"{counts['lateral']} lateral)")  # fmt: skip
    frontal_only = {"frontal": 12, "lateral": 0, "unknown": 0, "studies": 12}
    predictor.run.info.views = {"train": frontal_only}
    assert predictor.training_views_text() == "frontal views only (12 frontal)"
    result = predictor.predict([StudyImage.from_path(test_study["frontal"], "PA"),
                                StudyImage.from_path(test_study["lateral"], "L")],
                               indication=test_study["indication"])  # fmt: skip
    [warning] = [w for w in result.warnings if "never saw" in w]
    assert warning.startswith(f"{test_study['lateral']}: a lateral view (LATERAL, client)")
    assert "trained on frontal views only (12 frontal)" in warning
    # three views: the third has no place in the upload order and stays unknown
    three = predictor.predict([test_study["frontal"], test_study["lateral"], test_study["frontal"]],
                              views=["PA", "LL", None], indication="cough")  # fmt: skip
    [unknown] = [w for w in three.warnings if "unknown view position" in w]
    assert unknown.endswith("the model was trained on frontal views only (12 frontal)")
    assert not [w for w in three.warnings if "trained on frontal and lateral" in w]
    # training read views of unknown position: a lateral may have been among them
    predictor.run.info.views = {"train": {**frontal_only, "unknown": 3}}
    assert predictor.training_views_text() == "frontal views (12 frontal, 3 unknown)"
    result = predictor.predict([test_study["lateral"]], views=["L"], indication="cough")
    assert not [w for w in result.warnings if "never saw" in w]


def test_a_run_without_a_record_says_so_and_guesses_nothing(predictor: Predictor,
                                                          test_study: dict) -> None:  # fmt: skip
    predictor.run.info.views = {}  # a run.json written before cxrfuse recorded views
    assert predictor.training_views is None
    assert "did not record" in predictor.training_views_text()
    result = predictor.predict([StudyImage.from_path(test_study["lateral"], "LATERAL")],
                               indication="cough")  # fmt: skip
    assert not [w for w in result.warnings if "never saw" in w]


def test_views_default_to_the_upload_order(predictor: Predictor, test_study: dict) -> None:
    images = [test_study["frontal"], test_study["lateral"]]
    given = predictor.predict(images, views=["PA", "LATERAL"], indication="cough")
    default = predictor.predict(images, indication="cough")
    assert [(v.view, v.view_source) for v in default.views] == [
        ("FRONTAL", "upload order"), ("LATERAL", "upload order")]
    assert [v.slot for v in default.views] == [v.slot for v in given.views]
    assert default.probabilities == pytest.approx(given.probabilities, abs=1e-6)
    assert sum("taken as frontal from the upload order" in w for w in default.warnings) == 1
    assert not [w for w in given.warnings if "upload order" in w]
    # a DICOM header's lateral leaves the frontal place to the image without a position
    lateral = StudyImage("lat.dcm", png_as_dicom(test_study["lateral"], view="LL"))
    mixed = predictor.predict([lateral, StudyImage.from_path(test_study["frontal"])],
                              indication="cough")  # fmt: skip
    assert [(v.view, v.view_source) for v in mixed.views] == [
        ("LL", "dicom header"), ("FRONTAL", "upload order")]


def test_l_is_lateral_and_an_unknown_spelling_is_refused(predictor: Predictor,
                                                         test_study: dict) -> None:  # fmt: skip
    for spelling in ("L", "LL", "LLAT", "lat", "Lateral", "RL"):
        result = predictor.predict([test_study["lateral"]], views=[spelling], indication="cough")
        assert view_kind(result.views[0].view) == "lateral", spelling
    with pytest.raises(DataError, match="'sideways' is not a view position"):
        predictor.predict([test_study["lateral"]], views=["sideways"], indication="cough")


def test_cli_predict_view_default_and_l(served_run: Path, test_study: dict) -> None:
    runner = CliRunner()
    args = ["predict", str(served_run), "--image", test_study["frontal"], "--image",
            test_study["lateral"], "--indication", "cough"]  # fmt: skip
    default = json.loads(runner.invoke(cli, args).output)
    assert [v["view_source"] for v in default["views"]] == ["upload order", "upload order"]
    given = json.loads(runner.invoke(cli, [*args, "--view", "PA", "--view", "L"]).output)
    assert [v["view"] for v in given["views"]] == ["PA", "LATERAL"]
    bad = runner.invoke(cli, [*args, "--view", "PA", "--view", "sideways"])
    assert bad.exit_code == 2 and "error:" in bad.output and "sideways" in bad.output


def test_served_answer_carries_the_training_view_warning(served_run: Path,
                                                         test_study: dict) -> None:  # fmt: skip
    service = Service(served_run)
    service.predictor.run.info.views = {"train": {"frontal": 5, "lateral": 0, "unknown": 0,
                                                  "studies": 5}}  # fmt: skip
    client = TestClient(create_app(service=service))
    lateral = Path(test_study["lateral"]).read_bytes()
    body = client.post("/v1/predict", files=[("images", ("lat.png", lateral, "image/png"))],
                       data={"views": ["L"], "indication": "cough"}).json()  # fmt: skip
    assert any(w.startswith("lat.png: a lateral view") for w in body["warnings"])
    assert body["views"][0]["view"] == "LATERAL"


@pytest.mark.skipif(not (NIH / "labels.csv").exists(), reason="shared NIH sample absent")
def test_a_real_frontal_without_a_view_is_taken_as_frontal(predictor: Predictor) -> None:
    path = next(iter(sorted((NIH / "images").glob("*.png"))))
    result = predictor.predict([path], indication="cough")
    assert (result.views[0].view, result.views[0].view_source) == ("FRONTAL", "upload order")
    assert result.views[0].slot == 0 and set(result.probabilities) == set(predictor.labels)


def test_model_card_states_the_training_views(served_run: Path) -> None:
    service = Service(served_run)
    card = TestClient(create_app(service=service)).get("/v1/model").json()
    counts = RunDir(served_run).info().views["train"]
    assert card["encoders"]["image"]["training_views"] == (
        f"frontal and lateral views ({counts['frontal']} frontal, {counts['lateral']} lateral)")
