"""DICOM in and out on the served tiny run: compressed DICOM predicts as the PNG it came from
(``predict`` and ``/v1/predict``), and ``predict --sr/--overlays/--draft-sr`` writes a TID 1500
SR, a machine-draft SR and Grad-CAM secondary captures that dciodvfy accepts without error and
whose content names each label, probability, threshold, decision and source image UID."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from cxrfuse.cli import app as cli
from cxrfuse.inference import Predictor, StudyImage
from cxrfuse.interop import dicom_results, object_kind
from cxrfuse.rundir import RunDir
from cxrfuse.serve import Limits, Service, create_app
from dicom_files import CODECS, LOSSLESS, dicom_of, phantom_radiograph, stretched

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "iu-nih-pairs"
REAL_IMAGES = REAL / "images" / "images_normalized"
JPEG_TOLERANCE = 0.02
"""Largest probability difference allowed for a JPEG-baseline (quality 95, lossy) DICOM."""
runner = CliRunner()


def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray, "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(served_run: Path) -> Predictor:
    return Predictor(served_run)


@pytest.fixture(scope="module")
def client(served_run: Path) -> TestClient:
    return TestClient(create_app(service=Service(served_run),
                                 limits=Limits(max_request_bytes=4_000_000)))  # fmt: skip


def _real_gray() -> np.ndarray:
    if not REAL_IMAGES.is_dir():
        pytest.skip(f"real radiographs absent ({REAL_IMAGES})")
    path = min(REAL_IMAGES.glob("*.png"))
    return stretched(np.asarray(Image.open(path).convert("L")))


def _phantom_gray(test_study: dict) -> np.ndarray:
    return stretched(np.asarray(Image.open(test_study["frontal"]).convert("L").resize((96, 96))))


@pytest.mark.parametrize("source", ["phantom", "real"])
def test_compressed_dicom_predicts_as_the_png(source: str, predictor: Predictor,
                                              client: TestClient, test_study: dict) -> None:  # fmt: skip
    gray = _real_gray() if source == "real" else _phantom_gray(test_study)
    text = test_study["indication"]
    png = predictor.predict([StudyImage("x.png", _png(gray), "PA")], indication=text)
    for codec in CODECS:
        data = dicom_of(gray, codec)
        got = predictor.predict([StudyImage(f"x-{codec}.dcm", data)], indication=text)
        assert got.views[0].format == "dicom" and got.views[0].view == "PA"
        for label in png.labels:
            if codec in LOSSLESS:  # the same pixels: the same probability
                assert got.probabilities[label] == png.probabilities[label], (codec, label)
            else:
                assert abs(got.probabilities[label] - png.probabilities[label]) < JPEG_TOLERANCE
        if codec in ("jpeg-baseline", "jpeg2000-lossless"):  # through the HTTP API too
            answer = client.post("/v1/predict", data={"indication": text, "draft": "false"},
                                 files=[("images", ("x.dcm", data, "application/dicom"))]).json()
            assert answer["probabilities"] == got.probabilities, codec


def test_unsupported_transfer_syntax_is_one_clear_error(predictor: Predictor,
                                                        client: TestClient) -> None:  # fmt: skip
    data = dicom_of(phantom_radiograph(), "mpeg2")
    with pytest.raises(Exception, match=r"mpeg\.dcm: .*unsupported DICOM transfer syntax MPEG2"):
        predictor.predict([StudyImage("mpeg.dcm", data)], indication="cough")
    reply = client.post("/v1/predict", data={"indication": "cough"},
                        files=[("images", ("mpeg.dcm", data, "application/dicom"))])
    assert reply.status_code == 400
    assert "1.2.840.10008.1.2.4.100" in reply.json()["error"]


# ----------------------------------------------------------------------------- DICOM out
def _items(ds: pydicom.Dataset):
    """Every content item of an SR, depth first."""
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _items(item)


def _meaning(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _groups(sr: pydicom.Dataset) -> dict[str, dict[str, object]]:
    """Per measurement group: its tracking identifier (the label), probability, threshold,
    decision and source image UIDs, read back from the content tree."""
    out = {}
    for group in _items(sr):
        if getattr(group, "ValueType", "") != "CONTAINER" or _meaning(group) != "Measurement Group":
            continue
        facts: dict[str, object] = {"sources": []}
        for item in group.ContentSequence:
            meaning = _meaning(item)
            if meaning == "Tracking Identifier":
                facts["label"] = str(item.TextValue)
            elif item.ValueType == "NUM":
                facts[meaning] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE" and meaning not in ("Finding",):
                facts["decision"] = str(item.ConceptCodeSequence[0].CodeMeaning)
                facts["finding"] = meaning
            elif item.ValueType == "IMAGE":
                facts["sources"].append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        out[str(facts["label"])] = facts
    return out


def _dciodvfy(path: Path) -> list[str]:
    """dciodvfy's error lines for one file (warnings are allowed: see docs/dicom.md)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: "
                    "`apt-get install dicom3tools` or `make system-deps`")
    done = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def _check_sr(sr: pydicom.Dataset, prediction: dict, source_uid: str) -> None:
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.VerificationFlag == "UNVERIFIED"
    groups = _groups(sr)
    assert sorted(groups) == sorted(prediction["labels"])
    for label, facts in groups.items():
        assert facts["Probability"] == pytest.approx(prediction["probabilities"][label], abs=1e-6)
        threshold = [v for k, v in facts.items() if k.startswith("Decision threshold")]
        assert threshold == [pytest.approx(prediction["thresholds"][label], abs=1e-6)]
        assert facts["decision"] == ("Present" if prediction["decisions"][label] else "Absent")
        assert source_uid in facts["sources"]
    texts = [str(i.TextValue) for i in _items(sr) if i.ValueType == "TEXT"]
    for warning in prediction["warnings"]:
        assert warning[:200] in texts or any(warning[:200] in t for t in texts)
    assert any("SYNTHETIC" in t for t in texts)  # the served run is trained on phantoms
    library = [i for i in _items(sr) if i.ValueType == "IMAGE"]
    assert source_uid in {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in library}


