"""IU X-ray ingest: the bundled reports, an OpenI folder, the Kaggle and R2Gen layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrfuse.data import read_manifest
from cxrfuse.data.iu_xray import ingest_iu_xray, parse_openi_xml
from cxrfuse.data.labels import parse_findings
from cxrfuse.problems import DataError


def _png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(path)


def test_all_bundled_reports_parse(iu_manifest):
    df = iu_manifest.df
    assert len(df) == 3955
    assert (df["label_abnormal"] == 0).sum() == 1391  # MeSH major term "normal"
    assert (df["label_abnormal"] == 1).sum() == 2469
    assert df["label_abnormal"].isna().sum() == 95  # "No Indexing" only
    assert df["study_id"].is_unique and df["patient_id"].is_unique
    assert iu_manifest.images == "none" and not iu_manifest.has_images().any()
    assert df["views"].map(len).sum() == 7470  # parentImage entries, kept without pixels
    assert iu_manifest.tasks["normal-abnormal"] == ["abnormal"]
    cardiomegaly = iu_manifest.label_matrix(["Cardiomegaly"])[:, 0]
    assert np.nansum(cardiomegaly) == 375


def test_sections_and_views_of_report_1(iu_manifest):
    row = iu_manifest.df.set_index("study_id").loc["CXR1"]
    assert row["indication"] == "Positive TB test"
    assert row["impression"] == "Normal chest x-XXXX."
    assert row["source_labels"] == ["normal"]
    assert [v["image_id"] for v in row["views"]] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    assert all(v["path"] is None for v in row["views"])


def test_openi_folder_with_images(tmp_path, iu_xml_bytes):
    reports = tmp_path / "ecgen-radiology"
    reports.mkdir()
    for n, data in iu_xml_bytes.items():
        (reports / f"{n}.xml").write_bytes(data)
    (reports / "9999.xml").write_text("<eCitation><uId id='CXR9999'/>")  # truncated XML
    images = tmp_path / "NLMCXR_png"
    for image_id in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001"):
        _png(images / f"{image_id}.png")
    manifest, problems = ingest_iu_xray(images, reports=reports)
    assert len(manifest) == 6
    assert problems.counts()["malformed-xml"] == 1
    assert "9999.xml" in next(p.where for p in problems.problems if p.kind == "malformed-xml")
    assert problems.counts()["missing-image"] == 12 - 3
    assert manifest.images == "real"
    by_id = manifest.df.set_index("study_id")
    assert all(Path(v["path"]).exists() for v in by_id.loc["CXR1", "views"])
    assert by_id.loc["CXR2", "views"][1]["path"] is None
    assert by_id.loc["CXR2", "label_cardiomegaly"] == 1.0
    path = manifest.save(tmp_path / "iu.parquet")
    again = read_manifest(path)
    assert again.df["study_id"].tolist() == manifest.df["study_id"].tolist()
    assert again.problems["counts"]["missing-image"] == 9


def test_openi_strict_stops_at_first_problem(tmp_path, iu_xml_bytes):
    reports = tmp_path / "xml"
    reports.mkdir()
    (reports / "1.xml").write_bytes(iu_xml_bytes[2])  # report 2: plausible views (1 is PA+PA)
    (reports / "2.xml").write_text("not xml at all")
    with pytest.raises(DataError, match="2.xml"):
        ingest_iu_xray(reports=reports, strict=True)


def test_parse_openi_xml_names_file():
    with pytest.raises(DataError, match="broken.xml: malformed XML"):
        parse_openi_xml(b"<eCitation>", "broken.xml")
    with pytest.raises(DataError, match="uId"):
        parse_openi_xml(b"<eCitation></eCitation>", "nouid.xml")


def _kaggle_tree(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "indiana_reports.csv").write_text(
        "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        '1,normal,normal,Xray Chest PA and Lateral,Positive TB test,None.,"The heart is normal. No effusion.",Normal chest x-XXXX.\n'
        "2,Cardiomegaly/borderline;Pulmonary Artery/enlarged,Cardiomegaly;Pulmonary Artery,Chest,,none,Borderline cardiomegaly.,No acute pulmonary findings.\n"
        "3,Pleural Effusion/left;Opacity/lung/base/left,Pleural Effusion;Opacity,Chest,dyspnea,,Left effusion.,\n"
        "abc,normal,normal,Chest,,,,\n"
    )
    (root / "indiana_projections.csv").write_text(
        "uid,filename,projection\n"
        "1,1_IM-0001-4001.dcm.png,Frontal\n1,1_IM-0001-3001.dcm.png,Lateral\n"
        "2,2_IM-0652-1001.dcm.png,Frontal\n2,2_IM-0652-2001.dcm.png,Lateral\n"
        "3,3_IM-1384-1001.dcm.png,Frontal\n"
    )
    for name in ("1_IM-0001-4001", "1_IM-0001-3001", "2_IM-0652-1001", "2_IM-0652-2001"):
        _png(root / "images" / "images_normalized" / f"{name}.dcm.png")


def test_kaggle_layout(tmp_path):
    _kaggle_tree(tmp_path / "kaggle")
    manifest, problems = ingest_iu_xray(tmp_path / "kaggle", layout="kaggle")
    assert manifest.df["study_id"].tolist() == ["CXR1", "CXR2", "CXR3"]
    assert problems.counts() == {"missing-image": 1, "malformed-row": 1}
    by_id = manifest.df.set_index("study_id")
    assert [v["view"] for v in by_id.loc["CXR1", "views"]] == ["FRONTAL", "LATERAL"]
    assert by_id.loc["CXR1", "label_abnormal"] == 0.0
    assert by_id.loc["CXR2", "label_cardiomegaly"] == 1.0
    assert by_id.loc["CXR3", "label_pleural_effusion"] == 1.0 and by_id.loc["CXR3", "label_opacity"] == 1.0
    assert by_id.loc["CXR3", "views"][0]["path"] is None
    assert by_id.loc["CXR1", "indication"] == "Positive TB test"


def test_kaggle_layout_missing_column_names_file_and_column(tmp_path):
    root = tmp_path / "bad"
    _kaggle_tree(root)
    (root / "indiana_projections.csv").write_text("uid,filename\n1,a.png\n")
    with pytest.raises(DataError, match=r"indiana_projections.csv: missing required column 'projection'"):
        ingest_iu_xray(root, layout="kaggle")


def test_r2gen_layout_joins_labels_from_openi(tmp_path):
    root = tmp_path / "iu_xray"
    annotation = {
        "train": [{"id": "CXR2_IM-0652", "report": "borderline cardiomegaly.", "split": "train",
                   "image_path": ["CXR2_IM-0652/0.png", "CXR2_IM-0652/1.png"]}],
        "val": [{"id": "CXR1_1_IM-0001", "report": "normal chest.", "split": "val",
                 "image_path": ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"]}],
        "test": [{"id": "bogus", "image_path": []}],
    }
    root.mkdir()
    (root / "annotation.json").write_text(json.dumps(annotation))
    for rel in ("CXR2_IM-0652/0.png", "CXR2_IM-0652/1.png", "CXR1_1_IM-0001/0.png"):
        _png(root / "images" / rel)
    manifest, problems = ingest_iu_xray(root, layout="r2gen")
    by_id = manifest.df.set_index("study_id")
    assert set(by_id.index) == {"CXR1", "CXR2"}
    assert by_id.loc["CXR2", "split"] == "train" and by_id.loc["CXR1", "split"] == "val"
    assert by_id.loc["CXR2", "label_cardiomegaly"] == 1.0 and by_id.loc["CXR1", "label_abnormal"] == 0.0
    assert by_id.loc["CXR2", "report"] == "borderline cardiomegaly."
    assert by_id.loc["CXR2", "findings"].startswith("Borderline cardiomegaly")  # from the OpenI XML
    assert problems.counts() == {"malformed-row": 1, "missing-image": 1}


def test_custom_finding_vocabulary_with_synonyms():
    findings = parse_findings(["Granuloma=Calcified Granuloma|Granulomatous Disease", "Cardiomegaly"])
    manifest, _ = ingest_iu_xray(findings=findings)
    assert manifest.labels == ["abnormal", "Granuloma", "Cardiomegaly"]
    assert np.nansum(manifest.label_matrix(["Granuloma"])) >= 274  # union of both MeSH heads


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such reports archive"):
        ingest_iu_xray(reports=tmp_path / "nope.tgz")
    with pytest.raises(DataError, match="image folder does not exist"):
        ingest_iu_xray(tmp_path / "no-images")
    with pytest.raises(DataError, match="annotation.json: file not found"):
        ingest_iu_xray(tmp_path, layout="r2gen")
