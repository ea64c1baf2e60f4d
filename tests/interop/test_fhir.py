"""``predict --fhir`` and :func:`cxrfuse.interop.fhir.fhir_bundle`: a FHIR R4 Bundle with a
DiagnosticReport, one Observation per label and a Device, checked by fhir.resources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.inference import Predictor
from cxrfuse.interop.fhir import SYNTHETIC, fhir_bundle
from cxrfuse.problems import CxrfuseError

runner = CliRunner()


def _resources(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        out.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return out


def _check_bundle(bundle: dict, answer: dict, run_name: str) -> None:
    Bundle.model_validate(bundle)  # the R4(B) models accept it
    res = _resources(bundle)
    report, device = res["DiagnosticReport"][0], res["Device"][0]
    observations = {o["code"]["text"]: o for o in res["Observation"]}
    assert set(observations) == set(answer["labels"])
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert {r["reference"] for r in report["result"]} <= full_urls
    for label, obs in observations.items():
        assert obs["valueQuantity"]["value"] == pytest.approx(answer["probabilities"][label], abs=1e-6)
        threshold = next(c for c in obs["component"] if c["code"]["text"] == "threshold")
        decision = next(c for c in obs["component"] if c["code"]["text"] == "decision")
        assert threshold["valueQuantity"]["value"] == pytest.approx(answer["thresholds"][label], abs=1e-6)
        assert decision["valueBoolean"] is answer["decisions"][label]
        code = obs["interpretation"][0]["coding"][0]["code"]
        assert code == ("POS" if answer["decisions"][label] else "NEG")
        assert obs["device"]["reference"] in full_urls and obs["status"] == "preliminary"
    assert {"type": {"text": "run"}, "value": run_name} in device["version"]
    for warning in answer["warnings"]:
        assert warning in report["conclusion"]


def test_predict_fhir_phantom(image_run: Path, phantom_pngs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "answer.fhir.json"
    result = runner.invoke(app, ["predict", str(image_run), "--image", str(phantom_pngs[0]),
                                 "--view", "PA", "--fhir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    bundle = json.loads(out.read_text())
    _check_bundle(bundle, answer, image_run.name)
    report = _resources(bundle)["DiagnosticReport"][0]
    assert report["conclusion"].startswith(SYNTHETIC)  # the run was trained on phantoms
    device = _resources(bundle)["Device"][0]
    assert any("Test macro AUROC" in n["text"] for n in device["note"])  # evaluated run


def test_fhir_of_a_real_radiograph(image_run: Path, real_pngs: list[Path]) -> None:
    """A real NIH radiograph (512 px) through the Python API; a transaction bundle naming the
    DICOM study it answers."""
    prediction = Predictor(image_run).predict([real_pngs[0]], views=["PA"])
    bundle = fhir_bundle(prediction, image_run, study_uid="1.2.3.4", patient_id="P7",
                         bundle_type="transaction")  # fmt: skip
    _check_bundle(bundle, prediction.to_dict(), image_run.name)
    report = _resources(bundle)["DiagnosticReport"][0]
    assert report["identifier"][0]["value"] == "urn:oid:1.2.3.4"
    assert report["subject"]["identifier"]["value"] == "P7"
    assert all(e["request"]["method"] == "POST" for e in bundle["entry"])


def test_fhir_refuses_what_is_no_prediction() -> None:
    with pytest.raises(CxrfuseError, match="not a cxrfuse prediction: no .*probabilities"):
        fhir_bundle({"run": "x", "labels": ["a"]})
    with pytest.raises(CxrfuseError, match="bundle type 'batch'"):
        fhir_bundle({"run": "x", "labels": ["a"], "probabilities": {"a": 0.2},
                     "thresholds": {"a": 0.5}, "threshold_method": None,
                     "decisions": {"a": False}, "warnings": []}, bundle_type="batch")  # fmt: skip


def test_predict_fhir_beside_the_sr(image_run: Path, phantom_pngs: list[Path],
                                    tmp_path: Path) -> None:  # fmt: skip
    """``--fhir`` with ``--sr``: both written, from the same answer."""
    out, sr = tmp_path / "a.fhir.json", tmp_path / "a.dcm"
    result = runner.invoke(app, ["predict", str(image_run), "--image", str(phantom_pngs[1]),
                                 "--sr", str(sr), "--fhir", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["dicom_files"] == [str(sr)] and sr.is_file()
    _check_bundle(json.loads(out.read_text()), answer, image_run.name)