@pytest.mark.parametrize("source", ["phantom", "real"])
def test_predict_sr_overlays_draft_pass_dciodvfy(source: str, served_run: Path,
                                                 test_study: dict, tmp_path: Path) -> None:  # fmt: skip
    gray = _real_gray() if source == "real" else _phantom_gray(test_study)
    dcm = tmp_path / "frontal.dcm"
    dcm.write_bytes(dicom_of(gray, "jpeg-baseline"))
    source_uid = str(pydicom.dcmread(dcm).SOPInstanceUID)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["predict", str(served_run), "--image", str(dcm),
                                 "--indication", test_study["indication"],
                                 "--sr", str(out / "result.dcm"), "--overlays", str(out / "ov"),
                                 "--draft-sr"])  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    files = [Path(f) for f in answer["dicom_files"]]
    assert files[:2] == [out / "result.dcm", out / "result-draft.dcm"]
    assert len(files) == 2 + len(answer["overlays"]) > 2  # a map not shown says so, burned in
    for path in files:
        assert _dciodvfy(path) == [], path
    sr = pydicom.dcmread(out / "result.dcm")
    _check_sr(sr, answer, source_uid)
    study = pydicom.dcmread(dcm).StudyInstanceUID
    draft = pydicom.dcmread(out / "result-draft.dcm")
    assert draft.PreliminaryFlag == "PRELIMINARY" and draft.VerificationFlag == "UNVERIFIED"
    assert "MACHINE" in draft.ContentSequence[0].TextValue
    assert draft.ConceptNameCodeSequence[0].CodeMeaning.startswith("Machine-drafted")
    assert answer["report_draft"]["text"] in [str(i.TextValue) for i in _items(draft)]
    for path in files[2:]:
        sc = pydicom.dcmread(path)
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid
        assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.ndim == 3
    assert {pydicom.dcmread(p).StudyInstanceUID for p in files} == {study}


def test_png_sources_get_generated_uids_said_in_the_sr(served_run: Path, test_study: dict,
                                                       predictor: Predictor, tmp_path: Path
                                                       ) -> None:  # fmt: skip
    images = [StudyImage.from_path(test_study["frontal"]), StudyImage.from_path(test_study["lateral"])]
    prediction = predictor.predict(images, indication=test_study["indication"])
    objs = dicom_results(prediction, images, RunDir(served_run), draft="Heart size normal.")
    again = dicom_results(prediction, images, RunDir(served_run))
    assert [object_kind(o) for o in objs] == ["sr", "draft"]
    sr = objs[0]
    uids = [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in _items(sr) if i.ValueType == "IMAGE"]  # fmt: skip
    assert uids and set(uids) == {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                                  for i in _items(again[0]) if i.ValueType == "IMAGE"}  # fmt: skip
    assert sr.StudyInstanceUID == again[0].StudyInstanceUID == objs[1].StudyInstanceUID
    texts = " ".join(str(i.TextValue) for i in _items(sr) if i.ValueType == "TEXT")
    assert "PNG/JPEG without a DICOM header" in texts and "generated by cxrfuse" in texts
    path = tmp_path / "png-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert _dciodvfy(path) == []


def test_v1_predict_dicom_option(client: TestClient, test_study: dict, tmp_path: Path) -> None:
    data = dicom_of(_phantom_gray(test_study), "rle")
    answer = client.post("/v1/predict", data={"indication": test_study["indication"],
                                               "dicom": "true", "explain": "true"},
                         files=[("images", ("f.dcm", data, "application/dicom"))]).json()  # fmt: skip
    kinds = [o["kind"] for o in answer["dicom"]]
    assert kinds[0] == "sr" and "draft" in kinds and "overlay" in kinds
    source_uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    for i, obj in enumerate(answer["dicom"]):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(base64.b64decode(obj["dicom_base64"]))
        assert _dciodvfy(path) == [], obj["kind"]
        assert str(pydicom.dcmread(path).SOPInstanceUID) == obj["sop_instance_uid"]
    _check_sr(pydicom.dcmread(tmp_path / "0.dcm"), answer, source_uid)
    plain = client.post("/v1/predict", data={"indication": "cough"},
                        files=[("images", ("f.dcm", data, "application/dicom"))]).json()
    assert plain["dicom"] is None
