"""``cxrfuse ingest csv``: a messy hospital-style export written here, in a long and a wide layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.config import load_table_spec
from cxrfuse.data import read_manifest
from cxrfuse.data.table_ingest import ingest_table
from cxrfuse.problems import ConfigError

runner = CliRunner()

LONG_HEADER = "Accession No,Patient MRN,PNG Path,View Position,Modality,Reason For Exam,Dx Pneumonia,Final DX,Age,Sex,Split"
LONG_ROWS = [
    'A1,P1,a1_pa.png,PA,CR,"cough, fever",yes,COVID-19,61,M,train',  # line 2
    "A1,P1,a1_lat.png,LAT,CR,\"cough, fever\",yes,COVID-19,61,M,train",  # line 3: second view of A1
    "A2,P2,a2.png,AP,DX,fever,no,normal,45,female,test",  # line 4
    "A3,P3,a3.png,PA,CR,,probably,normal,061Y,F,val",  # line 5: bad label value
    "A4,P4,a4.png,PA",  # line 6: ragged
    "A5,P5,gone.png,PA,CR,dyspnoea,NO,,30,X,train",  # line 7: missing image, bad sex
    "A6,P6,a6.png,PA,MR,head,no,normal,50,M,train",  # line 8: filtered out (MR)
    "A7,P7,a7.png,OBLIQUE,DX,trauma,TRUE,COVID-19,72,M,train",  # line 9: unknown view
    ",P8,a8.png,PA,CR,x,no,normal,40,F,train",  # line 10: no study id
    'A1,P1,a1_pa.png,PA,CR,"cough, fever",yes,COVID-19,61,M,train',  # line 11: duplicate image
    "A2,P9,a2b.png,LL,DX,fever,no,normal,45,F,test",  # line 12: patient differs from A2's first row
]
ON_DISK = ["a1_pa.png", "a1_lat.png", "a2.png", "a2b.png", "a3.png", "a6.png", "a7.png", "a8.png"]


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=100).save(path)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    for name in ON_DISK:
        _png(tmp_path / "png" / name)
    (tmp_path / "studies.csv").write_text("\n".join([LONG_HEADER, *LONG_ROWS, ""]))
    spec = {
        "table": "studies.csv", "images": "png", "dataset": "site-a",
        "study": "accession no",  # case differs
        "patient": "patient_mrn",  # underscore for a space
        "image": "PNG Path", "view": "view position", "filter": {"modality": ["CR", "DX"]},
        "sections": {"indication": "reason for exam"},
        "labels": {"pneumonia": {"column": "Dx Pneumonia"},
                   "covid-19": {"column": "final_dx", "positive": ["COVID-19"]}},
        "demographics": {"age": "age", "sex": "sex"}, "split": "split",
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path


def test_long_layout_gives_the_manifest_and_exact_problem_counts(export: Path) -> None:
    manifest, log = ingest_table(load_table_spec(export / "spec.yaml"))
    assert log.counts() == {"ragged-row": 1, "bad-label-value": 1, "missing-image": 1, "bad-sex": 1,
                            "unknown-view": 1, "malformed-row": 1, "duplicate-row": 1,
                            "conflicting-rows": 1}  # fmt: skip
    assert f"{export / 'studies.csv'}:6" in {p.where for p in log.problems if p.kind == "ragged-row"}
    df = manifest.df.set_index("study_id")
    assert list(df.index) == ["A1", "A2", "A3", "A5", "A7"]
    assert manifest.dataset == "site-a" and manifest.labels == ["pneumonia", "covid-19"]
    assert [v["view"] for v in df.at["A1", "views"]] == ["PA", "LATERAL"]
    assert [v["view"] for v in df.at["A2", "views"]] == ["AP", "LL"]
    assert df.at["A2", "patient_id"] == "P2"  # the first row's
    assert df.at["A5", "views"][0]["path"] is None
    assert df.at["A7", "views"][0]["view"] == "UNKNOWN"
    assert Path(df.at["A1", "views"][0]["path"]) == (export / "png" / "a1_pa.png").resolve()
    assert df.at["A1", "indication"] == "cough, fever" and df.at["A3", "indication"] is None
    pneumonia = manifest.label_matrix("pneumonia")[:, 0]
    covid = manifest.label_matrix("covid-19")[:, 0]
    np.testing.assert_array_equal(pneumonia, [1, 0, np.nan, 0, 1])
    np.testing.assert_array_equal(covid, [1, 0, 0, np.nan, 1])  # blank final dx: unknown
    assert df["age"].tolist() == [61, 45, 61, 30, 72]
    assert df["sex"].tolist() == ["M", "F", "F", None, "M"]
    assert df["split"].tolist() == ["train", "test", "val", "train", "train"]
    assert manifest.info["counts"] == {"rows_read": 10, "rows_after_filter": 9, "studies": 5,
                                       "images": 7, "images_on_disk": 6}  # fmt: skip
    assert manifest.images == "real" and set(manifest.tasks) == {"pneumonia", "covid-19", "multilabel"}


def test_wide_layout_tsv_and_parquet(tmp_path: Path) -> None:
    for name in ("s1_f.png", "s1_l.png", "s2_f.png", "s3_f.png"):
        _png(tmp_path / name)
    rows = ["Study ID\tpatient\tFrontal Image\tLateral Image\tEffusion\tProj",
            "S1\tP1\ts1_f.png\ts1_l.png\ttrue\tAP",
            "S2\tP2\ts2_f.png\t\tfalse\tPA",  # no lateral: not a problem
            "S3\tP3\ts3_f.png\ts3_gone.png\t\tPA",  # lateral not on disk
            "S1\tP1\ts1_f.png\ts1_l.png\ttrue\tAP"]  # fmt: skip
    (tmp_path / "wide.tsv").write_text("\n".join(rows) + "\n")
    raw = {"table": "wide.tsv", "study": "study id", "patient": "Patient",
           "image": ["frontal image", "lateral image"], "view": ["proj", "LATERAL"],
           "labels": {"Pleural Effusion": "effusion"}}  # fmt: skip
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    manifest, log = ingest_table(load_table_spec(tmp_path / "wide.yaml"))
    assert log.counts() == {"missing-image": 1, "duplicate-row": 1}
    df = manifest.df.set_index("study_id")
    assert [v["view"] for v in df.at["S1", "views"]] == ["AP", "LATERAL"]
    assert len(df.at["S2", "views"]) == 1 and df.at["S3", "views"][1]["path"] is None
    np.testing.assert_array_equal(manifest.label_matrix()[:, 0], [1, 0, np.nan])
    frame = pd.read_csv(tmp_path / "wide.tsv", sep="\t", dtype=str, keep_default_na=False)
    frame.to_parquet(tmp_path / "wide.parquet")
    (tmp_path / "wide-pq.yaml").write_text(yaml.safe_dump({**raw, "table": "wide.parquet"}, sort_keys=False))
    again, log2 = ingest_table(load_table_spec(tmp_path / "wide-pq.yaml"))
    assert log2.counts() == log.counts()
    pd.testing.assert_frame_equal(again.df, manifest.df)


def test_unknown_column_names_it_and_lists_the_columns(export: Path) -> None:
    spec = load_table_spec(export / "spec.yaml", {"labels": {"edema": {"column": "dx edema"}}})
    with pytest.raises(ConfigError, match=r"labels.edema.column: column 'dx edema' is not in .*"
                                          r"'Accession No', 'Patient MRN'"):
        ingest_table(spec)
    with pytest.raises(ConfigError, match="labels.edema.colum: unknown key"):
        load_table_spec(export / "spec.yaml", {"labels": {"edema": {"colum": "x"}}})


def test_cli_flags_and_bad_input(export: Path) -> None:
    out = export / "m.parquet"
    result = runner.invoke(app, ["ingest", "csv", "--table", str(export / "studies.csv"),
                                 "--images", str(export / "png"), "--study", "Accession No",
                                 "--patient", "patient mrn", "--image", "png path",
                                 "--label", "covid=Final DX:COVID-19", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 6 studies" in result.output and "ragged-row: 1" in result.output
    manifest = read_manifest(out)
    assert manifest.labels == ["covid"] and manifest.df["views"].map(len).sum() == 8
    result = runner.invoke(app, ["ingest", "csv", "--spec", str(export / "spec.yaml"),
                                 "--study", "accession", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2
    assert "error:" in result.output and "column 'accession' is not in" in result.output


def test_example_spec_validates() -> None:
    spec = load_table_spec(Path(__file__).resolve().parents[2] / "configs" / "ingest-csv-example.yaml")
    assert spec.labels["covid-19"].positive == ["COVID-19"] and spec.filter == {"modality": ["CR", "DX"]}


NIH_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-cxr14-sample"


@pytest.mark.skipif(not (NIH_SAMPLE / "labels.csv").is_file(), reason="NIH sample not present")
def test_the_real_nih_table_through_ingest_csv_matches_ingest_nih() -> None:
    from cxrfuse.data.nih import ingest_nih

    findings = ["Effusion", "Cardiomegaly", "Hernia"]
    spec = load_table_spec(None, {
        "table": str(NIH_SAMPLE / "labels.csv"), "images": str(NIH_SAMPLE / "images"),
        "image": "image index", "patient": "patient id", "view": "view position",
        "labels": {n: {"column": "Finding Labels", "positive": [n], "delimiter": "|"} for n in findings},
        "demographics": {"age": "patient age", "sex": "patient gender"}, "dataset": "nih-cxr14",
    })  # fmt: skip
    ours, log = ingest_table(spec)
    theirs, _ = ingest_nih(NIH_SAMPLE / "labels.csv", NIH_SAMPLE / "images")
    assert len(ours) == len(theirs) == 310 and log.counts() == {}
    for column in ("study_id", "patient_id", "views", "age", "sex"):
        assert ours.df[column].tolist() == theirs.df[column].tolist(), column
    np.testing.assert_array_equal(ours.label_matrix(findings), theirs.label_matrix(findings))
    with pytest.raises(ConfigError, match="delimiter needs the positive values"):
        load_table_spec(None, {"table": "x.csv", "labels": {"a": {"column": "b", "delimiter": "|"}}})
