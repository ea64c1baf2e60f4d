"""External validation: a real head trained on IU-labelled phantoms, scored on a table of other
phantoms ingested with another label vocabulary (NIH-style names), and on the real NIH sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import Manifest, read_manifest
from cxrfuse.data.table_ingest import TableSpec, ingest_table
from cxrfuse.evaluation.alignment import align_labels, parse_mapping
from cxrfuse.evaluation.external import calibration_part, evaluate_external
from cxrfuse.inference import predict
from cxrfuse.problems import ConfigError
from cxrfuse.rundir import ExternalDir, RunDir, p_column, y_column

SHARED_NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-cxr14-sample"
RUN_LABELS = ["abnormal", "Cardiomegaly", "Pleural Effusion", "Opacity"]
runner = CliRunner()


def _pick(df: pd.DataFrame, skip: set[int], n_each: int) -> np.ndarray:
    """Studies with an indication: normal ones, cardiomegaly, effusion, other abnormal."""
    ok = df["indication"].notna() & ~df.index.isin(list(skip))
    groups = [df["label_abnormal"] == 0, df["label_cardiomegaly"] == 1,
              df["label_pleural_effusion"] == 1, df["label_opacity"] == 1]  # fmt: skip
    picked: list[int] = []
    for g in groups:
        picked += [i for i in np.flatnonzero(ok & g) if i not in picked][:n_each]
    return np.sort(np.array(picked))


def _with_demographics(manifest: Manifest) -> Manifest:
    df = manifest.df.copy()
    codes = df["patient_id"].map(lambda p: sum(map(ord, str(p))))
    df["sex"] = np.where(codes % 2 == 0, "F", "M")
    df["age"] = (25 + codes % 60).astype(float)
    return manifest.replace(df=df)


@pytest.fixture(scope="module")
def world(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fused run (random tiny image encoder, tf-idf of the indication) on 80 IU phantoms, and
    a CSV export of 48 other phantom studies with NIH-style label columns."""
    from cxrfuse.config import RunConfig
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits
    from cxrfuse.training import train_run

    root = tmp_path_factory.mktemp("external")
    # random weights (weights: none is one fixed draw, so every rebuild is the same encoder)
    df = iu_manifest.df
    train_rows = _pick(df, set(), 20)
    small = iu_manifest.replace(df=df.iloc[train_rows].reset_index(drop=True),
                                tasks={"four": RUN_LABELS})  # fmt: skip
    small = assign_splits(_with_demographics(small), (0.5, 0.25, 0.25), seed=0, task="abnormal")
    make_phantoms(small, root / "phantoms", PhantomConfig(size=64, seed=0), progress=False)
    config = RunConfig(
        name="fused", runs_dir=str(root / "runs"),
        data={"manifest": str(root / "phantoms" / "manifest.parquet"), "task": "four",
              "store": str(root / "store")},
        image={"encoder": "efficientnet-lite0", "weights": "none",
               "input_size": 64},
        text={"encoder": "tfidf", "sections": ["indication"], "options": {"svd_dim": 8}},
        training={"max_epochs": 3}, evaluation={"n_boot": 50},
    )  # fmt: skip
    run = train_run(config, progress=False)

    other_rows = _pick(df, set(train_rows.tolist()), 12)
    other = iu_manifest.replace(df=df.iloc[other_rows].reset_index(drop=True))
    other = make_phantoms(_with_demographics(other), root / "site", PhantomConfig(size=64, seed=1),
                          progress=False)  # fmt: skip
    rows = []
    for rec in other.df.to_dict("records"):
        for v in rec["views"]:
            rows.append({"Accession": rec["study_id"], "Patient": rec["patient_id"],
                         "File": str(Path(v["path"]).relative_to(root / "site")),
                         "Projection": v["view"], "Reason": rec["indication"],
                         "Effusion": "yes" if rec["label_pleural_effusion"] == 1 else "no",
                         "Cardiomegaly": int(rec["label_cardiomegaly"]),
                         "No Finding": "true" if rec["label_abnormal"] == 0 else "false",
                         "Hernia": 0, "Age": rec["age"], "Sex": rec["sex"]})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "site" / "export.csv", index=False)
    spec = TableSpec(table=root / "site" / "export.csv", images=root / "site", dataset="site-b",
                     study="accession", patient="patient", image="file", view="projection",
                     sections={"indication": "reason"},
                     labels={n: {"column": n} for n in ("Effusion", "Cardiomegaly", "No Finding", "Hernia")},
                     demographics={"age": "age", "sex": "sex"})  # fmt: skip
    manifest, log = ingest_table(spec)
    assert len(log) == 0 and len(manifest) == len(other)
    return {"run": run, "site": manifest.save(root / "site.parquet"), "root": root}


