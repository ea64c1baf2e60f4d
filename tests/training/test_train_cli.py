"""`cxrfuse train`, `predict` and `experiment` end to end on a tiny phantom manifest, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import read_manifest
from cxrfuse.inference import load_run

runner = CliRunner()
RUN_FILES = ("config.yaml", "run.json", "epochs.csv", "predictions.parquet", "model.safetensors",
             "model.json", "plots/training_curves.png")


def tiny_config(tmp_path: Path, manifest: Path, **changes: object) -> dict:
    config = {
        "name": "tiny",
        "runs_dir": str(tmp_path / "runs"),
        "data": {"manifest": str(manifest), "task": "normal-abnormal",
                 "store": str(tmp_path.parent / "store")},  # shared by the tests of this module
        "image": {"encoder": "xrv-densenet121-nih", "offline_encoder": "efficientnet-lite0",
                  "input_size": 64, "views": "mean", "embed_batch_size": 16},
        "text": {"encoder": "biobert", "offline_encoder": "tfidf",
                 "sections": ["findings", "impression"], "offline_options": {"svd_dim": 8}},
        "model": {"kind": "concat-mlp", "modalities": ["image", "text"], "hidden": [16]},
        "training": {"max_epochs": 3, "batch_size": 8, "early_stopping": {"patience": 2}},
        "evaluation": {"n_boot": 20},
    }
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def write_config(path: Path, payload: dict) -> Path:
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    config = write_config(tmp / "tiny.yaml", tiny_config(tmp, tiny_phantoms))
    result = runner.invoke(app, ["train", str(config), "--offline", "--no-progress",
                                 "--set", "seed=1"])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny"


def test_train_writes_every_contract_file(trained: Path) -> None:
    for name in RUN_FILES:
        assert (trained / name).is_file(), name
    info = json.loads((trained / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == 1 and info["images"] == "phantom"
    assert info["labels"] == ["abnormal"] and info["output"] == "sigmoid"
    assert info["modalities"] == ["image", "text"]
    assert set(info["n"]) == {"train", "val", "test"} and min(info["n"].values()) > 0
    assert all(Path(p).is_dir() for p in info["stores"].values())
    assert {"python", "torch", "cxrfuse", "platform", "device"} <= set(info["environment"])
    sidecar = json.loads((trained / "model.json").read_text())
    assert sidecar["format"] == "cxrfuse-head/1"
    assert sidecar["image"]["encoder"] == "efficientnet-lite0" and sidecar["image"]["input_size"] == 64
    assert sidecar["text"]["encoder"] == "tfidf" and sidecar["text"]["state"] is not None
    predictions = pd.read_parquet(trained / "predictions.parquet")
    assert set(predictions["split"]) == {"val", "test"}
    assert {"study_id", "patient_id", "y__abnormal", "p__abnormal"} <= set(predictions.columns)
    assert predictions["p__abnormal"].between(0, 1).all()
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["image"]["encoder"] == "efficientnet-lite0"  # --offline is in the resolved config
    assert (trained / "metrics.json").is_file()
    assert not list(trained.rglob("*.ckpt")) and not list(trained.rglob("*.pt"))


def test_predict_reproduces_the_stored_test_probability(trained: Path, tmp_path: Path) -> None:
    info = json.loads((trained / "run.json").read_text())
    predictions = pd.read_parquet(trained / "predictions.parquet")
    row = predictions[predictions["split"] == "test"].iloc[0]
    manifest = read_manifest(info["manifest"])
    study = manifest.df.set_index("study_id").loc[row["study_id"]]
    frontal = [v["path"] for v in study["views"] if v["view"] == "PA"]
    lateral = [v["path"] for v in study["views"] if v["view"] == "LATERAL"]
    report = tmp_path / "report.txt"
    report.write_text(f"INDICATION: {study['indication']}\nFINDINGS: {study['findings']}\n"
                      f"IMPRESSION: {study['impression'] or ''}\n")
    result = runner.invoke(app, ["predict", str(trained), "--image", frontal[0],
                                 "--image", lateral[0], "--report", str(report)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["probabilities"]["abnormal"] == pytest.approx(row["p__abnormal"], abs=1e-4)
    assert answer["decisions"]["abnormal"] == (answer["probabilities"]["abnormal"]
                                               >= answer["thresholds"]["abnormal"])
    assert any("synthetic phantom" in w for w in answer["warnings"])


def test_load_run_split_inputs_match_predictions(trained: Path) -> None:
    run = load_run(trained)
    inputs, y = run.split_inputs("test")
    assert set(inputs) == {"image", "image_mask", "text", "text_mask"}
    stored = pd.read_parquet(trained / "predictions.parquet").query("split == 'test'")
    assert np.allclose(run.predict_proba(inputs)[:, 0], stored["p__abnormal"], atol=1e-5)
    assert np.array_equal(y[:, 0], stored["y__abnormal"].to_numpy())
    shuffled = dict(inputs, text=inputs["text"][::-1].copy())
    assert not np.allclose(run.predict_proba(shuffled), run.predict_proba(inputs))


def test_bad_config_and_unfinished_run_give_clear_errors(tiny_phantoms: Path, tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.yaml", tiny_config(tmp_path, tiny_phantoms,
                                                          **{"training.loss": {"kind": "hinge"}}))
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "training.loss.kind" in result.output
    result = runner.invoke(app, ["predict", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished run" in result.output


def test_experiment_skips_finished_runs_and_survives_a_failure(
    tiny_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrfuse.training.experiment as experiment_module

    built: list[str] = []
    build = experiment_module.build_study_arrays

    def counting(config, **kwargs):  # type: ignore[no-untyped-def]
        built.append(config.data.task)
        return build(config, **kwargs)

    monkeypatch.setattr(experiment_module, "build_study_arrays", counting)
    base = tiny_config(tmp_path, tiny_phantoms, **{"model.modalities": ["text"]})
    experiment = {"name": "grid", "runs_dir": str(tmp_path / "runs"), "base": base,
                  "grid": {"data.task": ["normal-abnormal", "no-such-task"]}, "seeds": [0, 1]}
    path = write_config(tmp_path / "grid.yaml", experiment)
    args = ["experiment", str(path), "--offline", "--no-progress", "--no-evaluate"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "grid"
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4
    status = dict(zip(summary["run"], summary["status"]))
    assert status == {"normal-abnormal-seed0": "finished", "normal-abnormal-seed1": "finished",
                      "no-such-task-seed0": "failed", "no-such-task-seed1": "failed"}
    failed = json.loads((out / "runs" / "no-such-task-seed0" / "run.json").read_text())
    assert "no-such-task" in failed["error"]
    assert built.count("normal-abnormal") == 1  # assembled once for both seeds
    assert summary["test_auroc"].notna().sum() == 2
    assert "± " in (out / "summary.md").read_text()
    weights = out / "runs" / "normal-abnormal-seed0" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped") == 2 and result.output.count("FAILED") == 2
    assert weights.stat().st_mtime_ns == stamp
