"""`--tracking mlflow|tensorboard|csv` on `cxrfuse train` / `experiment`, read back from a real
MLflow SQLite store (``mlflow.search_runs``) and from real TensorBoard event files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_train_cli import tiny_config, write_config
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.config import TrackingConfig
from cxrfuse.training.tracking import evaluation_metric_values, flatten, verdict_tags

mlflow = pytest.importorskip("mlflow")
runner = CliRunner()


def test_experiment_grid_is_one_mlflow_experiment_with_one_run_per_point(
    tiny_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = tiny_config(tmp_path, tiny_phantoms)
    base["training"]["max_epochs"] = 2
    experiment = {"name": "tracked", "runs_dir": str(tmp_path / "runs"), "base": base,
                  "grid": {"model.modalities": [["image", "text"], ["text"]]}, "seeds": [0]}
    path = write_config(tmp_path / "grid.yaml", experiment)
    result = runner.invoke(app, ["experiment", str(path), "--offline", "--no-progress",
                                 "--tracking", "mlflow"])
    assert result.exit_code == 0, result.output
    store = tmp_path / "mlruns.db"  # beside the runs dir
    assert store.is_file()
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(experiment_names=["tracked"])
    assert len(runs) == 2
    assert set(runs["tags.model.modalities"]) == {"multimodal", "text"}
    assert set(runs["status"]) == {"FINISHED"}
    for row in runs.to_dict("records"):
        run_id = row["run_id"]
        run_dir = Path(row["tags.cxrfuse.run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        logged = mlflow.get_run(run_id).data
        assert logged.metrics["test/macro/auroc"] == pytest.approx(metrics["test"]["macro"]["auroc"])
        ci = metrics["ci"]["macro/auroc"]
        assert logged.metrics["test/macro/auroc/low"] == pytest.approx(ci["low"])
        assert logged.metrics["test/macro/auroc/high"] == pytest.approx(ci["high"])
        assert logged.params["training.lr"] == "0.003"
        history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "val/loss")
        epochs = pd.read_csv(run_dir / "epochs.csv")
        val = epochs[epochs["split"] == "val"]
        assert [m.step for m in history] == val["epoch"].tolist()
        assert [m.value for m in history] == pytest.approx(val["loss"].tolist())
        artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run_id)}
        assert "metrics.json" in artifacts and "plots" in artifacts
    # a rerun with finished runs trains nothing and adds no tracker run
    again = runner.invoke(app, ["experiment", str(path), "--offline", "--no-progress",
                                "--tracking", "mlflow"])
    assert again.exit_code == 0, again.output
    assert len(mlflow.search_runs(experiment_names=["tracked"])) == 2


def test_train_tensorboard_event_files_hold_every_epoch_and_the_test_metrics(
    tiny_phantoms: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, tiny_phantoms))
    result = runner.invoke(app, ["train", str(config), "--offline", "--no-progress",
                                 "--tracking", "tensorboard"])
    assert result.exit_code == 0, result.output
    log_dir = tmp_path / "runs" / "tiny" / "logs" / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(log_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/auroc", "test/macro/auroc",
            "test/macro/auroc/low"} <= scalars
    epochs = pd.read_csv(tmp_path / "runs" / "tiny" / "epochs.csv")
    assert len(events.Scalars("val/loss")) == int((epochs["split"] == "val").sum())
    cli = Path(sys.executable).parent / "tensorboard"
    if cli.is_file():  # what `tensorboard --inspect` lists
        listed = subprocess.run([str(cli), "--inspect", "--logdir", str(log_dir)], capture_output=True,
                                text=True, timeout=120, check=True).stdout  # fmt: skip
        assert "val/loss" in listed and "test/macro/auroc/low" in listed


def test_train_csv_logger_and_bad_tracker_name(tiny_phantoms: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, tiny_phantoms))
    bad = runner.invoke(app, ["train", str(config), "--offline", "--no-progress",
                              "--tracking", "wandb"])
    assert bad.exit_code == 2
    assert "tracking.kind" in bad.output
    result = runner.invoke(app, ["train", str(config), "--offline", "--no-progress",
                                 "--tracking", "csv", "--no-evaluate"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "runs" / "tiny" / "logs" / "csv" / "metrics.csv")
    assert frame["val/loss"].notna().sum() == 3


def test_flattening_intervals_and_verdicts() -> None:
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "d": "null", "e": "{}"}
    metrics = {"test": {"macro": {"auroc": 0.7, "brier": float("nan")},
                        "per_label": {"x y": {"n": 3, "auroc": 0.6}},
                        "verdicts": {"beats_trivial": "no"}},
               "ci": {"macro/auroc": {"low": 0.5, "high": 0.9}}, "thresholds": {"x y": 0.4}}
    assert evaluation_metric_values(metrics) == {
        "test/macro/auroc": 0.7, "test/x_y/auroc": 0.6, "test/macro/auroc/low": 0.5,
        "test/macro/auroc/high": 0.9, "threshold/x_y": 0.4}
    assert verdict_tags(metrics) == {"verdict.beats_trivial": "no"}
    listed = {"test": {"verdicts": [  # what evaluation writes: one entry per label and kind
        {"label": "Nodule", "kind": "chance", "message": "Nodule: AUROC 0.48 [0.32, 0.64]"},
        {"label": "Pleural Effusion", "kind": "small_val", "message": "too few"},
        {"label": "Pleural Effusion", "kind": "small_val", "message": "again"},
        {"label": "a=b", "kind": None, "detail": 1}, 7]}}
    assert verdict_tags(listed) == {
        "verdict.Nodule.chance": "Nodule: AUROC 0.48 [0.32, 0.64]",
        "verdict.Pleural Effusion.small_val": "too few",
        "verdict.Pleural Effusion.small_val_": "again",
        "verdict.a_b": '{"label": "a=b", "kind": null, "detail": 1}', "verdict.4": "7"}
    assert verdict_tags({"test": {}}) == {}
    assert TrackingConfig().kind == "none"


def test_experiment_level_tracking_section_reaches_every_run(tiny_phantoms: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrfuse.config import load_experiment_config
    from cxrfuse.problems import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = tiny_config(tmp_path, tiny_phantoms)
    experiment = {"name": "grid", "runs_dir": str(tmp_path / "runs"), "base": base,
                  "tracking": {"kind": "mlflow", "tags": {"owner": "me"}},
                  "grid": {"training.lr": [0.001, 0.01]}}
    path = write_config(tmp_path / "grid.yaml", experiment)
    runs = load_experiment_config(path).expand()
    assert [r.tracking.kind for r in runs] == ["mlflow", "mlflow"]
    assert {r.tracking.experiment for r in runs} == {"grid"}
    assert runs[0].tracking.uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert runs[0].tracking.tags == {"owner": "me", "experiment": "grid", "seed": "0",
                                     "training.lr": "lr0.001"}
    experiment["tracking"] = {"kind": "neptune"}
    with pytest.raises(ConfigError, match="base.tracking.kind"):
        load_experiment_config(write_config(tmp_path / "bad.yaml", experiment))


def test_evaluate_and_report_verbs_refresh_the_card_and_the_tracker_run(
    tiny_phantoms: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, tiny_phantoms))
    store = tmp_path / "store.db"
    trained = runner.invoke(app, ["train", str(config), "--offline", "--no-progress", "--no-evaluate",
                                  "--tracking", "mlflow", "--set", f"tracking.uri=sqlite:///{store}"])
    assert trained.exit_code == 0, trained.output
    run_dir = tmp_path / "runs" / "tiny"
    card = (run_dir / "README.md").read_text()
    assert "evaluated: false" in card and "Not evaluated yet" in card
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    assert "test/macro/auroc" not in mlflow.get_run(run_id).data.metrics
    assert runner.invoke(app, ["evaluate", str(run_dir), "--n-boot", "20"]).exit_code == 0
    assert "evaluated: true" in (run_dir / "README.md").read_text()
    assert "test/macro/auroc" in mlflow.get_run(run_id).data.metrics
    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run_id)}
    assert {"report.html", "README.md", "metrics.json"} <= artifacts


PRESETS = Path(__file__).resolve().parents[2] / "configs"


def preset_experiment(manifest: Path, tmp_path: Path, tracking: str) -> list[str]:
    """`cxrfuse experiment` of design 000's honest grid preset, made tiny by `--set` only."""
    return ["experiment", str(PRESETS / "iu-multilabel-attention-indication.yaml"), "--offline",
            "--no-progress", "--tracking", tracking, "--runs-dir", str(tmp_path / "runs"),
            "--set", f"base.data.manifest={manifest}", "--set", f"base.data.store={tmp_path / 'store'}",
            "--set", "base.data.task=normal-abnormal", "--set", "base.image.input_size=64",
            "--set", "base.text.offline_encoder=tfidf", "--set", "base.text.offline_options={svd_dim: 8}",
            "--set", "base.training.max_epochs=3", "--set", "base.training.batch_size=8",
            "--set", "base.evaluation={n_boot: 20}"]  # fmt: skip


