"""``cxrfuse pacs`` against Debian's Orthanc (DICOMweb plugin) on loopback: radiographs stored
as DICOM (uncompressed and JPEG baseline) are found, retrieved, predicted and answered with an
SR read back from Orthanc; a second run does no work; a study that cannot be answered is one
error line and the rest goes on. Fake servers (HTTP 500, no answer) cover the server faults."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pacs_helpers import fake_dicomweb, instance_count, radiograph, store
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.interop.pacs import answer_studies, dicom_date, parse_modalities
from cxrfuse.problems import ConfigError, CxrfuseError

runner = CliRunner()


def _pacs(run: Path, url: str, *args: str):
    return runner.invoke(app, ["pacs", str(run), "--url", url, *args])


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _walk(items, out: dict) -> None:
    """Collect the names, texts, numbers and referenced UIDs of an SR content tree."""
    for item in items or []:
        for code in getattr(item, "ConceptNameCodeSequence", []) or []:
            out["names"].append(str(code.CodeMeaning))
        for code in getattr(item, "ConceptCodeSequence", []) or []:
            out["codes"].append(str(code.CodeMeaning))
        if "TextValue" in item:
            out["texts"].append(str(item.TextValue))
        for measured in getattr(item, "MeasuredValueSequence", []) or []:
            out["numbers"].append(float(measured.NumericValue))
        for ref in getattr(item, "ReferencedSOPSequence", []) or []:
            out["uids"].append(str(ref.ReferencedSOPInstanceUID))
        _walk(getattr(item, "ContentSequence", None), out)


def sr_content(ds: pydicom.Dataset) -> dict[str, list]:
    out: dict[str, list] = {"names": [], "codes": [], "texts": [], "numbers": [], "uids": []}
    _walk(ds.ContentSequence, out)
    for study in getattr(ds, "CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in study.ReferencedSeriesSequence:
            out["uids"] += [str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence]
    return out


def read_back_sr(url: str, study_uid: str, run_name: str) -> pydicom.Dataset:
    """The run's SR of a study, retrieved from the server over WADO-RS."""
    from cxrfuse.interop.pacs import SERIES_UID, _value, is_run_sr

    client = DICOMwebClient(url)
    found = []
    for series in client.search_for_series(study_uid, search_filters={"Modality": "SR"}):
        for ds in client.retrieve_series(study_uid, _value(series, SERIES_UID)):
            if is_run_sr(ds.to_json_dict(), run_name):
                found.append(ds)
    assert len(found) == 1, f"{len(found)} SR(s) of run {run_name} in study {study_uid}"
    return found[0]


def _check_answered(url: str, run: Path, studies: dict[str, list[pydicom.Dataset]]) -> None:
    """Each study's SR names each label with its probability and threshold and references
    every source image; the prediction matches a local predict of the same pixels."""
    import io

    from cxrfuse.inference import Predictor, StudyImage

    predictor = Predictor(run)
    for study_uid, sources in studies.items():
        sr = read_back_sr(url, study_uid, run.name)
        assert sr.StudyInstanceUID == study_uid and sr.Modality == "SR"
        content = sr_content(sr)
        files = []
        for source in sources:
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, source, enforce_file_format=True)
            files.append(StudyImage(f"instance {source.SOPInstanceUID}", buffer.getvalue()))
        local = predictor.predict(files)  # the same instances predicted here
        for label in local.labels:
            assert any(label in text for text in content["names"] + content["codes"]
                       + content["texts"]), content  # fmt: skip
            for value in (local.probabilities[label], local.thresholds[label]):
                assert any(abs(n - value) < 1e-4 for n in content["numbers"]), (value, content)
        for source in sources:
            assert str(source.SOPInstanceUID) in content["uids"]


def _round_trip(orthanc: str, image_run: Path, pngs: list[Path], date: str,
                geometry: bool = True) -> None:  # fmt: skip
    studies = {}
    for i, png in enumerate(pngs[:2]):
        uid = generate_uid()
        ds = radiograph(png, uid, syntax=("explicit", "jpeg")[i % 2], date=date, patient=f"P{i}",
                        geometry=geometry)  # fmt: skip
        studies[uid] = [ds]
    store(orthanc, [d for ds in studies.values() for d in ds])
    iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    result = _pacs(image_run, orthanc, "--date", iso)
    assert result.exit_code == 0, result.output
    assert "2 answered, 0 skipped" in result.output and "0 failed" in result.output, result.output
    _check_answered(orthanc, image_run, studies)
    before = instance_count(orthanc)
    again = _pacs(image_run, orthanc, "--date", iso)
    assert again.exit_code == 0, again.output
    assert "0 answered, 2 skipped" in again.output, again.output
    assert instance_count(orthanc) == before  # the second run stored nothing