def test_alignment_pairs_synonyms_complements_and_lists_the_rest() -> None:
    alignment = align_labels(RUN_LABELS, ["Effusion", "Cardiomegaly", "No Finding", "Hernia"])
    rules = {p.run_label: (p.target_label, p.rule, p.negate) for p in alignment.pairs}
    assert rules == {"abnormal": ("No Finding", "not No Finding", True),
                     "Cardiomegaly": ("Cardiomegaly", "same name", False),
                     "Pleural Effusion": ("Effusion", "synonym (Pleural Effusion)", False)}  # fmt: skip
    assert alignment.unmatched_run == ["Opacity"] and alignment.unmatched_target == ["Hernia"]
    mapped = align_labels(RUN_LABELS, ["Infiltration", "Normal"], parse_mapping(["Opacity=Infiltration",
                                                                                 "abnormal=!Normal"]))
    assert [(p.run_label, p.target_label, p.negate) for p in mapped.pairs] == [
        ("abnormal", "Normal", True), ("Opacity", "Infiltration", False)]
    with pytest.raises(ConfigError, match="'Edema' is not a label of the run"):
        align_labels(RUN_LABELS, ["Edema"], {"Edema": "Edema"})


def test_docs_hold_the_alignment_table() -> None:
    from cxrfuse.evaluation.alignment import alignment_markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "external.md"
    assert alignment_markdown() in docs.read_text()


def test_calibration_part_is_patient_level_and_seeded() -> None:
    patients = [f"p{i % 25}" for i in range(100)]
    part = calibration_part(patients, 0.2, seed=3)
    assert len({p for p, c in zip(patients, part) if c}) == 5
    assert not {p for p, c in zip(patients, part) if c} & {p for p, c in zip(patients, part) if not c}
    assert (calibration_part(patients, 0.2, seed=3) == part).all()


