"""Real-size images of any aspect ratio through ``POST /v1/predict`` with ``explain=true``:
portrait, landscape, 16-bit PNG, 12-bit DICOM and 3000-px variants made in the test from real NIH radiographs
(skipped when ``../shared/data`` is absent) and from a phantom (always runs). Every answer is 200
with probabilities and overlays. A failing Grad-CAM, attribution or draft becomes a warning that
names the exception message; the prediction is kept."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import dicom_bytes

from cxrfuse.rundir.models import ImageSide
from cxrfuse.serve import Limits, Service, create_app

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
REAL_DIRS = [SHARED / "iu-nih-pairs" / "images" / "images_normalized",
             SHARED / "nih-cxr14-sample" / "images"]  # fmt: skip


def real_radiographs() -> list[np.ndarray]:
    """A real radiograph (8-bit gray) of each shared folder present (none when absent)."""
    out = []
    for i, folder in enumerate(REAL_DIRS):
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if files:
            with Image.open(files[7 * i]) as img:  # two different films
                out.append(np.asarray(img.convert("L")))
    return out


def real_radiograph() -> np.ndarray | None:
    """One real NIH radiograph (8-bit gray), or None when the shared data is absent."""
    films = real_radiographs()
    return films[0] if films else None


def variants(gray: np.ndarray) -> dict[str, bytes]:
    """Real-size versions of one gray image: as real films come (white borders reach 1.0)."""

    def png(array: np.ndarray, mode: str | None = None) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array, mode).save(buffer, format="PNG")
        return buffer.getvalue()

    base = Image.fromarray(gray)
    portrait = np.asarray(base.resize((2048, 2160), Image.Resampling.BICUBIC)).copy()
    landscape = np.full((2048, 2160), 255, dtype=np.uint8)  # padded with white, as scanned
    landscape[:, 56:2104] = np.asarray(base.resize((2048, 2048), Image.Resampling.BICUBIC))
    tall = np.asarray(base.resize((1800, 3000), Image.Resampling.BILINEAR)).copy()
    for film in (portrait, landscape, tall):
        film[:300, :300] = 255  # a burned-in white label: resampled, it overshot 1.0 (issue 19)
    sixteen = (np.asarray(base.resize((2500, 2048), Image.Resampling.BILINEAR))
               .astype(np.uint16) * 257)  # fmt: skip
    twelve = np.asarray(base.resize((2500, 3000), Image.Resampling.BILINEAR)).astype(np.uint16) * 16
    return {"portrait-2048x2160.png": png(portrait), "landscape-2160x2048.png": png(landscape),
            "tall-1800x3000.png": png(tall), "wide-16bit-2500x2048.png": png(sixteen),
            "dicom-12bit-2500x3000.dcm": dicom_bytes(twelve)}


@pytest.fixture(scope="module")
def service(served_run: Path) -> Service:
    return Service(served_run)


@pytest.fixture(scope="module")
def client(service: Service) -> TestClient:
    return TestClient(create_app(service=service, limits=Limits(max_request_bytes=64_000_000)))


def _explained(client: TestClient, name: str, data: bytes) -> dict:
    response = client.post("/v1/predict", files=[("images", (name, data, "image/png"))],
                           data={"indication": "cough", "explain": "true"})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["probabilities"]["abnormal"] <= 1.0
    [overlay] = body["overlays"]
    png = Image.open(io.BytesIO(base64.b64decode(overlay["png_base64"])))
    assert png.format == "PNG" and max(png.size) >= 512
    assert overlay["caption"] and "AUROC" in overlay["caption"][1]
    assert "threshold" in overlay["caption"][0]
    assert overlay["scale"] and overlay["scale"] > 0 and "run-level scale" in overlay["caption"][2]
    assert overlay["shown"] or "flat" in overlay["note"] or "empty" in overlay["note"]
    assert not any("failed" in w for w in body["warnings"]), body["warnings"]
    return body


def _check_all(client: TestClient, gray: np.ndarray) -> None:
    for name, data in variants(gray).items():
        body = _explained(client, name, data)
        [view] = body["views"]
        assert f"{view['width']}x{view['height']}" in name


def test_real_radiographs_of_any_size_and_aspect_get_maps(client: TestClient) -> None:
    films = real_radiographs()
    if not films:
        pytest.skip("../shared/data (real NIH radiographs) is absent")
    for gray in films:  # one of iu-nih-pairs, one of nih-cxr14-sample
        _check_all(client, gray)


def test_phantom_at_real_sizes_gets_maps(client: TestClient, test_study: dict) -> None:
    with Image.open(test_study["frontal"]) as img:
        _check_all(client, np.asarray(img.convert("L")))


@pytest.mark.parametrize("part", ["overlays", "attribution", "drafter"])
def test_a_failing_explanation_is_a_warning_not_a_lost_prediction(
    service: Service, client: TestClient, test_study: dict, part: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    frontal = Path(test_study["frontal"]).read_bytes()
    files = [("images", ("f.png", frontal, "image/png"))]
    data = {"indication": test_study["indication"], "explain": "true"}
    expected = client.post("/v1/predict", files=files, data=data).json()["probabilities"]

    def broken(*args, **kwargs):
        raise ValueError("The input image should np.float32 in the range [0, 1]")

    monkeypatch.setattr(service, part, broken)
    with caplog.at_level(logging.WARNING, logger="cxrfuse.serve"):
        response = client.post("/v1/predict", files=files, data=data)
    assert response.status_code == 200
    body = response.json()
    assert body["probabilities"] == pytest.approx(expected)
    [warning] = [w for w in body["warnings"] if "failed" in w]
    assert "ValueError: The input image should np.float32 in the range [0, 1]" in warning
    assert "in the range [0, 1]" in caplog.text  # the log names the message, not only the type


def test_server_errors_log_the_message(service: Service, test_study: dict,
                                       monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    def broken(*args, **kwargs):
        raise RuntimeError("head exploded on shape (1, 3)")

    monkeypatch.setattr(service.predictor, "predict", broken)
    client = TestClient(create_app(service=service), raise_server_exceptions=False)
    frontal = Path(test_study["frontal"]).read_bytes()
    with caplog.at_level(logging.ERROR, logger="cxrfuse.serve"):
        response = client.post("/v1/predict", files=[("images", ("f.png", frontal, "image/png"))])
    assert response.status_code == 500 and "Traceback" not in response.text
    assert "head exploded on shape (1, 3)" in caplog.text


def test_lateral_given_to_a_frontal_only_model_gets_no_map(
    service: Service, client: TestClient, test_study: dict, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    side = service.run.sidecar.image.model_copy(update={"views": "frontal"})
    monkeypatch.setattr(service.run.sidecar, "image", side)
    if "views" in type(service.run.info).model_fields:  # a run that records its training views
        frontal_only = {"train": {"frontal": 20, "lateral": 0, "unknown": 0}}
        monkeypatch.setattr(service.run.info, "views", frontal_only)
    lateral = Path(test_study["lateral"]).read_bytes()
    body = client.post("/v1/predict", files=[("images", ("l.png", lateral, "image/png"))],
                       data={"views": ["LATERAL"], "explain": "true", "draft": "true"}).json()
    assert body["overlays"] == [] and body["probabilities"]
    assert body["report_draft"] is None
    assert "no draft report: the model read no view of this study" in body["warnings"]
    # the lateral is not read (training's rule): the frontal slot is empty, and said so
    assert [v["slot"] for v in body["views"]] == [None]
    assert any(w.startswith("no frontal view given") for w in body["warnings"])
    assert any(w.startswith("l.png: not read") for w in body["warnings"])


def test_old_sidecars_read_as_crop_and_new_runs_record_pad(served_run: Path) -> None:
    payload = json.loads((served_run / "model.json").read_text())
    assert payload["image"]["fit"] == "pad"  # a new run (config default)
    old = dict(payload["image"])
    old.pop("fit")
    assert ImageSide(**old).fit == "crop"


def test_cli_predict_explain_writes_overlays_of_a_real_size_landscape_film(
    served_run: Path, test_study: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from typer.testing import CliRunner

    from cxrfuse.cli import app as cli
    from cxrfuse.inference import Predictor, StudyImage

    gray = real_radiograph()
    if gray is None:  # the phantom at real size: always runs
        with Image.open(test_study["frontal"]) as img:
            gray = np.asarray(img.convert("L"))
    film = tmp_path / "landscape.png"
    film.write_bytes(variants(gray)["landscape-2160x2048.png"])
    out = tmp_path / "overlays"
    argv = ["predict", str(served_run), "--image", str(film), "--indication", "cough",
            "--explain", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    api = Predictor(served_run).predict([StudyImage.from_path(film)], indication="cough")
    assert body["probabilities"] == pytest.approx(api.probabilities)
    [overlay] = body["overlays"]
    assert "png_base64" not in overlay and Image.open(overlay["file"]).width >= 512
    assert Path(overlay["file"]).parent == out
    # a Grad-CAM that fails is a warning in the printed answer, the probabilities stay
    import cxrfuse.serve.service as service_module

    def broken(*args, **kwargs):
        raise ValueError("The input image should np.float32 in the range [0, 1]")

    monkeypatch.setattr(service_module.Service, "overlays", broken)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["probabilities"] == pytest.approx(api.probabilities)
    assert any("Grad-CAM failed (ValueError: The input image" in w for w in body["warnings"])


def test_views_never_seen_in_training_get_no_map() -> None:
    from cxrfuse.explain.runs import untrained_view_note

    mean = ImageSide(encoder="e", weights="w", views="mean", input_size=64, dim=8)
    frontal = mean.model_copy(update={"views": "frontal"})
    assert untrained_view_note(frontal, "LATERAL") and untrained_view_note(frontal, "LL")
    assert untrained_view_note(frontal, "PA") is None
    assert untrained_view_note(frontal, "UNKNOWN") is None  # mapped; predict warns
    assert untrained_view_note(mean, "LATERAL") is None  # no record: the fusion decides
    only_frontal = {"frontal": 250, "lateral": 0, "unknown": 0}
    assert "never saw a lateral" in untrained_view_note(mean, "LATERAL", only_frontal)
    assert untrained_view_note(mean, "AP", only_frontal) is None
    assert untrained_view_note(mean, "LATERAL", {"frontal": 9, "unknown": 3}) is None
    assert "never saw a frontal" in untrained_view_note(mean, "PA", {"lateral": 5})
