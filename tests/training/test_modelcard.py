"""Every trained run has a model card (Hugging Face front matter), refreshed by evaluation;
`cxrfuse export` + `predict` on the exported folder gives the run's own predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_train_cli import tiny_config, write_config
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import read_manifest
from cxrfuse.rundir.modelcard import read_card_metadata

runner = CliRunner()


@pytest.fixture(scope="module")
def evaluated(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("card")
    config = write_config(tmp / "tiny.yaml", tiny_config(tmp, tiny_phantoms))
    result = runner.invoke(app, ["train", str(config), "--offline", "--no-progress"])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny"


def test_card_front_matter_holds_metrics_with_intervals_and_says_synthetic(evaluated: Path) -> None:
    meta = read_card_metadata(evaluated / "README.md")
    metrics = json.loads((evaluated / "metrics.json").read_text())
    block = meta["cxrfuse"]
    assert meta["library_name"] == "cxrfuse" and "research-use-only" in meta["tags"]
    assert block["synthetic_images"] is True and "synthetic-images" in meta["tags"]
    assert block["evaluated"] is True and block["intended_use"] == "research use only"
    auroc = metrics["test"]["macro"]["auroc"]
    assert block["test"]["auroc"]["value"] == pytest.approx(auroc, abs=1e-4)
    assert block["test"]["auroc"]["ci95"]["low"] == pytest.approx(metrics["ci"]["macro/auroc"]["low"], abs=1e-4)
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test"
    assert {"type": "roc_auc", "value": round(auroc, 4)}.items() <= result["metrics"][0].items()
    assert block["leakage_probe"]["gap"] == pytest.approx(metrics["leakage"]["gap"])
    body = (evaluated / "README.md").read_text()
    assert "Research use only" in body and "## Limitations" in body and "synthetic phantom" in body


def test_export_then_predict_gives_the_runs_own_predictions(evaluated: Path, tmp_path: Path,
                                                            tiny_phantoms: Path) -> None:
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", str(evaluated), "--to", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "model.json", "config.yaml", "run.json", "README.md",
            "export.json", "text_encoder.json"} <= names
    assert "predictions.parquet" not in names
    again = runner.invoke(app, ["export", str(evaluated), "--to", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output
    predictions = pd.read_parquet(evaluated / "predictions.parquet")
    manifest = read_manifest(tiny_phantoms).df.set_index("study_id")
    for row in predictions[predictions["split"] == "test"].head(3).to_dict("records"):
        study = manifest.loc[row["study_id"]]
        frontal = [v["path"] for v in study["views"] if v["view"] == "PA"]
        lateral = [v["path"] for v in study["views"] if v["view"] == "LATERAL"]
        report = tmp_path / "report.txt"
        report.write_text(f"INDICATION: {study['indication']}\nFINDINGS: {study['findings']}\n"
                          f"IMPRESSION: {study['impression'] or ''}\n")
        result = runner.invoke(app, ["predict", str(out), "--image", frontal[0],
                                     "--image", lateral[0], "--report", str(report)])
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)
        assert answer["probabilities"]["abnormal"] == pytest.approx(row["p__abnormal"], abs=1e-4)
        thresholds = json.loads((evaluated / "model.json").read_text())["thresholds"]
        assert answer["thresholds"] == pytest.approx(thresholds)


def test_retraining_in_the_same_folder_drops_the_old_test_figures(evaluated: Path,
                                                                  tmp_path: Path) -> None:
    """`cxrfuse train --no-evaluate` over an evaluated run (another learning rate): the old
    metrics.json no longer describes the weights, so it goes, and the card says "not
    evaluated" instead of showing the old model's test figures."""
    import shutil

    runs = tmp_path / "runs"
    run = Path(shutil.copytree(evaluated, runs / "tiny"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (run / "metrics.json").is_file()
    path = write_config(tmp_path / "again.yaml", config)
    result = runner.invoke(app, ["train", str(path), "--no-progress", "--no-evaluate",
                                 "--runs-dir", str(runs), "--set", "training.lr=0.01"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert not (run / "metrics.json").exists()
    assert read_card_metadata(run / "README.md")["cxrfuse"]["evaluated"] is False
