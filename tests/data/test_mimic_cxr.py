"""MIMIC-CXR-JPG ingest on the tiny tree of :mod:`mimic_tree` (see its docstring for the cases)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mimic_tree import metadata_rows, write_mimic_tree

from cxrfuse.data import read_manifest
from cxrfuse.data.labels import CHEXPERT_LABELS
from cxrfuse.data.mimic_cxr import (
    default_tasks,
    ingest_mimic_cxr,
    parse_report_sections,
    vs_no_finding_label,
)
from cxrfuse.problems import DataError

NAN = math.nan
PA_STUDIES = ["s50000001", "s50000003", "s50000004", "s50000005", "s50000007", "s50000009", "s50000010"]
ALL_STUDIES = [f"s5000000{i}" for i in range(1, 10)] + ["s50000010"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_mimic_tree(tmp_path / "mimic")


def _labels(manifest, study: str) -> dict[str, float]:
    row = manifest.label_matrix()[manifest.df.index[manifest.df["study_id"] == study][0]]
    return {name: float(v) for name, v in zip(manifest.labels, row)}


def _expect(base: float, **given: float) -> dict[str, float]:
    """All 14 labels = ``base`` except ``given`` (keyword = label with spaces as underscores)."""
    out = {name: base for name in CHEXPERT_LABELS}
    out.update({k.replace("_", " "): v for k, v in given.items()})
    return out


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(np.isclose(a[k], b[k], equal_nan=True) for k in a)


def test_default_ingest_keeps_pa_views_and_records_problems(tree: Path) -> None:
    manifest, log = ingest_mimic_cxr(tree)
    df = manifest.df
    assert df["study_id"].tolist() == PA_STUDIES
    assert df["patient_id"].tolist() == ["p10000001", "p10000002", "p11000003", "p11000003",
                                         "p13000005", "p14000006", "p14000006"]
    assert df["split"].tolist() == ["train", "train", "val", "val", "train", "test", "test"]
    assert [[v["image_id"] for v in vs] for vs in df["views"]] == [
        ["d01"], ["d04"], ["d06"], ["d07"], ["d10"], ["d12"], ["d13"]]
    assert {v["view"] for vs in df["views"] for v in vs} == {"PA"}
    paths = {vs[0]["image_id"]: vs[0]["path"] for vs in df["views"]}
    assert paths["d10"] is None
    assert paths["d01"] == str((tree / "files/p10/p10000001/s50000001/d01.jpg").resolve())
    assert all(Path(p).is_file() for k, p in paths.items() if k != "d10")
    assert manifest.images == "real"
    assert log.counts() == {"malformed-row": 2, "missing-labels": 1, "missing-image": 1, "empty-report": 1}
    where = {p.kind: p.where for p in log.problems if p.kind != "malformed-row"}
    assert where == {"missing-labels": "s50000009", "missing-image": "s50000007/d10",
                     "empty-report": "s50000010"}
    malformed = [p.where for p in log.problems if p.kind == "malformed-row"]
    assert malformed == [f"{tree / 'mimic-cxr-2.0.0-metadata.csv.gz'}:15",
                         f"{tree / 'mimic-cxr-2.0.0-chexpert.csv.gz'}:10"]
    assert manifest.problems["counts"] == log.counts()
    assert manifest.info["counts"] == {
        "images_in_metadata": 13, "studies_in_metadata": 10, "studies_in_chexpert": 9,
        "images_after_view_filter": 7, "studies_after_view_filter": 7, "studies_dropped_no_view": 3,
        "studies": 7, "images": 7, "images_on_disk": 6}
    assert manifest.info["views"] == ["PA"]
    assert manifest.info["label_policy"]["uncertain"] == "ignore"
    assert manifest.info["reports"] == str(tree / "mimic-cxr-reports.zip")


def test_default_policy_labels_and_tasks(tree: Path) -> None:
    manifest, _ = ingest_mimic_cxr(tree)
    assert manifest.labels == list(CHEXPERT_LABELS)
    assert manifest.tasks["chexpert"] == list(CHEXPERT_LABELS)
    assert manifest.tasks["pneumonia"] == ["Pneumonia"]
    assert manifest.tasks["pleural-effusion"] == ["Pleural Effusion"]
    assert manifest.tasks["no-finding"] == ["No Finding"]
    assert len(manifest.tasks) == 15
    assert _same(_labels(manifest, "s50000001"), _expect(0.0, No_Finding=1.0))
    assert _same(_labels(manifest, "s50000003"), _expect(0.0, Pneumonia=NAN, Edema=0.0))
    assert _same(_labels(manifest, "s50000004"), _expect(0.0, No_Finding=1.0))  # "1" without ".0"
    assert _same(_labels(manifest, "s50000005"), _expect(0.0, Pneumonia=1.0, Consolidation=1.0))
    assert _same(_labels(manifest, "s50000009"), _expect(NAN))  # its CheXpert row was malformed
    source = dict(zip(manifest.df["study_id"], manifest.df["source_labels"]))
    assert source["s50000005"] == ["Consolidation", "Pneumonia"]
    assert source["s50000003"] == [] and source["s50000009"] == []


@pytest.mark.parametrize(
    ("uncertain", "blank", "s3", "s2"),
    [
        ("ignore", "ignore", _expect(NAN, Pneumonia=NAN, Edema=0.0),
         _expect(NAN, Pneumonia=1.0, Pleural_Effusion=NAN)),
        ("zero", "zero", _expect(0.0), _expect(0.0, Pneumonia=1.0)),
        ("one", "zero", _expect(0.0, Pneumonia=1.0), _expect(0.0, Pneumonia=1.0, Pleural_Effusion=1.0)),
        ("zero", "ignore", _expect(NAN, Pneumonia=0.0, Edema=0.0),
         _expect(NAN, Pneumonia=1.0, Pleural_Effusion=0.0)),
        ("ignore", "one", _expect(1.0, Pneumonia=NAN, Edema=0.0),
         _expect(1.0, Pleural_Effusion=NAN)),
    ],
)
def test_label_policies(tree: Path, uncertain: str, blank: str, s3: dict, s2: dict) -> None:
    manifest, _ = ingest_mimic_cxr(tree, views=None, uncertain=uncertain, blank=blank)  # type: ignore[arg-type]
    assert _same(_labels(manifest, "s50000003"), s3)
    assert _same(_labels(manifest, "s50000002"), s2)
    assert _same(_labels(manifest, "s50000009"), _expect(NAN))  # no labels whatever the policy
    assert manifest.info["label_policy"] == {"uncertain": uncertain, "blank": blank,
                                             "source": "mimic-cxr-2.0.0-chexpert"}


def test_all_views_keeps_every_study_and_view(tree: Path) -> None:
    manifest, _ = ingest_mimic_cxr(tree, views=None)
    assert manifest.df["study_id"].tolist() == ALL_STUDIES
    views = {s: [(v["image_id"], v["view"]) for v in vs]
             for s, vs in zip(manifest.df["study_id"], manifest.df["views"])}
    assert views["s50000001"] == [("d01", "PA"), ("d02", "LATERAL")]
    assert views["s50000005"] == [("d07", "PA"), ("d08", "LL")]
    assert views["s50000006"] == [("d09", "AP")]
    assert manifest.info["counts"]["studies_dropped_no_view"] == 0
    ap_lat, _ = ingest_mimic_cxr(tree, views=["ap", "Lateral"])
    assert ap_lat.df["study_id"].tolist() == [
        "s50000001", "s50000002", "s50000003", "s50000006", "s50000008"]
    frontal, _ = ingest_mimic_cxr(tree, views=["FRONTAL"])
    assert frontal.info["views"] == ["AP", "FRONTAL", "PA"]
    assert len(frontal) == 9  # every study but the LATERAL-only s50000008


def test_report_sections_from_zip(tree: Path) -> None:
    manifest, _ = ingest_mimic_cxr(tree)
    row = manifest.df.set_index("study_id")
    assert row.loc["s50000001", "indication"] == "___F with cough // eval for pneumonia"
    assert row.loc["s50000001", "comparison"] == "None."
    assert row.loc["s50000001", "findings"] == (
        "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal.")
    assert row.loc["s50000001", "impression"] == "No acute cardiopulmonary process."
    assert row.loc["s50000001", "report"].startswith("                                 FINAL REPORT\n")
    assert row.loc["s50000003", "indication"] == "Shortness of breath."  # from HISTORY
    assert row.loc["s50000005", "indication"] == "Fever."  # from REASON FOR EXAMINATION
    assert pd.isna(row.loc["s50000005", "findings"])
    assert row.loc["s50000005", "impression"] == "Right lower lobe consolidation consistent with pneumonia."
    assert pd.isna(row.loc["s50000010", "report"])
    assert manifest.has_report().tolist() == [True] * 6 + [False]


def test_loose_txt_reports_and_plain_csv(tmp_path: Path) -> None:
    root = write_mimic_tree(tmp_path / "m", reports="txt", gz=False)
    manifest, log = ingest_mimic_cxr(root)
    assert manifest.df["study_id"].tolist() == PA_STUDIES
    assert manifest.info["reports"] == str(root / "files")
    row = manifest.df.set_index("study_id")
    assert row.loc["s50000003", "impression"] == "Possible right basilar pneumonia."
    assert row.loc["s50000004", "impression"] == "Normal."
    assert log.counts()["empty-report"] == 1
    assert f"{root / 'mimic-cxr-2.0.0-chexpert.csv'}:10" in [p.where for p in log.problems]


def test_reports_argument_overrides_root(tmp_path: Path) -> None:
    zipped = write_mimic_tree(tmp_path / "zipped")
    bare = write_mimic_tree(tmp_path / "bare", reports=None)
    manifest, _ = ingest_mimic_cxr(bare, reports=zipped / "mimic-cxr-reports.zip")
    assert manifest.df.set_index("study_id").loc["s50000004", "impression"] == "Normal."
    folder, _ = ingest_mimic_cxr(bare, reports=zipped)  # no txt there: nothing found
    assert folder.has_report().sum() == 0
    with pytest.raises(DataError, match="nowhere.zip"):
        ingest_mimic_cxr(bare, reports=tmp_path / "nowhere.zip")


def test_no_reports_and_no_images(tmp_path: Path) -> None:
    root = write_mimic_tree(tmp_path / "m", reports=None, images=False)
    manifest, log = ingest_mimic_cxr(root)
    assert manifest.images == "none"
    assert all(v["path"] is None for vs in manifest.df["views"] for v in vs)
    assert log.counts()["missing-image"] == 1  # one summary, not one per image
    assert log.counts()["empty-report"] == 1
    assert manifest.info["reports"] is None
    assert not manifest.has_report().any()


def test_one_image_per_subject_is_seeded_and_order_free(tree: Path) -> None:
    picks = {}
    for seed in range(8):
        manifest, _ = ingest_mimic_cxr(tree, views=None, one_image_per_subject=True, seed=seed)
        assert manifest.df["patient_id"].is_unique
        assert len(manifest) == 6
        assert all(len(vs) == 1 for vs in manifest.df["views"])
        picks[seed] = [vs[0]["image_id"] for vs in manifest.df["views"]]
    again, _ = ingest_mimic_cxr(tree, views=None, one_image_per_subject=True, seed=3)
    assert [vs[0]["image_id"] for vs in again.df["views"]] == picks[3]
    assert len({tuple(p) for p in picks.values()}) > 1  # the seed matters
    path = tree / "mimic-cxr-2.0.0-metadata.csv.gz"
    header = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)[0]
    with gzip.open(path, "wt") as handle:  # same rows, reversed order
        handle.write(header + "\n".join(reversed(metadata_rows())) + "\n")
    reordered, _ = ingest_mimic_cxr(tree, views=None, one_image_per_subject=True, seed=3)
    assert [vs[0]["image_id"] for vs in reordered.df["views"]] == picks[3]
    pa_only, _ = ingest_mimic_cxr(tree, one_image_per_subject=True, seed=0)
    assert pa_only.df["patient_id"].tolist() == ["p10000001", "p10000002", "p11000003",
                                                 "p13000005", "p14000006"]
    assert pa_only.info["counts"]["studies_after_one_per_subject"] == 5


def test_pneumonia_vs_no_finding(tree: Path) -> None:
    manifest, _ = ingest_mimic_cxr(tree, views=None, task="pneumonia-vs-no-finding")
    df = manifest.df
    assert df["study_id"].tolist() == ["s50000001", "s50000002", "s50000004", "s50000005",
                                       "s50000007", "s50000010"]
    assert df["label_pneumonia"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert manifest.tasks["pneumonia-vs-no-finding"] == ["Pneumonia"]
    assert manifest.label_matrix("pneumonia-vs-no-finding").ravel().tolist() == [0, 1, 0, 1, 0, 0]
    assert manifest.info["counts"]["studies_after_task_filter"] == 6
    lenient, _ = ingest_mimic_cxr(tree, views=None, uncertain="one", blank="ignore",
                                  task="pneumonia-vs-no-finding")
    assert lenient.df["study_id"].tolist() == df["study_id"].tolist()  # s50000003 (-1.0) stays out
    assert lenient.df["label_pneumonia"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    pa, _ = ingest_mimic_cxr(tree, task="pneumonia-vs-no-finding")  # s50000002 is AP only
    assert pa.df["study_id"].tolist() == ["s50000001", "s50000004", "s50000005", "s50000007", "s50000010"]
    atel, _ = ingest_mimic_cxr(tree, views=None, task="atelectasis-vs-no-finding")
    assert atel.df["study_id"].tolist() == ["s50000001", "s50000004", "s50000007", "s50000008", "s50000010"]
    assert atel.df["label_atelectasis"].tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_task_names() -> None:
    assert vs_no_finding_label("pleural-effusion-vs-no-finding") == "Pleural Effusion"
    assert vs_no_finding_label(None) is None and vs_no_finding_label("chexpert") is None
    assert set(default_tasks()) >= {"chexpert", "pneumonia", "enlarged-cardiomediastinum"}
    for bad in ("no-finding-vs-no-finding", "pneumonitis-vs-no-finding", "everything"):
        with pytest.raises(DataError, match="unknown MIMIC-CXR task"):
            vs_no_finding_label(bad)


def test_manifest_round_trip(tree: Path, tmp_path: Path) -> None:
    manifest, _ = ingest_mimic_cxr(tree, views=None, uncertain="one", task="pneumonia-vs-no-finding")
    back = read_manifest(manifest.save(tmp_path / "mimic.parquet"))
    assert back.dataset == "mimic-cxr"
    assert back.labels == manifest.labels and back.tasks == manifest.tasks
    assert back.images == "real" and back.info == manifest.info
    assert back.problems["counts"] == manifest.problems["counts"]
    assert list(back.df.columns) == list(manifest.df.columns)
    for col in manifest.df.columns:  # nulls compared as nulls (None and NaN both occur)
        assert _plain(back.df[col]) == _plain(manifest.df[col]), col
    assert back.df["views"].tolist() == manifest.df["views"].tolist()


def _plain(column: pd.Series) -> list:
    return [None if not isinstance(v, list) and pd.isna(v) else v for v in column.tolist()]


def _rewrite(path: Path, old: str, new: str) -> None:
    text = gzip.decompress(path.read_bytes()).decode()
    assert old in text
    with gzip.open(path, "wt") as handle:
        handle.write(text.replace(old, new))


def test_missing_files_and_columns_name_them(tree: Path) -> None:
    _rewrite(tree / "mimic-cxr-2.0.0-metadata.csv.gz", "ViewPosition", "ViewPos")
    with pytest.raises(DataError, match=r"mimic-cxr-2\.0\.0-metadata\.csv\.gz: missing required column 'ViewPosition'"):
        ingest_mimic_cxr(tree)
    _rewrite(tree / "mimic-cxr-2.0.0-metadata.csv.gz", "ViewPos", "ViewPosition")
    _rewrite(tree / "mimic-cxr-2.0.0-chexpert.csv.gz", "Edema", "Oedema")
    with pytest.raises(DataError, match=r"chexpert\.csv\.gz: missing required column 'Edema'"):
        ingest_mimic_cxr(tree)
    (tree / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(DataError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv: required file not found"):
        ingest_mimic_cxr(tree)
    with pytest.raises(DataError, match="root folder not found"):
        ingest_mimic_cxr(tree / "absent")


def test_missing_split_file_is_a_problem(tree: Path) -> None:
    (tree / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    manifest, log = ingest_mimic_cxr(tree)
    assert manifest.df["split"].isna().all()
    assert log.counts()["missing-split"] == 1
    assert manifest.info["split_source"] is None


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown view position 'SIDEWAYS'"):
        ingest_mimic_cxr(Path("."), views=["SIDEWAYS"])
    with pytest.raises(DataError, match="uncertain policy 'maybe'"):
        ingest_mimic_cxr(Path("."), uncertain="maybe")  # type: ignore[arg-type]


def test_strict_mode_stops_at_first_problem(tree: Path) -> None:
    with pytest.raises(DataError, match=r"metadata\.csv\.gz:15.*strict mode"):
        ingest_mimic_cxr(tree, strict=True)


def test_parse_report_sections_edge_cases() -> None:
    assert parse_report_sections(None) == dict.fromkeys(
        ("comparison", "indication", "findings", "impression"))
    text = "CLINICAL INFORMATION: fall.\nFindings: normal heart.\nNote: see above.\nIMPRESSION:\n"
    assert parse_report_sections(text) == {
        "comparison": None, "indication": "fall.",
        "findings": "normal heart. Note: see above.", "impression": None}
    both = "INDICATION: cough.\nHISTORY: smoker.\nIMPRESSION: clear at 10:30 today."
    assert parse_report_sections(both)["indication"] == "cough."
    assert parse_report_sections(both)["impression"] == "clear at 10:30 today."
