"""`cxrfuse sweep`: an Optuna search on train/val that never reads a test row, resumable from
its SQLite study after SIGKILL, with one test evaluation of the retrained best config."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_train_cli import tiny_config, write_config
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.config.run import validate_run
from cxrfuse.data import read_manifest
from cxrfuse.problems import ConfigError
from cxrfuse.training import train_run
from cxrfuse.training.sweep import DEFAULT_SPACES, load_space, run_sweep

optuna = pytest.importorskip("optuna")
SRC = Path(__file__).resolve().parents[2] / "src"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
runner = CliRunner()
SPACE = {"training.lr": {"type": "float", "low": 0.001, "high": 0.03, "log": True},
         "model.dropout": {"type": "float", "low": 0.0, "high": 0.5}}


def test_no_trial_reads_a_test_row(tiny_phantoms: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The data path is instrumented: every image decoded for the store and every study of a
    manifest the training reads is recorded. A plain run reads the test rows (so the probe
    works); the sweep's trials read none."""
    import cxrfuse.store.images as store_images
    from cxrfuse.config import apply_offline
    from cxrfuse.training import inputs

    manifest = read_manifest(tiny_phantoms)
    test = manifest.df[manifest.df["split"] == "test"]
    test_ids = set(test["study_id"].astype(str))
    test_paths = {str(v["path"]) for views in test["views"] for v in views}
    assert test_ids and test_paths
    decoded: list[str] = []
    studies: list[str] = []
    original_decode, original_read = store_images.decode_resized, inputs.read_manifest

    def decode(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoded.append(str(path))
        return original_decode(path, *args, **kwargs)

    def read(path):  # type: ignore[no-untyped-def]
        m = original_read(path)
        studies.extend(m.df["study_id"].astype(str))
        return m

    monkeypatch.setattr(store_images, "decode_resized", decode)
    # every cxrfuse module that bound read_manifest, except the sweep itself (it reads the
    # manifest once, to write the copy without test rows that the trials read)
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("cxrfuse.") and name != "cxrfuse.training.sweep" and \
                getattr(module, "read_manifest", None) is original_read:
            monkeypatch.setattr(module, "read_manifest", read)
    raw = tiny_config(tmp_path, tiny_phantoms)
    raw["data"]["store"] = str(tmp_path / "store-plain")
    config = apply_offline(validate_run(raw))
    train_run(config, progress=False)
    assert test_paths & set(decoded) and test_ids & set(studies)  # the probe sees test reads
    decoded.clear()
    studies.clear()
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"store": str(tmp_path / "store-sweep")})})
    result = run_sweep(config, load_space(SPACE, config), 3, tmp_path / "sweep",
                       say=lambda _: None, retrain_best=False)
    assert sum(result["states"].get(s, 0) for s in ("COMPLETE", "PRUNED")) == 3
    assert decoded and studies  # the trials did read images and manifests ...
    assert not test_paths & set(decoded)  # ... but no test image
    assert not test_ids & set(studies)  # ... and no test study
    search = read_manifest(tmp_path / "sweep" / "search_manifest.parquet")
    assert "test" not in set(search.df["split"]) and len(search.df) > 0
    written = sorted((tmp_path / "sweep" / "trials").glob("*/predictions.parquet"))
    assert written  # pruned trials stop before predicting
    for path in written:
        assert set(pd.read_parquet(path)["split"]) == {"val"}


def test_space_errors_name_the_key(tiny_phantoms: Path, tmp_path: Path) -> None:
    config = validate_run(tiny_config(tmp_path, tiny_phantoms))
    with pytest.raises(ConfigError, match="params.training.nope"):
        load_space({"training.nope": {"type": "float", "low": 0, "high": 1}}, config)
    with pytest.raises(ConfigError, match="low < high"):
        load_space({"training.lr": {"type": "float", "low": 1, "high": 0.1}}, config)
    path = tmp_path / "space.yaml"
    path.write_text("training.lr: {type: float, low: 0.1, high: 1, lug: true}\n")
    with pytest.raises(ConfigError, match="lug"):
        load_space(path, config)
    for mode, space in DEFAULT_SPACES.items():  # the shipped copies of the default spaces
        name = "head" if mode == "embeddings" else mode
        assert yaml.safe_load((CONFIGS / "sweep" / f"{name}.yaml").read_text()) == space


