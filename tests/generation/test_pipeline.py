"""The generation stage end to end: retrieval from a real embedding store of phantom studies,
the baselines drawn from the training split only, the generation directory, the report, the
CLI, and scoring of any system's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import Manifest, read_manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.data.splits import assign_splits
from cxrfuse.generation.baselines import (
    BEST_CONSTANT,
    CONSENSUS,
    MOST_FREQUENT,
    NEAREST,
    RANDOM,
    baseline_reports,
    best_constant_report,
    corpus_bleu4,
    manifest_reports,
    plain_report,
)
from cxrfuse.generation.pipeline import classifier_findings, generate_retrieval
from cxrfuse.generation.retrieval import SearchSpace, choose_reports, consensus_sentences
from cxrfuse.problems import DataError
from cxrfuse.reporting import write_report
from cxrfuse.rundir import GenerationDir, HeadSidecar, HeadSpec, RunDir, RunInfo, p_column, y_column

runner = CliRunner()
FAST = {"n_boot": 50, "n_boot_language": 5, "meteor": False}


@pytest.fixture(scope="module")
def phantoms(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 real IU reports with 48-px phantoms, split at patient level."""
    small = iu_manifest.replace(df=iu_manifest.df.iloc[:90].copy())
    small = assign_splits(small, (0.6, 0.2, 0.2), seed=0, task="multilabel")
    out = tmp_path_factory.mktemp("gen-phantoms")
    make_phantoms(small, out, PhantomConfig(size=48, seed=0), progress=False)
    return out / "manifest.parquet"


@pytest.fixture(scope="module")
def knn(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerationDir, dict]:
    out = tmp_path_factory.mktemp("gen") / "knn3"
    return generate_retrieval(out, manifest=phantoms, store=out.parent / "store",
                              image_encoder="efficientnet-lite0", input_size=32, k=3,
                              consensus="medoid", score=FAST, progress=False)  # fmt: skip


def test_plain_report_drops_section_headers() -> None:
    assert plain_report("FINDINGS: Heart normal.  IMPRESSION: No acute disease.") == \
        "Heart normal. No acute disease."  # fmt: skip


def test_consensus_keeps_the_sentences_half_the_neighbours_share() -> None:
    texts = ["The heart is normal. No effusion. Old rib fracture.",
             "No effusion. The heart is normal.", "The lungs are clear. No effusion."]
    assert consensus_sentences(texts) == "The heart is normal. No effusion."
    assert consensus_sentences(["A b.", "C d.", "E f."]) is None


def test_choice_nearest_or_medoid_and_the_bank_never_holds_a_query() -> None:
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, -0.3]], dtype=np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    texts = {"a": "heart normal", "b": "heart normal lungs clear", "c": "large left effusion",
             "d": "lungs clear"}  # fmt: skip
    space = SearchSpace(["q"], np.array([[1.0, 0.05]], np.float32) / 1.00125, ["a", "b", "c", "d"],
                        bank, "test")  # fmt: skip
    assert choose_reports(space, texts, 1)["source_study_id"].tolist() == ["a"]
    medoid = choose_reports(space, texts, 3, "medoid")  # neighbours a, b, d: b shares words with both
    assert medoid["source_study_id"].tolist() == ["b"] and medoid["neighbours"][0] == "a,b,d"
    space.query_ids = ["a"]
    with pytest.raises(DataError, match="query studies are in the retrieval bank"):
        choose_reports(space, texts, 1)


def test_best_constant_is_chosen_by_bleu4_on_the_training_reports() -> None:
    normal = "The heart is normal in size. The lungs are clear. No pleural effusion."
    train = {f"s{i}": normal for i in range(5)} | {"x": "Large right pneumothorax.",
                                                   "y": "Cardiomegaly with edema."}  # fmt: skip
    best, score = best_constant_report(train, candidates=3, sample=7)
    assert best == normal and score == pytest.approx(corpus_bleu4(normal, list(train.values())))
    reports, info = baseline_reports(train, ["t1", "t2"], nearest={"t1": "a", "t2": "b"})
    assert reports[MOST_FREQUENT] == {"t1": normal, "t2": normal}
    assert set(reports[RANDOM].values()) <= set(train.values())
    assert reports[NEAREST] == {"t1": "a", "t2": "b"} and info["best_constant"] == normal
    with pytest.raises(DataError, match="are in the training reports"):
        baseline_reports(train, ["s1"])


