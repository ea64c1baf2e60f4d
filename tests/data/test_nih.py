"""NIH ChestX-ray14 ingest: a tiny CSV + PNG folder written here, and the shared 310-image sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrfuse.data import read_manifest
from cxrfuse.data.labels import NIH_LABELS
from cxrfuse.data.nih import ingest_nih, parse_age
from cxrfuse.problems import DataError

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-cxr14-sample"

# the real Data_Entry_2017_v2020.csv header: the bracketed names hold unquoted commas
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
ROWS = [
    "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143",  # line 2
    "00000001_001.png,No Finding,1,1,59,M,AP,2500,2048,0.168,0.168",  # line 3
    "00000002_000.png,Pleural_Thickening,0,2,081Y,F,PA,2048,2500,0.168,0.168",  # 2017-style age
    "00000003_000.png,Hernia|Wobble,0,3,45,F,PA,2048,2500,0.168,0.168",  # line 5: unknown name
    "00000004_000.png,No Finding,0,4,30,M,AP,2048,2500,0.168,0.168",  # line 6: PNG not written
    "00000005_000.png,,0,5,30,M,AP,2048,2500,0.168,0.168",  # line 7: no labels -> skipped
    "00000006_000.png,No Finding|Mass,0,6,70,X,PA,2048,2500,0.168,0.168",  # line 8: conflicting
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",  # line 9: duplicate
]
STUDIES = ["00000001_000", "00000001_001", "00000002_000", "00000003_000", "00000004_000", "00000006_000"]


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=128).save(path)


@pytest.fixture
def nih(tmp_path: Path) -> tuple[Path, Path]:
    """``Data_Entry.csv`` and an image folder laid out like the release (images_00N/images/)."""
    csv = tmp_path / "Data_Entry.csv"
    csv.write_text("\n".join([HEADER, *ROWS]) + "\n")
    images = tmp_path / "nih"
    for i, stem in enumerate(s for s in STUDIES if s != "00000004_000"):
        _png(images / f"images_00{1 + i % 2}" / "images" / f"{stem}.png")
    return csv, images


def _label_row(manifest, study: str, names: list[str]) -> list[float]:
    row = manifest.df.set_index("study_id").loc[study]
    return [float(row[f"label_{n.lower()}"]) for n in names]


def test_tiny_folder_rows_labels_and_problems(nih: tuple[Path, Path]) -> None:
    csv, images = nih
    manifest, log = ingest_nih(csv, images)
    df = manifest.df
    assert df["study_id"].tolist() == STUDIES
    assert df["patient_id"].tolist() == ["1", "1", "2", "3", "4", "6"]
    assert manifest.dataset == "nih-cxr14" and manifest.images == "real"
    assert manifest.labels == [*NIH_LABELS, "abnormal"]
    assert manifest.tasks["nih14"] == list(NIH_LABELS)
    assert manifest.tasks["normal-abnormal"] == ["abnormal"]
    assert manifest.tasks["pleural-thickening"] == ["Pleural_Thickening"]
    assert len(manifest.tasks) == 16
    expected = {  # label name -> value, per study; every other NIH label is 0
        "00000001_000": {"Cardiomegaly": 1, "Effusion": 1, "abnormal": 1},
        "00000001_001": {},
        "00000002_000": {"Pleural_Thickening": 1, "abnormal": 1},
        "00000003_000": {"Hernia": 1, "abnormal": 1},
        "00000004_000": {},
        "00000006_000": {"Mass": 1, "abnormal": 1},
    }
    matrix = manifest.label_matrix()
    for i, study in enumerate(STUDIES):
        want = [float(expected[study].get(n, 0)) for n in manifest.labels]
        assert matrix[i].tolist() == want, study
    assert df["source_labels"].tolist()[3] == ["Hernia", "Wobble"]
    assert df["age"].tolist() == [58.0, 59.0, 81.0, 45.0, 30.0, 70.0]
    assert [s if isinstance(s, str) else None for s in df["sex"]] == ["M", "M", "F", "F", "M", None]
    views = [vs[0] for vs in df["views"]]
    assert [v["view"] for v in views] == ["PA", "AP", "PA", "PA", "AP", "PA"]
    assert [v["image_id"] for v in views] == STUDIES
    assert views[4]["path"] is None
    assert views[0]["path"] == str((images / "images_001/images/00000001_000.png").resolve())
    assert all(Path(v["path"]).is_file() for i, v in enumerate(views) if i != 4)
    assert not manifest.has_report().any()
    assert log.counts() == {"malformed-row": 1, "duplicate-row": 1, "unknown-finding": 1,
                            "conflicting-labels": 1, "missing-image": 1}
    where = {p.kind: p.where for p in log.problems}
    assert where == {"malformed-row": f"{csv}:7", "duplicate-row": f"{csv}:9",
                     "unknown-finding": f"{csv}:5", "conflicting-labels": f"{csv}:8",
                     "missing-image": "00000004_000.png"}
    assert "'Wobble'" in next(p.message for p in log.problems if p.kind == "unknown-finding")
    assert manifest.info["counts"] == {"rows_in_csv": 8, "studies": 6, "images_on_disk": 5}


def test_view_filter_and_round_trip(nih: tuple[Path, Path], tmp_path: Path) -> None:
    csv, images = nih
    manifest, _ = ingest_nih(csv, images, views=["AP"])
    assert manifest.df["study_id"].tolist() == ["00000001_001", "00000004_000"]
    assert manifest.info["views"] == ["AP"]
    full, _ = ingest_nih(csv, images)
    back = read_manifest(full.save(tmp_path / "nih.parquet"))
    assert back.labels == full.labels and back.tasks == full.tasks and back.info == full.info
    assert back.df["views"].tolist() == full.df["views"].tolist()
    assert np.array_equal(back.label_matrix(), full.label_matrix())
    assert back.df["age"].tolist() == full.df["age"].tolist()


def test_minimal_columns_and_errors(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("Image Index,Finding Labels,Patient ID\nx_000.png,Nodule,9\n")
    (tmp_path / "img").mkdir()
    manifest, log = ingest_nih(csv, tmp_path / "img")
    assert manifest.images == "none" and log.counts() == {"missing-image": 1}
    assert manifest.df["views"][0] == [{"image_id": "x_000", "path": None, "view": "UNKNOWN"}]
    assert np.isnan(manifest.df["age"][0])
    csv.write_text("Image Index,Finding Labels\nx_000.png,Nodule\n")
    with pytest.raises(DataError, match=r"labels\.csv: missing required column 'Patient ID'"):
        ingest_nih(csv, tmp_path / "img")
    with pytest.raises(DataError, match="image folder not found"):
        ingest_nih(csv, tmp_path / "absent")
    with pytest.raises(DataError, match=r"Data_Entry\.csv: NIH label CSV not found"):
        ingest_nih(tmp_path / "Data_Entry.csv", tmp_path / "img")


def test_strict_mode_raises(nih: tuple[Path, Path]) -> None:
    csv, images = nih
    with pytest.raises(DataError, match=r"Data_Entry\.csv:7.*strict mode"):
        ingest_nih(csv, images, strict=True)


def test_parse_age() -> None:
    ages = parse_age(pd.Series(["61", "061Y", "006M", "", "abc", "030D"]))
    assert ages.round(3).tolist()[:3] == [61.0, 61.0, 0.5]
    assert ages.isna().tolist()[3:5] == [True, True]
    assert round(ages.iloc[5], 3) == round(30 / 365.25, 3)


def test_shared_sample() -> None:
    if not (SAMPLE / "labels.csv").exists():
        pytest.skip(f"{SAMPLE} not present")
    manifest, log = ingest_nih(SAMPLE / "labels.csv", SAMPLE / "images")
    assert len(manifest) == 310 and len(log) == 0
    assert manifest.df["study_id"].is_unique
    nih14 = manifest.label_matrix("nih14")
    assert int((nih14.sum(axis=1) == 0).sum()) == 50
    assert int(manifest.df["label_abnormal"].sum()) == 260
    assert int(nih14.sum()) == 425  # finding mentions in labels.csv
    paths = [v["path"] for vs in manifest.df["views"] for v in vs]
    assert len(paths) == 310 and all(p is not None and Path(p).is_file() for p in paths)
    assert manifest.images == "real"
    views = pd.Series([vs[0]["view"] for vs in manifest.df["views"]]).value_counts().to_dict()
    assert views == {"PA": 250, "AP": 60}
    first = manifest.df.iloc[0]
    assert (first["study_id"], first["patient_id"], first["age"], first["sex"]) == ("00000075_000", "75", 61.0, "F")
    assert _label_row(manifest, "00000075_000", ["Cardiomegaly", "Hernia", "abnormal"]) == [1.0, 0.0, 1.0]