def test_sweep_killed_after_trials_resumes_to_n_trials_and_one_test_evaluation(
    tiny_phantoms: Path, tmp_path: Path
) -> None:
    raw = tiny_config(tmp_path, tiny_phantoms)
    raw["data"]["store"] = str(tmp_path / "store")
    raw["training"]["max_epochs"] = 4
    config = write_config(tmp_path / "tiny.yaml", raw)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(config), "--offline", "--trials", "5", "--space", str(space),
            "--out", str(sweep_dir)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cxrfuse.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = sweep_dir / "study.db"

    def finished() -> int:
        """Finished trials, read-only: optuna.load_study here could create the schema while the
        sweep creates it too (a race that kills the sweep with an IntegrityError)."""
        if not study.is_file():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(f"file:{study}?mode=ro", uri=True)) as db:
                row = db.execute("SELECT count(*) FROM trials WHERE state IN "
                                 "('COMPLETE', 'PRUNED')").fetchone()
        except sqlite3.Error:  # the schema is not there yet, or is being written
            return 0
        return int(row[0])

    deadline = time.monotonic() + 300
    while finished() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the sweep ended before it could be killed"
    before = finished()
    assert 2 <= before < 5
    assert not (sweep_dir / "best").exists()
    result = runner.invoke(app, args + ["--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"resuming: {before} of 5" in result.output
    s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study}")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in s.trials) == 5
    done = [tuple(sorted(t.params.items())) for t in s.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(set(done)) == 5  # the resumed sampler did not redraw the points already tried
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert sweep["best"]["number"] == s.best_trial.number
    best = sweep_dir / "best"
    config_best = yaml.safe_load((best / "config.yaml").read_text())
    for key, value in sweep["best"]["params"].items():
        section, leaf = key.split(".")
        assert config_best[section][leaf] == pytest.approx(value)
    assert config_best["data"]["manifest"] == str(tiny_phantoms)  # best: the full manifest
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0
    assert len(pd.read_csv(sweep_dir / "trials.csv")) >= 5
    report = (sweep_dir / "report.md").read_text()
    assert "one look at the test split after a search of 5 trial(s)" in report
    assert (sweep_dir / "optimisation_history.png").is_file()
    assert (sweep_dir / "param_importance.png").is_file()


SHARED_NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-cxr14-sample"


@pytest.mark.skipif(not (SHARED_NIH / "labels.csv").is_file(), reason="NIH sample not present")
def test_sweep_on_real_radiographs_decodes_no_test_image(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Real NIH radiographs (image-only, normal vs abnormal): the trials decode train and val
    images only; the retrained best run then reads the test images once."""
    import cxrfuse.store.images as store_images
    from cxrfuse.data.nih import ingest_nih
    from cxrfuse.data.splits import assign_splits

    nih, _ = ingest_nih(SHARED_NIH / "labels.csv", SHARED_NIH / "images")
    nih = assign_splits(nih.replace(df=nih.df.head(80)), (0.6, 0.2, 0.2), seed=0, task="normal-abnormal")
    manifest = nih.save(tmp_path / "nih.parquet")
    test_paths = {str(v["path"]) for views in nih.df.loc[nih.df["split"] == "test", "views"] for v in views}
    assert test_paths
    decoded: list[str] = []
    original = store_images.decode_resized

    def decode(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        decoded.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(store_images, "decode_resized", decode)
    raw = tiny_config(tmp_path, manifest, **{"model.modalities": ["image"]})
    raw["data"]["store"] = str(tmp_path / "store")
    raw["training"]["max_epochs"] = 2
    from cxrfuse.config import apply_offline

    config = apply_offline(validate_run(raw))
    space = load_space(SPACE, config)
    run_sweep(config, space, 2, tmp_path / "sweep", say=lambda _: None, retrain_best=False)
    searched = set(decoded)
    assert searched and not searched & test_paths  # the search: train and val images only
    said: list[str] = []
    result = run_sweep(config, space, 2, tmp_path / "sweep", say=said.append)  # resume: retrain best
    assert any("2 of 2 trial(s) finished before" in line for line in said)
    assert test_paths <= set(decoded)  # the best run is the one that reads the test images
    other = load_space({"training.lr": {"type": "float", "low": 0.01, "high": 0.1}}, config)
    with pytest.raises(ConfigError, match="another space"):
        run_sweep(config, other, 2, tmp_path / "sweep", say=said.append)
    best = Path(result["best_run"])
    assert json.loads((best / "run.json").read_text())["images"] == "real"
    assert set(pd.read_parquet(best / "predictions.parquet")["split"]) == {"val", "test"}