def test_external_validation_end_to_end(world: dict[str, Path]) -> None:
    out = world["root"] / "ext"
    result = runner.invoke(app, ["evaluate", str(world["run"]), "--on", str(world["site"]), "--out",
                                 str(out), "--recalibrate", "platt", "--calibration-fraction", "0.3",
                                 "--n-boot", "50"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not scored (no counterpart): Opacity, Hernia" in result.output
    ext = ExternalDir(out)
    saved = ext.result()
    site = read_manifest(world["site"])
    assert saved["studies"]["scored"] == len(site) and saved["labels"] == ["abnormal", "Cardiomegaly",
                                                                           "Pleural Effusion"]
    frame = ext.predictions().set_index("study_id")
    truth = site.df.set_index("study_id")
    np.testing.assert_array_equal(frame[y_column("abnormal")], 1 - truth.loc[frame.index, "label_no_finding"])
    np.testing.assert_array_equal(frame[y_column("Pleural Effusion")], truth.loc[frame.index, "label_effusion"])
    # the stored-embedding path gives what `cxrfuse predict` gives for the same files and text
    for sid in frame.index[:3]:
        views = truth.at[sid, "views"]
        one = predict(world["run"], images=[v["path"] for v in views],
                      report=f"INDICATION: {truth.at[sid, 'indication']}")  # fmt: skip
        for name in saved["labels"]:
            assert frame.at[sid, p_column(name)] == pytest.approx(one.probabilities[name], abs=1e-5)
    internal = RunDir(world["run"]).metrics()
    row = next(r for r in saved["side_by_side"] if r["label"] == "Cardiomegaly")
    assert row["internal_auroc"] == internal.test.per_label["Cardiomegaly"]["auroc"]
    assert saved["thresholds"]["Cardiomegaly"] == internal.thresholds["Cardiomegaly"]
    recal = saved["recalibration"]
    part = frame["calibration_part"].to_numpy()
    assert recal["calibration_studies"] == int(part.sum()) and 0 < part.sum() < len(frame)
    assert not set(frame.loc[part, "patient_id"]) & set(frame.loc[~part, "patient_id"])
    flattened = {w.split(":")[0] for w in recal["warnings"]}  # slope clipped at 0: constant
    for name in set(saved["labels"]) - flattened:  # Platt is monotone: the same AUROC
        assert recal["after"]["per_label"][name]["auroc"] == pytest.approx(
            recal["before"]["per_label"][name]["auroc"], abs=1e-9, nan_ok=True)
    sex = {g["group"]: g for g in saved["subgroups"]["attributes"]["sex"]["groups"]}
    assert set(sex) == {"F", "M"} and sum(g["n"] for g in sex.values()) == len(frame)
    assert all(g["small"] for g in sex.values())  # fewer than 30 studies each
    for plot in saved["plots"]:
        assert (out / plot).is_file()
    md = ext.markdown_path.read_text()
    assert "| Hernia" in md and "no counterpart" in md and "## Recalibration" in md
    # a rerun reuses the stored vectors (keyed as usual)
    again = evaluate_external(world["run"], world["site"], n_boot=0, recalibration="isotonic")
    assert again["embedding"]["images"]["reused"] and again["embedding"]["texts"]["reused"]
    default = RunDir(world["run"]).external_dir("site")  # RUN/external/<manifest stem>
    assert json.loads(default.result_path.read_text())["recalibration"]["method"] == "isotonic"
    from cxrfuse.reporting import write_report

    html_path, md_path = write_report(world["run"])
    report = md_path.read_text()
    for heading in ("## Subgroups and calibration", "## External validation", "Internal test vs external",
                    "isotonic recalibration fitted on"):
        assert heading in report
    assert "subgroups_sex_reliability" in report and "data:image/png;base64" in html_path.read_text()


def test_external_with_no_shared_label_fails_clearly(world: dict[str, Path], tmp_path: Path) -> None:
    site = read_manifest(world["site"])
    keep = ["Hernia"]
    df = site.df.drop(columns=[c for c in site.label_columns if c != "label_hernia"])
    lonely = site.replace(df=df, labels=keep, tasks={}).save(tmp_path / "lonely.parquet")
    result = runner.invoke(app, ["evaluate", str(world["run"]), "--on", str(lonely)])
    assert result.exit_code == 2 and "none of its labels ['Hernia'] matches" in result.output


@pytest.mark.skipif(not (SHARED_NIH / "labels.csv").is_file(), reason="NIH sample not present")
def test_real_nih_sample_as_an_image_only_external_set(world: dict[str, Path], tmp_path: Path) -> None:
    from cxrfuse.data.nih import ingest_nih

    nih, _ = ingest_nih(SHARED_NIH / "labels.csv", SHARED_NIH / "images")
    nih = nih.replace(df=nih.df.head(60))
    result = evaluate_external(world["run"], nih.save(tmp_path / "nih.parquet"), tmp_path / "out", n_boot=20)
    assert result["studies"]["scored"] == 60 and result["embedding"]["texts"]["studies_with_text"] == 0
    assert {p["target_label"] for p in result["alignment"]["pairs"]} == {"abnormal", "Cardiomegaly", "Effusion"}
    assert "Opacity" in result["alignment"]["unmatched_run"] and "Hernia" in result["alignment"]["unmatched_target"]
    assert {g["group"] for g in result["subgroups"]["attributes"]["view"]["groups"]} <= {"PA", "AP"}
    external = result["external"]
    assert set(external["baselines"]) == set(result["labels"])
    for label in result["labels"]:  # a phantom-trained model on real radiographs: chance where it holds
        ci = result["ci"].get(f"label/{label}/auroc") or {}
        chance = {v["label"] for v in external["verdicts"] if v["kind"] == "chance"}
        if ci.get("low") is not None:
            assert (label in chance) == (ci["low"] <= 0.5 <= ci["high"]), label
    assert "(external set)" in (tmp_path / "out" / "external.md").read_text() or not external["verdicts"]


# ------------------------------------------------------------------------------ image overlap
SHARED_PAIRS = SHARED_NIH.parent / "iu-nih-pairs"


def _images(manifest: Manifest) -> int:
    return int(manifest.df["views"].map(lambda vs: sum(bool(v["path"]) for v in vs)).sum())


def test_external_set_made_of_training_images_is_flagged(world: dict[str, Path], tmp_path: Path) -> None:
    trained = read_manifest(world["root"] / "phantoms" / "manifest.parquet")
    seen = trained.df["split"].isin(["train", "val"])
    df = trained.df[seen].reset_index(drop=True)
    df["study_id"] = "copy-" + df["study_id"].astype(str)  # another site's ids, the same pixels
    df["split"] = None
    same = trained.replace(df=df, dataset="copied-site").save(tmp_path / "same.parquet")
    result = runner.invoke(app, ["evaluate", str(world["run"]), "--on", str(same), "--n-boot", "0"],
                           terminal_width=250)  # fmt: skip
    assert result.exit_code == 0, result.output
    ext = RunDir(world["run"]).external_dir("same")  # RUN/external/same, shown in the run's report
    overlap = ext.result()["image_overlap"]
    n = _images(read_manifest(same))
    assert overlap["exact"] == n == overlap["total"] and overlap["near"] == 0 and overlap["found"]
    assert overlap["by_split"]["train"]["exact"] + overlap["by_split"]["val"]["exact"] == n
    assert overlap["by_split"]["test"]["exact"] == 0
    assert f"IMAGE OVERLAP: {n} exact and 0 near-duplicate images of the {n}" in result.output
    assert "IMAGE OVERLAP" in ext.markdown_path.read_text()
    from cxrfuse.reporting import write_report

    html_path, _ = write_report(world["run"])
    html = html_path.read_text()
    banner = html[html.index("IMAGE OVERLAP") - 300 : html.index("IMAGE OVERLAP")]
    assert 'class="warning"' in banner
    # the disjoint site (other phantoms): no exact copy (synthetic phantoms may look alike, so
    # the near count is checked on real radiographs below)
    disjoint = evaluate_external(world["run"], world["site"], tmp_path / "site", n_boot=0)
    assert disjoint["image_overlap"]["exact"] == 0
    assert disjoint["image_overlap"]["total"] == _images(read_manifest(world["site"]))


@pytest.mark.skipif(not (SHARED_PAIRS / "pairing.csv").is_file() or not (SHARED_NIH / "labels.csv").is_file(),
                    reason="iu-nih-pairs / NIH sample not present")
def test_run_on_real_pairs_flags_the_nih_manifest_of_the_same_images(tmp_path: Path) -> None:
    from cxrfuse.config import RunConfig
    from cxrfuse.data.iu_xray import ingest_iu_xray
    from cxrfuse.data.nih import ingest_nih
    from cxrfuse.data.splits import assign_splits
    from cxrfuse.training import train_run

    pairs, _ = ingest_iu_xray(SHARED_PAIRS, layout="kaggle")
    pairs = assign_splits(pairs, (0.7, 0.1, 0.2), seed=0, task="abnormal")
    config = RunConfig(
        name="real-image", runs_dir=str(tmp_path / "runs"),
        data={"manifest": str(pairs.save(tmp_path / "pairs.parquet")), "task": "abnormal",
              "store": str(tmp_path / "store")},
        model={"modalities": ["image"]},
        image={"encoder": "efficientnet-lite0", "weights": "none", "input_size": 64},
        training={"max_epochs": 2}, evaluation={"n_boot": 0},
    )  # fmt: skip
    run = train_run(config, progress=False)
    nih, _ = ingest_nih(SHARED_NIH / "labels.csv", SHARED_NIH / "images")
    result = evaluate_external(run, nih.save(tmp_path / "nih.parquet"), tmp_path / "ext", n_boot=0)
    overlap = result["image_overlap"]
    seen = _images(pairs.replace(df=pairs.df[pairs.df["split"].isin(["train", "val"])]))
    assert overlap["exact"] == seen and overlap["near"] == 0 and overlap["total"] == 310
    assert overlap["by_split"]["test"]["exact"] == 310 - seen
    # the hashes computed here are kept next to each manifest, so a rerun decodes nothing
    assert (tmp_path / "pairs.image-hashes.parquet").is_file() and (tmp_path / "nih.image-hashes.parquet").is_file()
    # the NIH images the run never saw (its test split) as their own manifest: nothing shared
    test_files = {Path(v["path"]).read_bytes().__hash__() for vs in pairs.df.loc[pairs.df["split"] == "test", "views"]
                  for v in vs}  # fmt: skip
    unseen = nih.df["views"].map(lambda vs: Path(vs[0]["path"]).read_bytes().__hash__() in test_files)
    clean = evaluate_external(run, nih.replace(df=nih.df[unseen].reset_index(drop=True)).save(tmp_path / "unseen.parquet"),
                              tmp_path / "ext2", n_boot=0)["image_overlap"]  # fmt: skip
    assert clean["exact"] == 0 and clean["near"] == 0 and clean["total"] == 310 - seen
