"""Report readers (JSON, CSV, Parquet) and their errors; the atomic strict-JSON writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from cxrfuse.generation.reports_io import read_reports, write_scores
from cxrfuse.problems import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_json_forms(tmp_path: Path) -> None:
    plain = write(tmp_path / "g.json", json.dumps({"CXR1": "No effusion.", "CXR2": "Cardiomegaly."}))
    assert read_reports(plain) == {"CXR1": ["No effusion."], "CXR2": ["Cardiomegaly."]}
    lists = write(tmp_path / "r.json", json.dumps({"CXR1": ["A.", "B."], "CXR2": ["C."]}))
    assert read_reports(lists) == {"CXR1": ["A.", "B."], "CXR2": ["C."]}
    records = write(tmp_path / "rec.json", json.dumps([{"study_id": 7, "report": "A."}]))
    assert read_reports(records) == {"7": ["A."]}
    r2gen = {"train": [{"id": "x", "report": "T."}], "test": [{"id": "CXR9_IM-1", "report": "Z."}]}
    annotation = write(tmp_path / "annotation.json", json.dumps(r2gen))
    assert read_reports(annotation, split="test") == {"CXR9_IM-1": ["Z."]}
    with pytest.raises(DataError, match="annotation.json.*split="):
        read_reports(annotation)


def test_csv_tsv_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"study_id": ["CXR1", "CXR2"], "report": ["No effusion.", "Small effusion."]})
    frame.to_csv(tmp_path / "r.csv", index=False)
    frame.to_csv(tmp_path / "r.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "r.parquet")
    want = {"CXR1": ["No effusion."], "CXR2": ["Small effusion."]}
    for name in ("r.csv", "r.tsv", "r.parquet"):
        assert read_reports(tmp_path / name) == want, name
    both = pd.DataFrame({"uid": [1, 2], "generated": ["a", "b"], "reference": ["c", "d"]})
    both.to_parquet(tmp_path / "both.parquet")
    assert read_reports(tmp_path / "both.parquet", text_column="reference") == {"1": ["c"], "2": ["d"]}
    with pytest.raises(DataError, match=r"several possible text columns \['generated', 'reference'\]"):
        read_reports(tmp_path / "both.parquet")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.json", "", "empty file"),
        ("empty.csv", "", "empty file"),
        ("header.csv", "id,report\n", "no reports"),
        ("bad.json", '{"CXR1": "a",', r"not valid JSON \(line 1"),
        ("number.json", '{"CXR1": 3}', r"study 'CXR1'.*text must be a string.*got int"),
        ("nested.json", '{"CXR1": [["a"]]}', r"study 'CXR1'.*text must be a string, got list"),
        ("blank.json", '{"CXR1": "  "}', r"study 'CXR1'.*empty text"),
        ("dup.csv", "id,report\nCXR1,a\nCXR1,b\n", r"row 2 \(line 3\): duplicate study id 'CXR1'"),
        ("notext.csv", "id,impression_text\nCXR1,a\n", r"no text column; columns are \['id', 'impression_text'\]"),
        ("noid.csv", "name,report\nCXR1,a\n", "no id column"),
        ("missing.csv", "id,report\nCXR1,\n", r"row 1 \(line 2\).*empty text"),
        ("noid.json", '[{"report": "a"}]', "no id column"),
        ("reports.txt", "x", "unknown report file type"),
    ],
)
def test_bad_inputs_name_file_and_field(tmp_path: Path, name: str, content: str, match: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=match) as info:
        read_reports(path)
    assert str(path) in str(info.value)


def test_parquet_non_string_text_and_missing_file(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["a", "b"], "text": [1.5, 2.0]}).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: row 1 \(study 'a'\): text must be a string.*got float"):
        read_reports(tmp_path / "n.parquet")
    with pytest.raises(DataError, match="no such report file"):
        read_reports(tmp_path / "absent.json")
    with pytest.raises(DataError, match="no field 'report'"):
        read_reports(write(tmp_path / "r.json", '[{"id": "a", "report": "x"}, {"id": "b"}]'))


def test_allow_empty_for_generated(tmp_path: Path) -> None:
    path = write(tmp_path / "g.csv", "id,prediction\nCXR1,\nCXR2,Clear lungs.\n")
    assert read_reports(path, allow_empty=True) == {"CXR1": [""], "CXR2": ["Clear lungs."]}


def test_write_scores_strict_json_atomic(tmp_path: Path) -> None:
    payload = {
        "bleu_4": {"value": 0.1, "low": float("nan"), "high": None},
        "clinical": {"per_label": {"Edema": {"f1": {"value": math.inf}}}},
        "study_labels": {"labels": ["Edema", "No Finding"],
                         "generated": {"a": [float("nan"), 1.0]}, "reference": {"a": [1.0, float("nan")]}},
    }
    out = write_scores(tmp_path / "scores", payload)
    assert out == tmp_path / "scores" / "scores.json"

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-strict JSON constant {constant}")

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["bleu_4"] == {"value": 0.1, "low": None, "high": None}
    assert data["clinical"]["per_label"]["Edema"]["f1"]["value"] is None
    assert "study_labels" not in data and data["study_labels_file"] == "study_labels.csv"
    labels = pd.read_csv(tmp_path / "scores" / "study_labels.csv")
    assert labels.columns.tolist() == ["id", "source", "Edema", "No Finding"]
    assert labels.loc[labels.source == "reference", "Edema"].item() == 1.0
    write_scores(tmp_path / "scores", {"bleu_4": {"value": 0.2}})  # overwrite in place
    assert json.loads(out.read_text())["bleu_4"]["value"] == 0.2
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["scores.json", "study_labels.csv"]