def test_retrieval_writes_a_scored_generation_directory(knn, phantoms: Path) -> None:
    gen, payload = knn
    frame = gen.generated()
    man = read_manifest(phantoms)
    split = dict(zip(man.df["study_id"].astype(str), man.df["split"]))
    assert set(frame["split"]) == {"test"} and len(frame) == (man.df["split"] == "test").sum()
    assert set(frame["source_study_id"].map(split)) == {"train"}
    train_reports = manifest_reports(man, ["train"])
    assert set(frame["generated"]) <= set(train_reports.values())  # copied training reports
    assert {"gen__cardiomegaly", "ref__pleural_effusion"} <= set(frame.columns)
    assert set(payload["baselines"]) == {RANDOM, MOST_FREQUENT, BEST_CONSTANT, CONSENSUS, NEAREST}
    assert payload["generator"] == "retrieval (k = 3, medoid)"
    scores = json.loads(gen.scores_path.read_text())
    assert scores["meteor"] is None  # not computed: reported as missing, never 0
    labels = pd.read_csv(gen.study_labels_path)
    assert set(labels["source"]) == {"generated", "reference"}
    assert gen.settings()["synthetic_images"] is True and gen.settings()["bank"] > 0
    html, md = write_report(gen.path)
    text = md.read_text()
    assert "Synthetic images" in text or "synthetic phantoms" in text
    assert "best constant report" in text and "Studies side by side" in text
    assert "only in generated" in text and "<strong>" in html.read_text()


def test_retrieval_cli_and_its_errors(phantoms: Path, knn, tmp_path: Path) -> None:
    store = knn[0].path.parent / "store"
    out = tmp_path / "cli"
    result = runner.invoke(app, ["generate", "retrieval", str(phantoms), "--store", str(store),
                                 "--input-size", "32", "--consensus", "sentences", "--k", "5",
                                 "--n-boot", "20", "--n-boot-language", "3", "--no-meteor",
                                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "best constant report (BLEU-4 on train)" in result.output
    assert GenerationDir(out).has_scores()
    result = runner.invoke(app, ["generate", "retrieval", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "needs --clip RUN, or a MANIFEST with --store" in result.output
    result = runner.invoke(app, ["generate", "retrieval", str(phantoms), "--store", str(store),
                                 "--input-size", "32", "--consensus", "vote",
                                 "--out", str(tmp_path / "y"), "--no-progress"])  # fmt: skip
    assert result.exit_code == 2 and "consensus 'vote' unknown" in result.output


def _write(path: Path, payload: dict) -> Path:
    path.write_text(json.dumps(payload))
    return path


def test_score_any_system_with_the_training_baselines(tmp_path: Path, phantoms: Path) -> None:
    refs = {"a": "The heart is normal. No pleural effusion.",
            "b": "Small left pleural effusion. Heart size is normal.",
            "c": "Cardiomegaly. No pneumothorax."}  # fmt: skip
    gen = {"a": ["The heart is normal. No effusion."], "b": ["Small left pleural effusion."],
           "c": ["The heart is normal."]}  # fmt: skip
    g, r = _write(tmp_path / "g.json", gen), _write(tmp_path / "r.json", refs)
    result = runner.invoke(app, ["generate", "score", "--generated", str(g), "--reference", str(r),
                                 "--train-reports", str(phantoms), "--n-boot", "20",
                                 "--n-boot-language", "3", "--no-meteor",
                                 "--out", str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = GenerationDir(tmp_path / "s").scores()
    assert set(scores["baselines"]) == {RANDOM, MOST_FREQUENT, BEST_CONSTANT, CONSENSUS}
    per = scores["clinical"]["per_label"]["Pleural Effusion"]
    assert per["reference_positives"] == 1 and per["generated_positives"] == 1
    assert per["f1"]["value"] == pytest.approx(1.0)
    _write(tmp_path / "g2.json", {"a": "x"})
    result = runner.invoke(app, ["generate", "score", "--generated", str(tmp_path / "g2.json"),
                                 "--reference", str(r), "--out", str(tmp_path / "t")])  # fmt: skip
    assert result.exit_code == 2 and "no generated report for 2 reference studies" in result.output


def test_classifier_findings_use_the_runs_val_chosen_thresholds(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "clf")
    run.write_info(RunInfo(name="clf", kind="head", status="finished",
                           labels=["Cardiomegaly", "Pleural Effusion"], modalities=["image"]))
    run.write_sidecar(HeadSidecar(head=HeadSpec(kind="concat-mlp", kwargs={}),
                                  labels=["Cardiomegaly", "Pleural Effusion"], task="t",
                                  output="sigmoid", thresholds={"Cardiomegaly": 0.7}))  # fmt: skip
    frame = pd.DataFrame({"study_id": ["1", "2", "3"], "split": ["val", "test", "test"]})
    for name, probs in (("Cardiomegaly", [0.9, 0.8, 0.6]), ("Pleural Effusion", [0.1, 0.4, 0.55])):
        frame[y_column(name)], frame[p_column(name)] = 0.0, probs
    run.write_predictions(frame)
    assert classifier_findings(run.path, "test") == {"2": ["Cardiomegaly"],
                                                     "3": ["Pleural Effusion"]}  # fmt: skip