def test_shipped_preset_experiment_with_mlflow_reads_back_params_epochs_and_artifacts(
    tiny_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shipped preset (design 000's honest grid) run as a user runs it, made tiny only by
    `--set`: one MLflow run per grid point in mlruns.db beside the runs dir, holding the
    preset's params, every epoch of epochs.csv, the test AUROC with its interval, the verdicts
    and the artifacts (model card, metrics.json, plots) byte for byte."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    result = runner.invoke(app, preset_experiment(tiny_phantoms, tmp_path, "mlflow"))
    assert result.exit_code == 0, result.output
    store = tmp_path / "mlruns.db"
    assert store.is_file()
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    client = mlflow.tracking.MlflowClient()
    found = mlflow.search_runs(experiment_names=["iu-multilabel-attention-indication"])
    assert len(found) == 3 and set(found["status"]) == {"FINISHED"}
    assert set(found["tags.model.modalities"]) == {"image", "text", "multimodal"}
    for row in found.to_dict("records"):
        run_dir = Path(row["tags.cxrfuse.run_dir"])
        assert run_dir.parent.parent == runs / "iu-multilabel-attention-indication"
        data = mlflow.get_run(row["run_id"]).data
        # the preset's values, resolved (offline encoders swapped in) and flattened
        assert data.params["image.views"] == "attention" and data.params["training.lr"] == "0.001"
        assert data.params["model.hidden"] == "[256]" and data.params["model.dropout"] == "0.3"
        assert data.params["text.sections"] == '["indication", "comparison"]'
        assert data.params["image.encoder"] == "efficientnet-lite0"
        assert data.params["data.manifest"] == str(tiny_phantoms)
        epochs = pd.read_csv(run_dir / "epochs.csv")
        for split in ("train", "val"):
            history = client.get_metric_history(row["run_id"], f"{split}/loss")
            rows = epochs[epochs["split"] == split]
            assert [m.step for m in history] == rows["epoch"].tolist()
            assert [m.value for m in history] == pytest.approx(rows["loss"].tolist())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        auroc, ci = metrics["test"]["macro"]["auroc"], metrics["ci"]["macro/auroc"]
        assert data.metrics["test/macro/auroc"] == pytest.approx(auroc)
        assert data.metrics["test/macro/auroc/low"] <= data.metrics["test/macro/auroc"] \
            <= data.metrics["test/macro/auroc/high"]
        assert data.metrics["test/macro/auroc/low"] == pytest.approx(ci["low"])
        verdicts = metrics["test"].get("verdicts") or []
        tags = {t: v for t, v in data.tags.items() if t.startswith("verdict.")}
        assert len(tags) == len(verdicts)
        for verdict in verdicts:  # named by label and kind (a run-wide one: kind), the message
            name = ".".join(str(verdict[k]) for k in ("label", "kind") if verdict.get(k))
            assert tags[f"verdict.{name}"] == verdict["message"]
        listed = {a.path for a in client.list_artifacts(row["run_id"])}
        assert {"README.md", "metrics.json", "plots"} <= listed
        plots = {Path(a.path).name for a in client.list_artifacts(row["run_id"], "plots")}
        assert plots == {p.name for p in (run_dir / "plots").glob("*.png")} and plots
        card = Path(client.download_artifacts(row["run_id"], "README.md", str(tmp_path)))
        assert card.read_bytes() == (run_dir / "README.md").read_bytes()
        assert "Research use only" in card.read_text()


def test_shipped_preset_experiment_with_tensorboard_is_listed_by_tensorboard_inspect(
    tiny_phantoms: Path, tmp_path: Path
) -> None:
    """The same preset grid with `--tracking tensorboard`: every grid point leaves event files
    whose scalars `tensorboard --inspect` lists (every epoch of val/loss, the test AUROC and
    its interval)."""
    cli = Path(sys.executable).parent / "tensorboard"
    if not cli.is_file():
        pytest.skip("the tensorboard command is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, preset_experiment(tiny_phantoms, tmp_path, "tensorboard"))
    assert result.exit_code == 0, result.output
    grid = tmp_path / "runs" / "iu-multilabel-attention-indication" / "runs"
    run_dirs = sorted(p for p in grid.iterdir() if (p / "run.json").is_file())
    assert [p.name for p in run_dirs] == ["image-seed0", "multimodal-seed0", "text-seed0"]
    for run_dir in run_dirs:
        log_dir = run_dir / "logs" / "tensorboard"
        listed = subprocess.run([str(cli), "--inspect", "--logdir", str(log_dir)], capture_output=True,
                                text=True, timeout=120, check=True).stdout  # fmt: skip
        epochs = int((pd.read_csv(run_dir / "epochs.csv")["split"] == "val").sum())
        for tag in ("val/loss", "train/loss", "test/macro/auroc", "test/macro/auroc/low",
                    "test/macro/auroc/high"):  # fmt: skip
            assert tag in listed, (run_dir.name, tag)
        events = EventAccumulator(str(log_dir))
        events.Reload()
        assert len(events.Scalars("val/loss")) == epochs  # every epoch
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert events.Scalars("test/macro/auroc")[0].value == pytest.approx(
            metrics["test"]["macro"]["auroc"], abs=1e-6)