def test_round_trip_phantom(orthanc: str, image_run: Path, phantom_pngs: list[Path]) -> None:
    _round_trip(orthanc, image_run, phantom_pngs, "20240301")


def test_round_trip_real_radiographs(orthanc: str, image_run: Path, real_pngs: list[Path]) -> None:
    """Real NIH radiographs (512 px PNG, so no orientation or pixel spacing in the header), one
    uncompressed and one JPEG-compressed study."""
    _round_trip(orthanc, image_run, real_pngs, "20240302", geometry=False)


def test_overlays_stored_before_the_sr(orthanc: str, image_run: Path,
                                       phantom_pngs: list[Path]) -> None:  # fmt: skip
    """``--overlays``: one Grad-CAM secondary capture per view and label, in the study, each
    referencing its source image; the SR too."""
    uid = generate_uid()
    source = radiograph(phantom_pngs[2], uid, date="20240305", patient="O", syntax="jpeg")
    store(orthanc, [source])
    before = instance_count(orthanc)
    result = _pacs(image_run, orthanc, "--study", uid, "--overlays")
    assert result.exit_code == 0, result.output
    assert "1 answered" in result.output and "stored 2 object(s)" in result.output, result.output
    assert instance_count(orthanc) == before + 2
    read_back_sr(orthanc, uid, image_run.name)
    client = DICOMwebClient(orthanc)
    captures = [ds for series in client.search_for_series(uid)
                if series["00080060"]["Value"][0] not in ("CR", "SR")
                for ds in client.retrieve_series(uid, series["0020000E"]["Value"][0])]  # fmt: skip
    assert len(captures) == 1
    refs = [str(r.ReferencedSOPInstanceUID) for r in captures[0].SourceImageSequence]
    assert refs == [str(source.SOPInstanceUID)]


def test_a_failing_study_does_not_stop_the_rest(orthanc: str, image_run: Path,
                                               phantom_pngs: list[Path]) -> None:  # fmt: skip
    good, empty, mpeg = generate_uid(), generate_uid(), generate_uid()
    date = "20240303"
    store(orthanc, [radiograph(phantom_pngs[0], good, date=date, patient="G"),
                    radiograph(phantom_pngs[1], empty, date=date, patient="E", pixels=False),
                    radiograph(phantom_pngs[1], mpeg, date=date, patient="M", syntax="mpeg2")])
    result = _pacs(image_run, orthanc, "--date", "2024-03-03")
    assert result.exit_code == 2, result.output
    assert "1 answered, 0 skipped" in result.output and "2 failed" in result.output
    errors = _errors(result.output)
    assert len(errors) == 2, result.output
    assert any(empty in e and "no image instances of modality CR/DX" in e for e in errors), errors
    assert any(mpeg in e and "MPEG2" in e and "cannot be decoded" in e for e in errors), errors
    read_back_sr(orthanc, good, image_run.name)
    before = instance_count(orthanc)
    summary = answer_studies(image_run, orthanc, date="2024-03-03", progress=False)  # the API
    assert [o.status for o in summary.outcomes] == ["skipped", "failed", "failed"] or sorted(
        o.status for o in summary.outcomes) == ["failed", "failed", "skipped"]
    assert instance_count(orthanc) == before  # nothing stored, nothing lost


def test_since_and_limit_answer_the_oldest(orthanc: str, image_run: Path,
                                           phantom_pngs: list[Path]) -> None:  # fmt: skip
    """``--since`` finds the studies of that day and later; ``--limit 1`` takes the oldest."""
    newer, older = generate_uid(), generate_uid()
    store(orthanc, [radiograph(phantom_pngs[0], newer, date="20240308", patient="N", pixels=False),
                    radiograph(phantom_pngs[0], older, date="20240307", patient="O", pixels=False)])
    result = _pacs(image_run, orthanc, "--since", "2024-03-07", "--limit", "1")
    assert "1 study found" in result.output, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and older in errors[0], result.output
    both = _pacs(image_run, orthanc, "--since", "2024-03-07")
    assert "2 studies found" in both.output and len(_errors(both.output)) == 2, both.output


