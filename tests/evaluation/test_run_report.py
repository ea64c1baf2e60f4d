"""evaluate_run, evaluate_experiment, write_report and the CLI on contract-built directories."""

from __future__ import annotations

import html as html_lib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rundirs import LABELS, build_run
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data.manifest import label_slug
from cxrfuse.evaluation import evaluate_experiment, evaluate_run
from cxrfuse.evaluation.metrics import choose_thresholds, compute_metrics
from cxrfuse.problems import DataError
from cxrfuse.reporting import write_report
from cxrfuse.reporting.runs import PHANTOM_NOTE

runner = CliRunner()
PLOTS = ("roc", "pr", "confusion", "reliability", "training_curves")


def arrays(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_parquet(run_dir / "predictions.parquet")
    part = frame[frame["split"] == split]
    return (
        part[[f"y__{label_slug(n)}" for n in LABELS]].to_numpy(float),
        part[[f"p__{label_slug(n)}" for n in LABELS]].to_numpy(float),
    )


def test_evaluate_run_writes_metrics_plots_and_thresholds(run_dir: Path) -> None:
    result = evaluate_run(run_dir, threshold="f1", n_boot=200, seed=0)
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert stored["thresholds"] == pytest.approx(result["thresholds"])
    val_thr, _ = choose_thresholds(*arrays(run_dir, "val"), "f1")
    test_best, _ = choose_thresholds(*arrays(run_dir, "test"), "f1")
    assert list(result["thresholds"].values()) == pytest.approx(val_thr.tolist())
    assert not np.allclose(val_thr, test_best)  # the test split did not choose them
    expected = compute_metrics(*arrays(run_dir, "test"), val_thr, LABELS)
    assert stored["test"]["headline"]["auroc"] == pytest.approx(expected["headline"]["auroc"])
    ci = stored["ci"]["headline/auroc"]
    assert ci["low"] <= stored["test"]["headline"]["auroc"] <= ci["high"]
    assert set(stored["ci"]) >= {f"label/{LABELS[0]}/f1", "micro/auroc", "exact_match"}
    for name in PLOTS:
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 5000
    sidecar = json.loads((run_dir / "model.json").read_text())
    assert (
        sidecar["thresholds"] == pytest.approx(result["thresholds"])
        and sidecar["format"] == "cxrfuse-head/1"
    )
    leak = stored["leakage"]
    assert leak["warning"] and leak["macro"]["chosen"] > leak["macro"]["indication"] + 0.1


def test_evaluate_run_rejects_unfinished_runs_and_bad_predictions(run_dir: Path) -> None:
    run = json.loads((run_dir / "run.json").read_text())
    frame = pd.read_parquet(run_dir / "predictions.parquet")
    frame.drop(columns=[f"p__{label_slug(LABELS[1])}"]).to_parquet(run_dir / "predictions.parquet")
    with pytest.raises(DataError, match="p__opacity"):
        evaluate_run(run_dir, n_boot=10)
    frame[frame["split"] == "test"].to_parquet(run_dir / "predictions.parquet")
    with pytest.raises(DataError, match="split == 'val'"):
        evaluate_run(run_dir, n_boot=10)
    (run_dir / "run.json").write_text(json.dumps({**run, "status": "failed", "error": "boom"}))
    with pytest.raises(DataError, match="not 'finished'.*boom"):
        evaluate_run(run_dir, n_boot=10)


@pytest.fixture(scope="module")
def evaluated(experiment_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    exp = tmp_path_factory.mktemp("evaluated") / experiment_dir.name
    shutil.copytree(experiment_dir, exp)
    runs = sorted(p.name for p in (exp / "runs").iterdir())  # the training side's run table
    pd.DataFrame({"run": runs, "training.lr": 0.01, "test_auroc": 0.5}).to_csv(
        exp / "summary.csv", index=False)
    (exp / "summary.md").write_text("# training's table\n")
    return exp, evaluate_experiment(exp, n_boot=200, seed=0)


def test_evaluation_leaves_the_training_files_alone(evaluated: tuple[Path, dict],
                                                    experiment_dir: Path) -> None:
    """One writer per file: the training curves and summary.* are training's; the evaluation
    writes evaluation.csv / .md and keeps the grid columns of summary.csv."""
    exp, _ = evaluated
    assert (exp / "summary.md").read_text() == "# training's table\n"
    assert list(pd.read_csv(exp / "summary.csv").columns) == ["run", "training.lr", "test_auroc"]
    table = pd.read_csv(exp / "evaluation.csv")
    assert (table["training.lr"] == 0.01).all() and table["auroc"].notna().sum() == 6
    for run in (experiment_dir / "runs").glob("*/plots/training_curves.png"):
        assert (exp / run.relative_to(experiment_dir)).read_bytes() == run.read_bytes()


def test_evaluate_experiment_groups_seeds_and_compares_modalities(
    evaluated: tuple[Path, dict],
) -> None:
    exp, result = evaluated
    summary = pd.read_csv(exp / "evaluation.csv")
    assert len(summary) == 7 and (summary["status"] == "failed").sum() == 1
    assert summary.loc[summary["status"] == "failed", "error"].item() == "CUDA out of memory"
    assert summary["auroc"].notna().sum() == 6
    (setting,) = result["settings"]
    table = pd.DataFrame(setting["modality_table"])
    assert (
        table["modality"].tolist() == ["Image", "Text", "Multimodal"]
        and (table["seeds"] == 2).all()
    )
    fused_runs = summary[summary["modalities"] == "image+text"]["auroc"]
    assert table.loc[2, "auroc"] == pytest.approx(fused_runs.mean())
    assert table.loc[2, "auroc_sd"] == pytest.approx(fused_runs.std(ddof=1))
    assert len(setting["paired"]) == 2 and setting["best_unimodal"] in ("Image", "Text")
    paired = setting["paired"][0]
    assert paired["bootstrap"]["auroc"]["diff"] > 0 and set(paired["delong"]) == set(LABELS)
    assert len(setting["complementarity"]) == 2
    pairs = setting["complementarity"][0]["pairs"]
    assert (
        pairs["both"] + pairs["only_text"] + pairs["only_image"] + pairs["neither"]
        == pairs["total"]
    )
    for rel in setting["plots"]:
        assert (exp / rel).exists()
    md = (exp / "evaluation.md").read_text()
    assert "| Multimodal |" in md and "only text" in md and "DeLong" in md


def test_experiment_report_has_every_section_and_embedded_images(
    evaluated: tuple[Path, dict],
) -> None:
    exp, _ = evaluated
    html_path, md_path = write_report(exp)
    html = html_path.read_text()
    for title in (
        "Overview",
        "Data",
        "Text configuration and leakage",
        "Configuration",
        "Results",
        "Ablations",
        "Plots",
        "Environment",
    ):
        assert f"<h2>{title}" in html and f"## {title}" in md_path.read_text()
    assert html_lib.escape(PHANTOM_NOTE) in html and "still carries the label" in html
    assert html.count('src="data:image/png;base64,') >= 3  # venn, roc by modality, training curves
    assert "<script" not in html and 'src="plots/' not in html  # self-contained
    assert "Complementarity" in html and "Fused vs best unimodal" in html and "Cardiomegaly" in html
    assert "multimodal-seed2" in html and "CUDA out of memory" in html
    assert "](plots/" in md_path.read_text()


def test_run_report_evaluates_first_when_needed(run_dir: Path) -> None:
    html_path, _ = write_report(run_dir)
    assert (run_dir / "metrics.json").exists()
    html = html_path.read_text()
    subgroup_plots = json.loads((run_dir / "metrics.json").read_text())["subgroups"]["plots"]
    assert html.count('src="data:image/png;base64,') == len(PLOTS) + len(subgroup_plots)
    for text in (
        html_lib.escape(PHANTOM_NOTE),
        "Leakage probe",
        "Label prevalence",
        "config.yaml",
        "exact_match",
        "torch",
    ):
        assert text in html
    assert "no shuffle test yet" in html.lower()


def test_report_on_a_plain_folder_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no run directories"):
        write_report(tmp_path)


@pytest.mark.parametrize("verb", ["evaluate", "report"])
def test_cli_help_has_an_example(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "cxrfuse" in result.output


def test_cli_evaluate_and_report_a_run(run_dir: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", str(run_dir), "--n-boot", "50", "--threshold", "youden"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "auroc" in result.output
        and json.loads((run_dir / "metrics.json").read_text())["threshold_method"] == "youden"
    )
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0 and (run_dir / "report.html").exists()
    result = runner.invoke(app, ["evaluate", str(run_dir), "--threshold", "median"])
    assert result.exit_code == 2 and "choose one of" in result.output


def test_shuffle_refuses_a_modality_the_run_does_not_use(
    tmp_path: Path, small_manifest: Path
) -> None:
    text_only = build_run(tmp_path, small_manifest, ["text"], seed=0)
    result = runner.invoke(
        app, ["evaluate", str(text_only), "--n-boot", "20", "--no-leakage", "--shuffle", "image"]
    )
    assert result.exit_code == 2 and "uses only ['text']" in result.output


@pytest.fixture(scope="module")
def trained_run(iu_manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fused head trained by cxrfuse.training on 80 phantom studies (random tiny image
    encoder, TF-IDF text of the masked findings + impression)."""
    from cxrfuse.config import RunConfig
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits
    from cxrfuse.training import train_run

    df = iu_manifest.df
    has_text = df["findings"].notna() & df["indication"].notna()
    pick = np.concatenate(
        [np.flatnonzero((df["label_abnormal"] == v) & has_text)[:40] for v in (0, 1)]
    )
    small = iu_manifest.replace(df=df.iloc[np.sort(pick)].reset_index(drop=True))
    small = assign_splits(small, (0.5, 0.25, 0.25), seed=0, task="normal-abnormal")
    root = tmp_path_factory.mktemp("trained")
    make_phantoms(small, root / "phantoms", PhantomConfig(size=64, seed=0), progress=False)
    config = RunConfig(
        name="multimodal-seed0",
        runs_dir=str(root / "runs"),
        data={
            "manifest": str(root / "phantoms" / "manifest.parquet"),
            "task": "normal-abnormal",
            "store": str(root / "store"),
        },
        image={"encoder": "efficientnet-lite0", "weights": "none", "input_size": 64},
        text={
            "encoder": "tfidf",
            "sections": ["findings", "impression"],
            "options": {"svd_dim": 16},
        },
        training={"max_epochs": 3},
    )
    return train_run(config, progress=False)


@pytest.mark.slow
def test_shuffle_end_to_end_on_a_trained_head(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused model leans on the leaky text: shuffling the text costs far more than the image."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(
        app,
        ["evaluate", str(trained_run), "--n-boot", "100", "--shuffle", "both", "--repeats", "3"],
    )
    assert result.exit_code == 0, result.output
    shuffle = json.loads((trained_run / "ablation.json").read_text())["shuffle"]
    assert set(shuffle) == {"image", "text"} and len(shuffle["text"]["shuffled"]["auroc"]) == 3
    baseline = json.loads((trained_run / "metrics.json").read_text())["test"]["headline"]["auroc"]
    assert shuffle["text"]["baseline"]["auroc"] == pytest.approx(
        baseline, abs=1e-6
    )  # same rows, same model
    assert shuffle["text"]["drop"]["auroc"]["mean"] > 0.2
    assert shuffle["text"]["drop"]["auroc"]["mean"] > shuffle["image"]["drop"]["auroc"]["mean"]
    html_path, _ = write_report(trained_run)
    assert "Bimodal sensitivity test" in html_path.read_text()
