"""The manifest schema: round trip, validation errors that name what is wrong."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from cxrfuse.data import Manifest, label_column, read_manifest
from cxrfuse.data.manifest import normalise_view
from cxrfuse.problems import DataError


def _manifest(**overrides) -> Manifest:
    records = [
        {"study_id": "s1", "patient_id": "p1", "findings": "Heart normal.",
         "views": [{"image_id": "a", "path": "/x/a.png", "view": "PA"}, {"image_id": "b", "view": "Lateral"}],
         "labels": {"abnormal": 0, "Pleural Effusion": 0}, "age": 40, "sex": "F"},
        {"study_id": "s2", "patient_id": "p2", "impression": "Effusion.", "views": [],
         "labels": {"abnormal": 1, "Pleural Effusion": None}},
    ]
    kwargs = {"dataset": "test", "labels": ["abnormal", "Pleural Effusion"],
              "tasks": {"binary": ["abnormal"]}, **overrides}
    return Manifest.from_records(records, **kwargs)


def test_round_trip_keeps_table_and_metadata(tmp_path):
    manifest = _manifest(info={"source": "unit"})
    again = read_manifest(manifest.save(tmp_path / "m.parquet"))
    assert again.labels == ["abnormal", "Pleural Effusion"]
    assert again.tasks == {"binary": ["abnormal"]}
    assert again.info == {"source": "unit"}
    assert again.df.loc[0, "views"][1] == {"image_id": "b", "path": None, "view": "LATERAL"}
    np.testing.assert_array_equal(again.label_matrix(), np.array([[0, 0], [1, np.nan]], dtype=np.float32))
    assert again.has_images().tolist() == [True, False]
    assert again.has_report().tolist() == [True, True]
    assert label_column("Pleural Effusion") == "label_pleural_effusion"


def test_duplicate_study_is_rejected():
    with pytest.raises(DataError, match="duplicate study_id 's1'"):
        Manifest.from_records([{"study_id": "s1", "patient_id": "p"}] * 2, dataset="t", labels=[])


def test_bad_label_value_names_column_and_row():
    manifest = _manifest()
    manifest.df.loc[1, "label_abnormal"] = 2.0
    with pytest.raises(DataError, match=r"'label_abnormal' has value 2.0 at row 1"):
        manifest.validate()


def test_task_with_unknown_label_is_rejected():
    with pytest.raises(DataError, match="task 'x' names unknown label"):
        _manifest(tasks={"x": ["Nodule"]})


def test_not_a_manifest_file(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(_manifest().df[["study_id"]].pipe(__import__("pyarrow").Table.from_pandas), path)
    with pytest.raises(DataError, match="no cxrfuse manifest metadata"):
        read_manifest(path)
    (tmp_path / "junk.parquet").write_text("junk")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet"):
        read_manifest(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="no such manifest"):
        read_manifest(tmp_path / "missing.parquet")


def test_unknown_task_lists_choices():
    with pytest.raises(DataError, match="unknown task or label 'multilabel'"):
        _manifest().label_matrix("multilabel")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("PA", "PA"), ("ap", "AP"), ("Frontal", "FRONTAL"), ("Lateral", "LATERAL"), ("LL", "LL"),
     ("LATERAL", "LATERAL"), (None, "UNKNOWN"), (float("nan"), "UNKNOWN"), ("SWIMMERS", "UNKNOWN")],
)
def test_view_normalisation(raw, expected):
    assert normalise_view(raw) == expected
