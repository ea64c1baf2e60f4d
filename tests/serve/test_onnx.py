"""ONNX export of the served path (image encoder + head): parity with PyTorch on the run's
phantom test studies, read from their files, and the onnxruntime backend of predict/serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_export(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from cxrfuse.cli import app

    out = tmp_path_factory.mktemp("onnx") / "exported"
    result = CliRunner().invoke(app, ["export", str(served_run), "--to", str(out),
                                      "--format", "onnx"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "max |Δp|" in result.output
    return out


def test_parity_on_test_studies(onnx_export: Path) -> None:
    report = json.loads((onnx_export / "onnx_parity.json").read_text())
    assert report["studies"] >= 3
    assert report["max_abs_diff"] <= 1e-4
    assert report["passed"]
    files = json.loads((onnx_export / "export.json").read_text())["files"]
    assert {"model.onnx", "onnx_parity.json", "model.safetensors"} <= set(files)


def test_predict_backend_matches_torch(onnx_export: Path, test_study: dict) -> None:
    from cxrfuse.inference import Predictor

    images = [test_study["frontal"], test_study["lateral"]]
    torch_answer = Predictor(onnx_export).predict(images, indication=test_study["indication"])
    onnx_answer = Predictor(onnx_export, backend="onnxruntime").predict(
        images, indication=test_study["indication"])
    for label, p in torch_answer.probabilities.items():
        assert abs(onnx_answer.probabilities[label] - p) <= 1e-4
    assert onnx_answer.decisions == torch_answer.decisions
    assert onnx_answer.inputs["image"].shape == torch_answer.inputs["image"].shape
    # one view only: the graph reads a single slot
    single = Predictor(onnx_export, backend="onnxruntime").predict(images[:1])
    reference = Predictor(onnx_export).predict(images[:1])
    assert max(abs(single.probabilities[k] - v) for k, v in reference.probabilities.items()) <= 1e-4


def test_predict_cli_backend(onnx_export: Path, test_study: dict) -> None:
    from typer.testing import CliRunner

    from cxrfuse.cli import app

    result = CliRunner().invoke(app, ["predict", str(onnx_export), "--image", test_study["frontal"],
                                      "--backend", "onnxruntime"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "probabilities" in json.loads(result.output)


def test_backend_without_onnx_model_is_a_clear_error(served_run: Path) -> None:
    from cxrfuse.inference import Predictor
    from cxrfuse.problems import DataError

    with pytest.raises(DataError, match="model.onnx"):
        Predictor(served_run, backend="onnxruntime")


def test_served_onnxruntime_equals_stored_torch_prediction(onnx_export: Path, served_run: Path,
                                                           test_study: dict) -> None:
    import pandas as pd
    from fastapi.testclient import TestClient

    from cxrfuse.serve.app import create_app

    client = TestClient(create_app(onnx_export, backend="onnxruntime"))
    assert client.get("/v1/model").json()["backend"] == "onnxruntime"
    frontal, lateral = (Path(test_study[k]).read_bytes() for k in ("frontal", "lateral"))
    files = [("images", (n, d, "application/octet-stream")) for n, d in (("f.png", frontal),
                                                                           ("l.png", lateral))]
    answer = client.post("/v1/predict", files=files,
                         data={"views": ["PA", "LATERAL"], "indication": test_study["indication"]})
    assert answer.status_code == 200, answer.text
    p = answer.json()["probabilities"]["abnormal"]
    stored = pd.read_parquet(served_run / "predictions.parquet").set_index("study_id")
    assert p == pytest.approx(float(stored.loc[test_study["study_id"], "p__abnormal"]), abs=1e-4)
    explained = client.post("/v1/predict", files=files,
                            data={"views": ["PA", "LATERAL"], "indication": test_study["indication"],
                                  "explain": "true"}).json()  # Grad-CAM: the PyTorch encoder
    assert explained["probabilities"]["abnormal"] == pytest.approx(p, abs=1e-6)
    assert explained["overlays"] and explained["attribution"]


def test_real_radiographs_give_the_same_probabilities(onnx_export: Path) -> None:
    """Real NIH films (skipped when ../shared/data is absent) through both backends."""
    import io

    from PIL import Image
    from test_real_sizes import real_radiographs

    from cxrfuse.inference import Predictor, StudyImage

    films = real_radiographs()
    if not films:
        pytest.skip("../shared/data (real radiographs) is absent")
    studies = []
    for i, film in enumerate(films):
        buffer = io.BytesIO()
        Image.fromarray(film).save(buffer, format="PNG")
        studies.append(StudyImage(f"real{i}.png", buffer.getvalue(), "PA"))
    torch_predictor = Predictor(onnx_export)
    onnx_predictor = Predictor(onnx_export, backend="onnxruntime")
    for study in (studies, studies[:1]):
        a = torch_predictor.predict(study, indication="Cough").probabilities
        b = onnx_predictor.predict(study, indication="Cough").probabilities
        assert max(abs(a[k] - b[k]) for k in a) <= 1e-4