def test_a_study_without_radiographs(orthanc: str, image_run: Path,
                                     phantom_pngs: list[Path]) -> None:  # fmt: skip
    uid = generate_uid()
    store(orthanc, [radiograph(phantom_pngs[0], uid, modality="MR", date="20240304")])
    result = _pacs(image_run, orthanc, "--study", uid)
    assert result.exit_code == 2, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and uid in errors[0], result.output
    assert "no image instances of modality CR/DX (the study holds 1 series: MR)" in errors[0]
    missing = _pacs(image_run, orthanc, "--study", "1.2.3.999")
    assert missing.exit_code == 2 and "1.2.3.999: no such study" in missing.output


@pytest.mark.parametrize(("mode", "expected"), [
    ("500", "cannot search for studies: the DICOMweb server answered HTTP 500"),
    ("hang", "cannot search for studies: the DICOMweb server at"),
    ("500-after-search", "study 1.2.3.4.5: the DICOMweb server answered HTTP 500"),
    ("hang-after-search", "study 1.2.3.4.5: the DICOMweb server at"),
])  # fmt: skip
def test_server_faults(mode: str, expected: str, image_run: Path) -> None:
    with fake_dicomweb(mode) as url:
        result = _pacs(image_run, url, "--timeout", "1")
    assert result.exit_code == 2, result.output
    errors = _errors(result.output)
    assert len(errors) == 1 and expected in errors[0], result.output
    assert "Traceback" not in result.output
    if mode.startswith("hang"):
        assert "did not answer within 1 s" in errors[0]


def test_options_are_checked() -> None:
    assert dicom_date("2024-01-31", "--since") == "20240131"
    assert parse_modalities("cr, DX") == ("CR", "DX")
    with pytest.raises(ConfigError, match="--since '31/01/2024': not a date"):
        dicom_date("31/01/2024", "--since")
    with pytest.raises(ConfigError, match="--modality"):
        parse_modalities("CR;DX")
    with pytest.raises(CxrfuseError, match="--url 'ftp://x'"):
        answer_studies("unused", "ftp://x")


def test_only_the_runs_own_sr_marks_a_study_answered(image_run: Path,
                                                     phantom_pngs: list[Path]) -> None:  # fmt: skip
    """The machine-draft SR and another run's SR do not make a study count as answered."""
    import io

    from cxrfuse.inference import Predictor, StudyImage
    from cxrfuse.interop import dicom_results
    from cxrfuse.interop.pacs import is_run_sr

    ds = radiograph(phantom_pngs[0], generate_uid())
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    images = [StudyImage("a", buffer.getvalue())]
    prediction = Predictor(image_run).predict(images)
    sr, draft = dicom_results(prediction, images, image_run, draft="No acute disease.")
    assert is_run_sr(sr.to_json_dict(), image_run.name)
    assert not is_run_sr(draft.to_json_dict(), image_run.name)
    assert not is_run_sr(sr.to_json_dict(), "another-run")


def test_draft_and_overlays_stored_with_the_sr(orthanc: str, image_run: Path, tiny_phantoms: Path,
                                              phantom_pngs: list[Path], tmp_path: Path) -> None:  # fmt: skip
    """``--draft --overlays`` on a run with a retrieval generator: the machine-draft SR and the
    secondary capture are stored, then the SR; the study then counts as answered."""
    import shutil

    from cxrfuse.generation.pipeline import generate_retrieval
    from cxrfuse.rundir import RunDir

    run = shutil.copytree(image_run, tmp_path / "drafting")
    generate_retrieval(RunDir(run).generation_dir("retrieval").path, manifest=tiny_phantoms,
                       store=image_run.parents[1] / "store", image_encoder="efficientnet-lite0",
                       input_size=64, k=3, consensus="medoid",
                       score={"n_boot": 5, "n_boot_language": 5, "meteor": False},
                       progress=False)  # fmt: skip
    uid = generate_uid()
    store(orthanc, [radiograph(phantom_pngs[3], uid, date="20240309", patient="D")])
    before = instance_count(orthanc)
    result = _pacs(run, orthanc, "--study", uid, "--draft", "--overlays")
    assert result.exit_code == 0, result.output
    assert "stored 3 object(s)" in result.output, result.output
    assert instance_count(orthanc) == before + 3
    read_back_sr(orthanc, uid, run.name)
    again = _pacs(run, orthanc, "--study", uid, "--draft", "--overlays")
    assert "0 answered, 1 skipped" in again.output and instance_count(orthanc) == before + 3
