"""View metadata you can trust: one mapping of view spellings, the view kinds a view fusion
reads, implausible view metadata and the OpenI source preference (on the bundled metadata)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrfuse.data.iu_xray import (
    bundled_dicom_metadata,
    bundled_pixel_views,
    dicom_views,
    ingest_iu_xray,
    pixel_views,
    resolve_view,
)
from cxrfuse.data.manifest import normalise_view, view_kind
from cxrfuse.data.views import implausible_views, read_view_counts


@pytest.mark.parametrize("spelling", ["L", "l", "LL", "LLAT", "LAT", "Lateral", "RL", "left-lateral",
                                      "LARGE LATERAL", "XTABLE_LATERAL"])
def test_every_lateral_spelling_is_lateral(spelling: str) -> None:
    assert view_kind(spelling) == "lateral" and normalise_view(spelling) in ("LATERAL", "LL")


@pytest.mark.parametrize(("spelling", "kind"), [("PA", "frontal"), ("ap supine", "frontal"),
                                                ("Frontal", "frontal"), ("", "unknown"),
                                                (None, "unknown"), ("OBLIQUE", "unknown")])
def test_other_spellings(spelling: str | None, kind: str) -> None:
    assert view_kind(spelling) == kind


def test_read_view_counts_follow_the_view_fusion() -> None:
    studies = [
        [{"view": "PA", "path": "a"}, {"view": "LL", "path": "b"}, {"view": "PA", "path": "c"}],
        [{"view": "UNKNOWN", "path": "d"}, {"view": "LATERAL", "path": None}],
        [{"view": "LATERAL", "path": "e"}],
    ]
    assert read_view_counts(studies, "frontal") == {"frontal": 1, "lateral": 0, "unknown": 0, "studies": 1}
    assert read_view_counts(studies, "concat") == {"frontal": 1, "lateral": 2, "unknown": 0, "studies": 2}
    for mode in ("mean", "attention"):
        assert read_view_counts(studies, mode) == {"frontal": 2, "lateral": 2, "unknown": 1, "studies": 3}


def test_implausible_views() -> None:
    def views(*positions: str, ids: tuple[str, ...] = ()) -> list[dict]:
        names = ids or tuple(f"im{i}" for i in range(len(positions)))
        return [{"image_id": n, "view": p} for n, p in zip(names, positions)]

    assert "2 views all marked PA" in implausible_views(views("PA", "PA"))
    assert "all marked lateral" in implausible_views(views("LL", "LATERAL"))
    assert "named like a lateral" in implausible_views(views("PA", "AP", ids=("1_frontal", "1_lateral")))
    assert "named like a lateral" in implausible_views(views("PA", ids=("cxr-LL",)))
    for fine in (views("PA", "LL"), views("PA"), views("PA", "AP"), views("PA", "PA", "LATERAL"),
                 views("PA", "UNKNOWN"), views("AP", ids=("cell_01",))):
        assert implausible_views(fine) is None, fine


def test_resolve_view_prefers_pixels_then_a_lateral_header_then_the_processing_code() -> None:
    assert resolve_view("PA", "PA", "LATERAL") == ("LATERAL", "pixels (torchxrayvision t-SNE)")
    assert resolve_view("AP", None, "PA") == ("AP", "pixels (torchxrayvision t-SNE)")
    assert resolve_view("LL", "PA", None) == ("LL", "DICOM View Position")
    assert resolve_view("PA", "LATERAL", None) == ("LATERAL", "DICOM processing code")
    assert resolve_view("UNKNOWN", "PA", None) == ("PA", "DICOM processing code")
    assert resolve_view("AP", None, None) == ("AP", "DICOM View Position")
    assert resolve_view("UNKNOWN", None, None) == ("UNKNOWN", "none")


needs_metadata = pytest.mark.skipif(bundled_dicom_metadata() is None or bundled_pixel_views() is None,
                                    reason="torchxrayvision ships no IU view metadata")


@needs_metadata
def test_bundled_openi_views_are_corrected_and_the_implausible_counted() -> None:
    manifest, problems = ingest_iu_xray()
    header = dicom_views(bundled_dicom_metadata())
    by_id = manifest.df.set_index("study_id")
    two = manifest.df[manifest.df["views"].map(len) == 2]
    pa_pa_header = [s for s, vs in zip(two["study_id"], two["views"])
                    if all(header.get(v["image_id"].replace("_1_IM", "_IM"), {}).get("header_view") == "PA"
                           for v in vs)]  # fmt: skip
    pa_pa_after = [vs for vs in two["views"] if [v["view"] for v in vs] == ["PA", "PA"]]
    assert len(pa_pa_header) > 1000  # the header's PA+PA studies (1,089 of 3,208 two-view studies)
    assert len(pa_pa_after) < 0.01 * len(two)  # after the better sources: a handful left
    flagged = {p.where for p in problems.problems if p.kind == "implausible-views"}
    assert set(pa_pa_header) <= flagged
    # the example: a lateral (processing menu 60003) marked PA in the header
    views = {v["image_id"]: v["view"] for v in by_id.loc["CXR1000", "views"]}
    assert views["CXR1000_IM-0003-2001"] == "LATERAL" and views["CXR1000_IM-0003-3001"] == "PA"
    assert "pixel-derived" in manifest.info["view_source"]


@needs_metadata
def test_pixel_views_never_contradict_a_lateral_header() -> None:
    header = dicom_views(bundled_dicom_metadata())
    pixels = pixel_views(bundled_pixel_views())
    both = [(header[i]["header_view"], p) for i, p in pixels.items() if i in header]
    assert len(both) > 3000
    assert not [h for h, p in both if view_kind(h) == "lateral" and view_kind(p) == "frontal"]


PAIRS = Path(__file__).resolve().parents[3] / "shared" / "data" / "iu-nih-pairs"


@pytest.mark.skipif(not (PAIRS / "indiana_projections.csv").exists(), reason="shared iu-nih-pairs absent")
def test_real_pairs_are_frontal_only_and_plausible() -> None:
    manifest, problems = ingest_iu_xray(PAIRS, layout="kaggle")
    assert "implausible-views" not in problems.counts()
    counts = read_view_counts(manifest.df["views"], "mean")
    assert counts == {"frontal": len(manifest.df), "lateral": 0, "unknown": 0, "studies": len(manifest.df)}


@needs_metadata
def test_kaggle_projection_checked_against_the_openi_metadata(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    (root / "images" / "images_normalized").mkdir(parents=True)
    (root / "indiana_reports.csv").write_text(
        "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        "10,normal,normal,x,Cough.,None.,Clear.,Normal.\n"
        "1000,normal,normal,x,Cough.,None.,Clear.,Normal.\n")  # fmt: skip
    (root / "indiana_projections.csv").write_text(
        "uid,filename,projection\n10,10_IM-0002-1001.dcm.png,Frontal\n"
        "1000,1000_IM-0003-2001.dcm.png,Frontal\n1000,1000_IM-0003-3001.dcm.png,Lateral\n")
    manifest, problems = ingest_iu_xray(root, layout="kaggle")
    by_id = manifest.df.set_index("study_id")
    # CXR10_IM-0002-1001: the pixel-derived view says lateral, and it is taken
    assert [v["view"] for v in by_id.loc["CXR10", "views"]] == ["LATERAL"]
    # CXR1000_IM-0003-2001: processing menu 60003 (lateral); reported, the projection kept
    assert [v["view"] for v in by_id.loc["CXR1000", "views"]] == ["FRONTAL", "LATERAL"]
    messages = [p.message for p in problems.problems if p.kind == "view-disagrees"]
    assert len(messages) == 3
    assert "pixel-derived view (torchxrayvision t-SNE) of CXR10_IM-0002-1001 says LATERAL" in messages[0]
    assert "DICOM processing code of CXR1000_IM-0003-2001 says LATERAL; the projection kept" in messages[1]
    # and this table's lateral, 3001, is processing menu 60025 (PA)
    assert "'Lateral' but the DICOM processing code of CXR1000_IM-0003-3001 says PA" in messages[2]
