"""`cxrfuse generate finetune` and its folder: `--tracking` through the training runs' trackers
(a real MLflow SQLite store read back with `mlflow.search_runs`, Lightning's CSV logger), the
typed `finetune.json`, a user's folder refused and left as it was, and the folder's lock
(`--no-wait`). A tiny random Mllama built in the test, offline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tiny_vlm import build_tiny_manifest, build_tiny_vlm
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.config import TrackingConfig
from cxrfuse.files import folder_lock
from cxrfuse.generation.lora import LoraSettings
from cxrfuse.generation.pipeline import finetune_vlm
from cxrfuse.rundir import GenerationDir, LoraRunInfo

runner = CliRunner()
SET = ["--set", "epochs=2", "--set", "grad_accum=1", "--set", "lr=0.01", "--set", "device=cpu",
       "--set", "patience=null", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")
    manifest = build_tiny_manifest(tmp_path_factory.mktemp("cxr"), n_train=4, n_val=2, n_test=1)
    return model, manifest


def _history(gen: GenerationDir) -> list[dict]:
    info = gen.lora_info()
    assert isinstance(info, LoraRunInfo) and info.status == "finished" and info.epochs_done == 2
    return info.history


def test_mlflow_store_gets_the_settings_and_every_epoch(tiny: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model, manifest = tiny
    out = tmp_path / "gen" / "lora"
    result = runner.invoke(app, ["generate", "finetune", str(model), str(manifest), "--out", str(out),
                                 "--tracking", "mlflow", *SET])  # fmt: skip
    assert result.exit_code == 0, result.output
    history = _history(GenerationDir(out))
    store = tmp_path / "gen" / "mlruns.db"  # beside the generation directory
    assert store.is_file()
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(experiment_names=["cxrfuse"])
    assert len(runs) == 1
    run_id = runs["run_id"].iloc[0]
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run_id
    data = mlflow.get_run(run_id).data
    assert data.params["lora.r"] == "16" and data.params["model"] == str(model)
    assert data.tags["status"] == "finished"
    client = mlflow.tracking.MlflowClient()
    for key, column in (("val/loss", "val_loss"), ("train/loss", "train_loss")):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert logged == [(row["epoch"], pytest.approx(row[column])) for row in history]
    assert data.metrics["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in history))
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"finetune.json", "epochs.csv", "curves.png"} <= artifacts


def test_csv_logger_gets_every_epoch_and_a_rerun_resumes(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, manifest = tiny
    settings = LoraSettings(epochs=1, grad_accum=1, lr=0.01, device="cpu", patience=None)
    out = tmp_path / "lora"
    finetune_vlm(str(model), manifest, out, settings, progress=False,
                 tracking=TrackingConfig(kind="csv"))  # fmt: skip
    resumed = settings.model_copy(update={"epochs": 2})
    finetune_vlm(str(model), manifest, out, resumed, progress=False, tracking=TrackingConfig(kind="csv"))
    history = _history(GenerationDir(out))
    with open(out / "logs" / "csv" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/loss")]
    # the second call's tracker run shows the whole curve: epoch 1 (resumed) and epoch 2
    assert [int(r["step"]) for r in rows][-2:] == [1, 2]
    assert [float(r["val/loss"]) for r in rows][-2:] == pytest.approx([h["val_loss"] for h in history])
    assert "lora.r: 16" in (out / "logs" / "csv" / "hparams.yaml").read_text()
    # `cxrfuse report` of the fine-tuning folder: the record, the losses and the curves
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert f"LoRA fine-tuning: {model}" in html and "Loss per epoch" in html
    assert "the adapter kept is epoch" in html and "data:image/png;base64" in html


def test_a_user_folder_is_refused_and_kept(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, manifest = tiny
    mine = tmp_path / "mine"
    (mine / "adapter").mkdir(parents=True)
    (mine / "adapter" / "adapter_model.safetensors").write_bytes(b"the user's own")
    (mine / "checkpoint").mkdir()
    (mine / "checkpoint" / "notes.txt").write_text("keep me")
    before = sorted((p.relative_to(mine), p.read_bytes()) for p in mine.rglob("*") if p.is_file())
    result = runner.invoke(app, ["generate", "finetune", str(model), str(manifest), "--out", str(mine), *SET])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(mine) in result.output.replace("\n", "")
    after = sorted((p.relative_to(mine), p.read_bytes()) for p in mine.rglob("*") if p.is_file())
    assert after == before  # nothing replaced, nothing added
    # an empty folder is used, and a rerun of a finished fine-tuning is accepted
    empty = tmp_path / "empty"
    empty.mkdir()
    for _ in range(2):
        result = runner.invoke(app, ["generate", "finetune", str(model), str(manifest), "--out", str(empty), *SET])
        assert result.exit_code == 0, result.output


def test_no_wait_names_the_writer_holding_the_folder(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, manifest = tiny
    out = tmp_path / "lora"
    with folder_lock(out, "the generation directory"):
        result = runner.invoke(app, ["generate", "finetune", str(model), str(manifest), "--out", str(out),
                                     "--no-wait", *SET])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "is being written by pid" in result.output and str(out) in result.output.replace("\n", "")
    assert not (out / "finetune.json").exists()


def test_tensorboard_event_files_hold_every_epoch(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, manifest = tiny
    out = tmp_path / "lora"
    result = runner.invoke(app, ["generate", "finetune", str(model), str(manifest), "--out", str(out),
                                 "--tracking", "tensorboard", *SET])  # fmt: skip
    assert result.exit_code == 0, result.output
    history = _history(GenerationDir(out))
    events = EventAccumulator(str(out / "logs" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val/loss")]
    assert logged == [(row["epoch"], pytest.approx(row["val_loss"])) for row in history]


def test_a_failed_epoch_ends_the_mlflow_run_as_failed(tiny: tuple[Path, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    mlflow = pytest.importorskip("mlflow")
    from cxrfuse.generation import lora

    model, manifest = tiny
    store = tmp_path / "mlruns.db"
    calls = []

    def failing(*args: object, **kwargs: object) -> float:
        calls.append(1)
        if len(calls) == 2:  # the val loss of epoch 2
            raise RuntimeError("out of memory in epoch 2")
        return 1.0

    monkeypatch.setattr(lora, "mean_loss", failing)
    settings = LoraSettings(epochs=2, grad_accum=1, lr=0.01, device="cpu", patience=None)
    tracking = TrackingConfig(kind="mlflow", uri=f"sqlite:///{store}", experiment="lora-fail")
    with pytest.raises(RuntimeError, match="epoch 2"):
        finetune_vlm(str(model), manifest, tmp_path / "lora", settings, progress=False, tracking=tracking)
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(experiment_names=["lora-fail"])
    assert runs["status"].tolist() == ["FAILED"]
    info = GenerationDir(tmp_path / "lora").lora_info()
    assert info is not None and info.status == "failed" and [r["epoch"] for r in info.history] == [1]
