"""The HTTP API on a tiny real run (FastAPI's test client): predictions equal the stored ones,
DICOM views read like their PNGs, warnings, overlays, attribution, draft, and clean 4xx errors."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import dicom_bytes, png_as_dicom, run_config
from typer.testing import CliRunner

from cxrfuse.cli import app as cli
from cxrfuse.data.images import decode_resized, decode_resized_bytes, gray8_bytes, read_header
from cxrfuse.inference import Predictor, StudyImage
from cxrfuse.problems import CxrfuseError
from cxrfuse.serve import Limits, Service, create_app


@pytest.fixture(scope="module")
def service(served_run: Path) -> Service:
    return Service(served_run)


@pytest.fixture(scope="module")
def client(service: Service) -> TestClient:
    return TestClient(create_app(service=service, limits=Limits(max_request_bytes=2_000_000)))


def files_of(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "application/octet-stream")) for name, data in items]


def stored_probability(run: Path, study_id: str) -> float:
    frame = pd.read_parquet(run / "predictions.parquet")
    return float(frame.set_index("study_id").loc[study_id, "p__abnormal"])


def test_health_and_model_card(client: TestClient, served_run: Path) -> None:
    assert client.get("/health").json() == {"status": "ok", "run": "served"}
    card = client.get("/v1/model").json()
    sidecar = json.loads((served_run / "model.json").read_text())
    assert card["labels"] == ["abnormal"] and card["task"] == "normal-abnormal"
    assert card["thresholds"] == sidecar["thresholds"] and card["threshold_method"] == "f1"
    assert card["training_data"]["synthetic_images"] is True
    assert card["encoders"]["text"]["sections"] == ["indication"]
    auroc = card["test_metrics"]["headline"]["auroc"]
    assert 0 <= auroc["value"] <= 1 and auroc["ci"] is not None
    assert any("synthetic phantom" in w for w in card["warnings"])
    # one declaration of the answers: both /v1 routes name their pydantic model in the schema
    paths = client.get("/openapi.json").json()["paths"]
    for path, method, model in (("/v1/model", "get", "ModelCard"),
                                ("/v1/predict", "post", "PredictAnswer")):
        schema = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text
    assert "src=" not in page.text.replace('img.src = "data:', "")  # nothing loaded from outside
    assert "http://" not in page.text and "https://" not in page.text


def test_predict_equals_the_stored_test_prediction(client: TestClient, served_run: Path,
                                                   test_study: dict) -> None:
    frontal, lateral = (Path(test_study[k]).read_bytes() for k in ("frontal", "lateral"))
    answer = client.post("/v1/predict", files=files_of(("f.png", frontal), ("l.png", lateral)),
                         data={"views": ["PA", "LATERAL"],
                               "indication": test_study["indication"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    p = body["probabilities"]["abnormal"]
    assert p == pytest.approx(stored_probability(served_run, test_study["study_id"]), abs=1e-4)
    assert body["decisions"]["abnormal"] == (p >= body["thresholds"]["abnormal"])
    assert [v["view"] for v in body["views"]] == ["PA", "LATERAL"]
    assert body["text_sections"] == ["indication"]
    warnings = " | ".join(body["warnings"])
    assert "synthetic phantom" in warnings and "64x64 px is small for a chest radiograph" in warnings
    assert body["overlays"] is None and body["attribution"] is None
    draft = body["report_draft"]
    assert draft["generator"] == "retrieval (k = 3, medoid)" and len(draft["text"]) > 10


def test_dicom_view_reads_like_its_png_and_gives_its_view(client: TestClient, served_run: Path,
                                                          test_study: dict) -> None:
    png = Path(test_study["frontal"]).read_bytes()
    # MONOCHROME1 with a rescale: stored = (4095 - 16 * gray) / 2, so display = 16 * gray after
    # the modality LUT (x 2) and the inversion
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    inverted = dicom_bytes((4080 - 16 * gray) / 2, photometric="MONOCHROME1", slope=2.0,
                           view="PA")
    for dicom in (png_as_dicom(test_study["frontal"]), inverted):
        assert read_header(dicom).format == "dicom" and read_header(dicom).view == "PA"
        assert np.array_equal(gray8_bytes(dicom), gray8_bytes(png))
        assert np.array_equal(decode_resized_bytes(dicom, 64), decode_resized(test_study["frontal"], 64))
    lateral = png_as_dicom(test_study["lateral"], view="LL")
    body = client.post("/v1/predict", files=files_of(("lat.dcm", lateral), ("front.dcm", inverted)),
                       data={"indication": test_study["indication"]}).json()
    assert [(v["name"], v["view"], v["view_source"], v["slot"]) for v in body["views"]] == [
        ("lat.dcm", "LL", "dicom header", 0), ("front.dcm", "PA", "dicom header", 1)]
    assert body["probabilities"]["abnormal"] == pytest.approx(
        stored_probability(served_run, test_study["study_id"]), abs=1e-4)


def test_voi_window_is_applied() -> None:
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.float64), (256, 1))
    windowed = gray8_bytes(dicom_bytes(ramp, window=(2048, 1024)))
    row = windowed[0].astype(int)
    assert row[: 1536 // 16].max() == 0 and row[2560 // 16 :].min() == 255  # clipped outside
    assert 0 < row[2048 // 16] < 255


def test_explain_gives_overlays_and_attribution(client: TestClient, test_study: dict) -> None:
    frontal = Path(test_study["frontal"]).read_bytes()
    body = client.post("/v1/predict", files=files_of(("f.png", frontal)),
                       data={"indication": test_study["indication"], "explain": "true"}).json()
    [overlay] = body["overlays"]
    assert overlay["label"] == "abnormal" and overlay["image"] == "f.png"
    png = Image.open(io.BytesIO(base64.b64decode(overlay["png_base64"])))
    assert png.format == "PNG" and png.width > 64
    shares = body["attribution"]["labels"]["abnormal"]
    assert shares["image_share"] + shares["text_share"] == pytest.approx(1.0)
    assert body["attribution"]["removal"] == "mean"


def test_text_warnings(client: TestClient, test_study: dict) -> None:
    frontal = Path(test_study["frontal"]).read_bytes()
    report = "FINDINGS: The heart is enlarged. IMPRESSION: Cardiomegaly."
    body = client.post("/v1/predict", files=files_of(("f.png", frontal)),
                       data={"report": report}).json()
    warnings = " | ".join(body["warnings"])
    assert "trained on indication: it read an empty report" in warnings
    body = client.post("/v1/predict", files=files_of(("f.png", frontal)),
                       data={"indication": "Known cardiomegaly, follow-up"}).json()
    assert any("names a finding (abnormal: 'cardiomegaly')" in w for w in body["warnings"])
    body = client.post("/v1/predict", files=files_of(("x.png", frontal))).json()
    assert any("no report text given" in w for w in body["warnings"])
    assert any(w.startswith("x.png: no view position given") for w in body["warnings"])


def test_client_errors_are_json_and_name_the_file(client: TestClient, test_study: dict,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    frontal = Path(test_study["frontal"]).read_bytes()
    secret = "Patient Zyxwv has a secret indication"
    with caplog.at_level(logging.DEBUG):
        bad = client.post("/v1/predict", data={"indication": secret},
                          files=files_of(("good.png", frontal), ("notes.png", b"hello, not a png")))
    assert bad.status_code == 400
    assert bad.json() == {"error": "notes.png: not a PNG, JPEG or DICOM file (checked from its bytes)"}
    assert "Zyxwv" not in caplog.text
    truncated = client.post("/v1/predict", files=files_of(("cut.png", frontal[:60])))
    assert truncated.status_code == 400 and truncated.json()["error"].startswith("cut.png:")
    huge = client.post("/v1/predict", files=files_of(("big.png", b"\0" * 2_100_000)))
    assert huge.status_code == 413 and "limit" in huge.json()["error"]
    bomb = dicom_bytes(np.zeros((8, 8)))  # header says 8x8; make it claim 10^4 x 10^4
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(bomb))
    ds.Rows = ds.Columns = 10_000
    buffer = io.BytesIO()
    ds.save_as(buffer)
    refused = client.post("/v1/predict", files=files_of(("bomb.dcm", buffer.getvalue())))
    assert refused.status_code == 400 and "bomb.dcm" in refused.json()["error"]
    assert "exceed the limit" in refused.json()["error"]
    none = client.post("/v1/predict", data={"indication": "cough"})
    assert none.status_code == 400 and "at least one image" in none.json()["error"]
    mismatch = client.post("/v1/predict", files=files_of(("a.png", frontal)),
                           data={"views": ["PA", "LATERAL"]})
    assert mismatch.status_code == 400 and "2 view(s) given for 1 image(s)" in mismatch.json()["error"]
    for response in (bad, truncated, huge, refused, none, mismatch):
        assert "Traceback" not in response.text


def test_cli_predict_reads_dicom_and_prints_the_fields(served_run: Path, test_study: dict,
                                                       tmp_path: Path) -> None:
    dicom = tmp_path / "frontal"  # no suffix: the content decides
    dicom.write_bytes(png_as_dicom(test_study["frontal"]))
    result = CliRunner().invoke(cli, ["predict", str(served_run), "--image", str(dicom),
                                      "--indication", test_study["indication"]])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert set(body) >= {"probabilities", "thresholds", "decisions", "warnings", "views"}
    assert body["views"][0]["format"] == "dicom" and body["views"][0]["view"] == "PA"
    api = Predictor(served_run).predict([StudyImage.from_path(dicom)],
                                        indication=test_study["indication"])
    assert body["probabilities"] == api.probabilities
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    result = CliRunner().invoke(cli, ["predict", str(served_run), "--image", str(bad)])
    assert result.exit_code == 2 and "bad.dcm" in result.output and "Traceback" not in result.output


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its pixel data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))  # fmt: skip

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))  # fmt: skip


def test_decompression_bombs_are_refused_unread(client: TestClient) -> None:
    for name, data in (("bomb.png", png_claiming(8_000, 8_000)),
                       ("huge.png", png_claiming(30_000, 30_000))):
        response = client.post("/v1/predict", files=files_of((name, data)))
        assert response.status_code == 400 and response.json()["error"].startswith(f"{name}: ")


def test_empty_view_falls_back_to_the_dicom_header(client: TestClient, test_study: dict) -> None:
    dicom = png_as_dicom(test_study["frontal"], view="AP")
    png = Path(test_study["lateral"]).read_bytes()
    body = client.post("/v1/predict", files=files_of(("a.dcm", dicom), ("b.png", png)),
                       data={"views": ["", "LATERAL"]}).json()
    assert [(v["view"], v["view_source"]) for v in body["views"]] == [
        ("AP", "dicom header"), ("LATERAL", "client")]


def test_serve_refuses_a_directory_that_is_no_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished run" in result.output


def test_requests_over_the_concurrency_bound_get_503(service: Service, test_study: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import time

    import httpx

    real = service.analyse

    def slow(*args, **kwargs):
        time.sleep(1.0)  # a long study holds the only slot
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "analyse", slow)
    app = create_app(service=service, limits=Limits(max_concurrency=1, queue_timeout_s=0.2))
    frontal = Path(test_study["frontal"]).read_bytes()

    async def three() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            return await asyncio.gather(*(http.post("/v1/predict", files=files_of(("f.png", frontal)))
                                          for _ in range(3)))  # fmt: skip

    responses = asyncio.run(three())
    assert sorted(r.status_code for r in responses) == [200, 503, 503]
    assert all(r.json()["error"].startswith("the server is busy") for r in responses
               if r.status_code == 503)  # fmt: skip


def test_text_only_run_reads_no_images_and_needs_its_section(tiny_phantoms: Path, tmp_path: Path,
                                                             test_study: dict) -> None:
    from cxrfuse.config import validate_run
    from cxrfuse.runtime import quiet_lightning
    from cxrfuse.training import train_run

    raw = run_config(tmp_path, tiny_phantoms)
    raw["model"]["modalities"] = ["text"]
    with quiet_lightning():
        run_dir = train_run(validate_run(raw, "text-only"), progress=False)
    predictor = Predictor(run_dir)
    result = predictor.predict([StudyImage.from_path(test_study["frontal"])],
                               indication=test_study["indication"])
    assert 0 <= result.probabilities["abnormal"] <= 1
    assert "this model reads report text only: the images were ignored" in result.warnings
    assert any("never evaluated" in w for w in result.warnings)  # no metrics: 0.5 thresholds
    assert result.thresholds == {"abnormal": 0.5} and result.threshold_method is None
    with pytest.raises(CxrfuseError, match="has none of it"):
        predictor.predict(report="FINDINGS: clear lungs.")


def test_concat_slots_follow_the_view_positions(served_run: Path, test_study: dict) -> None:
    from cxrfuse.inference import ViewRead

    predictor = Predictor(served_run)
    read = [ViewRead(n, "png", 64, 64, v, "client", None)
            for n, v in (("a", "LATERAL"), ("b", "UNKNOWN"), ("c", "PA"))]
    predictor.run.sidecar.image.views = "concat"  # the slot rule of a concat head (2 slots)
    assert predictor.slots(read) == [(2, 0), (0, 1)]
    # training's rule: no view of unknown position stands in for the missing frontal one
    assert predictor.slots(read[:2]) == [(0, 1)]
    assert predictor.empty_slots(read[:2]) == ["frontal"] and predictor.empty_slots(read) == []
    predictor.run.sidecar.image.views = "frontal"
    assert predictor.slots(read) == [(2, 0)] and predictor.slots(read[:1]) == []
    predictor.run.sidecar.image.views = "mean"  # every view, in upload order (as training)
    assert predictor.slots(read) == [(0, 0), (1, 1), (2, 2)]


def test_jpeg_bytes_decode_as_the_store_decodes_a_jpeg_file(served_run: Path, test_study: dict,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "view.jpg"
    Image.open(test_study["frontal"]).convert("L").resize((300, 300)).save(path, quality=90)
    data = path.read_bytes()
    assert read_header(data).format == "jpeg" and read_header(data).width == 300
    assert np.array_equal(decode_resized_bytes(data, 64), decode_resized(path, 64))  # DCT draft too
    named_png = tmp_path / "looks_like.png"  # the name is not trusted: the bytes are a JPEG
    named_png.write_bytes(data)
    result = Predictor(served_run).predict([StudyImage.from_path(named_png)], indication="cough")
    assert result.views[0].format == "jpeg" and result.views[0].width == 300
