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

from cxrfuse.config.run import validate_run
from cxrfuse.data import read_manifest
from cxrfuse.problems import ConfigError
from cxrfuse.training import train_run
from cxrfuse.training.sweep import DEFAULT_SPACES, load_space, run_sweep

optuna = pytest.importorskip("optuna")
SRC = Path(__file__).resolve().parents[2] / "src"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
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


PROBE = Path(__file__).resolve().parent / "sweep_probe.py"


def finished_in(study: Path) -> int:
    """Finished (complete or pruned) trials, read-only: optuna.load_study here could create the
    schema while the sweep creates it too (a race that kills the sweep with an IntegrityError)."""
    if not study.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{study}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT count(*) FROM trials WHERE state IN "
                             "('COMPLETE', 'PRUNED')").fetchone()
    except sqlite3.Error:  # the schema is not there yet, or is being written
        return 0
    return int(row[0])


def running_mid_trial(study: Path) -> bool:
    """A trial is running and has reported at least one epoch (killed now, it is cut off)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{study}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT count(*) FROM trials JOIN trial_intermediate_values USING "
                             "(trial_id) WHERE state = 'RUNNING'").fetchone()
    except sqlite3.Error:
        return False
    return int(row[0]) > 0


def probed(args: list[str], log: Path, out: Path) -> subprocess.Popen:
    """``cxrfuse ARGS`` in a process of its own, its data reads logged to ``log``
    (:mod:`sweep_probe`)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(PROBE), str(log), "--", *args], env=env,
                            stdout=out.open("w"), stderr=subprocess.STDOUT)  # fmt: skip


def reads(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sweep_of_8_killed_after_the_third_trial_resumes_to_8_and_one_test_evaluation(
    tiny_phantoms: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """The issue's scenario: `cxrfuse sweep --trials 8` killed once its third trial has
    finished, then the same command again: 8 finished trials in study.db, none of the first
    three trained again, the trial cut off retried with its parameters, the best trial and the
    report right, one test evaluation (of the retrained best), and no trial read a test row
    (the data path of both processes is instrumented)."""
    raw = tiny_config(tmp_path, tiny_phantoms)
    raw["data"]["store"] = str(tmp_path / "store")
    raw["training"]["max_epochs"] = 4
    config = write_config(tmp_path / "tiny.yaml", raw)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(config), "--offline", "--trials", "8", "--space", str(space),
            "--out", str(sweep_dir), "--no-progress"]
    study = sweep_dir / "study.db"
    first = probed(args, tmp_path / "reads-1.jsonl", tmp_path / "out-1.txt")
    deadline = time.monotonic() + 300
    # after the third trial finished, in the middle of the fourth (the harder case: a trial
    # cut off has to be retried, not counted)
    while not (finished_in(study) == 3 and running_mid_trial(study)) and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = first.poll() is None
    first.send_signal(sig)
    code = first.wait()
    assert alive, "the sweep ended before it could be killed: " + (tmp_path / "out-1.txt").read_text()
    # SIGTERM inside a Lightning fit is caught by the trainer: one error line and 128 + 15,
    # never 0 (outside a fit the default handler ends the process: -15)
    said = (tmp_path / "out-1.txt").read_text()
    assert code in ((-sig,) if sig == signal.SIGKILL else (-sig, 128 + sig)), (code, said)
    if code == 128 + sig:
        assert "error: stopped by SIGTERM" in said
    assert finished_in(study) == 3
    assert not (sweep_dir / "best").exists() and not (sweep_dir / "sweep.json").exists()
    s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study}")
    first_three = {t.number: t.params for t in s.trials if t.state.name in ("COMPLETE", "PRUNED")}
    stamps = {n: (sweep_dir / "trials" / f"trial-{n:03d}" / "run.json").stat().st_mtime_ns
              for n in first_three}  # fmt: skip
    cut_off = [t for t in s.trials if t.state.name == "RUNNING"]  # killed inside a trial
    assert len(cut_off) == 1 and cut_off[0].intermediate_values

    second = probed(args, tmp_path / "reads-2.jsonl", tmp_path / "out-2.txt")
    assert second.wait(timeout=600) == 0, (tmp_path / "out-2.txt").read_text()
    said = (tmp_path / "out-2.txt").read_text()
    assert "resuming: 3 of 8" in said
    assert "1 trial(s) cut off by an earlier stop: marked failed and queued again" in said
    s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study}")
    done = [t for t in s.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 8 and {t.number: t.params for t in done[:3]} == first_three
    assert len({tuple(sorted(t.params.items())) for t in done}) == 8  # no point drawn twice
    for t in cut_off:  # its parameters tried again, once, by a later trial
        retried = [d for d in done if d.params == t.params and d.number > t.number]
        assert len(retried) == 1 and s.trials[t.number].state.name == "FAIL"
    for n, stamp in stamps.items():  # the first three were not trained again
        assert (sweep_dir / "trials" / f"trial-{n:03d}" / "run.json").stat().st_mtime_ns == stamp
    trained_again = {r["run"] for r in reads(tmp_path / "reads-2.jsonl") if r["run"]}
    assert trained_again == {f"trial-{t.number:03d}" for t in done[3:]} | {"best"}

    # the best trial, its retrained config, one test evaluation and the report
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    complete = [t for t in done if t.state.name == "COMPLETE"]
    best_trial = min(complete, key=lambda t: t.value)
    assert sweep["best"]["number"] == s.best_trial.number == best_trial.number
    assert sweep["best"]["val_loss"] == pytest.approx(best_trial.value)
    assert sweep["trials_requested"] == 8 and sweep["test_split_read_by_trials"] is False
    assert [(look["trials"], look["best"]) for look in sweep["test_looks"]] == [(8, best_trial.number)]
    best = sweep_dir / "best"
    config_best = yaml.safe_load((best / "config.yaml").read_text())
    for key, value in best_trial.params.items():
        section, leaf = key.split(".")
        assert config_best[section][leaf] == pytest.approx(value)
    assert config_best["data"]["manifest"] == str(tiny_phantoms)  # best: the full manifest
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0
    table = pd.read_csv(sweep_dir / "trials.csv")
    assert len(table) == len(s.trials) and table["state"].isin(["COMPLETE", "PRUNED"]).sum() == 8
    report = (sweep_dir / "report.md").read_text()
    assert "one look at the test split after a search of 8 trial(s)" in report
    assert (sweep_dir / "optimisation_history.png").is_file()
    assert (sweep_dir / "param_importance.png").is_file()
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == \
        [f"trial-{t.number:03d}" for t in s.trials]  # one run directory per trial, none reused

    # no trial of either process read a test row; the retrained best did (the probe works)
    manifest = read_manifest(tiny_phantoms).df
    test = manifest[manifest["split"] == "test"]
    test_ids = set(test["study_id"].astype(str))
    test_paths = {str(v["path"]) for views in test["views"] for v in views}
    logged = reads(tmp_path / "reads-1.jsonl") + reads(tmp_path / "reads-2.jsonl")
    by_trials = {v for r in logged if (r["run"] or "").startswith("trial-") for v in r["values"]}
    assert {r["kind"] for r in logged if (r["run"] or "").startswith("trial-")} == {"studies", "image"}
    assert by_trials and not by_trials & (test_ids | test_paths)
    by_best = {v for r in logged if r["run"] == "best" for v in r["values"]}
    assert test_ids <= by_best and test_paths <= by_best
    for path in (sweep_dir / "trials").glob("*/predictions.parquet"):
        assert set(pd.read_parquet(path)["split"]) == {"val"}


def test_extending_a_finished_sweep_counts_its_test_looks(tiny_phantoms: Path, tmp_path: Path) -> None:
    """`--trials 1`, then the same sweep with `--trials 2`: a new best is retrained and
    evaluated afresh (its metrics.json is its own, never the old best's), sweep.json counts
    each look at the test split and the report warns from the second."""
    from sklearn.metrics import roc_auc_score
    from typer.testing import CliRunner

    from cxrfuse.cli import app

    raw = tiny_config(tmp_path, tiny_phantoms)
    raw["data"]["store"] = str(tmp_path / "store")
    raw["seed"] = 1  # on the dev CPU this seed's best changes from trial 0 to trial 1
    config = write_config(tmp_path / "tiny.yaml", raw)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(config), "--offline", "--space", str(space), "--out", str(sweep_dir)]
    looks = []
    for trials in (1, 2):
        result = CliRunner().invoke(app, [*args, "--trials", str(trials)])
        assert result.exit_code == 0, result.output
        sweep = json.loads((sweep_dir / "sweep.json").read_text())
        looks.append(sweep["best"]["number"])
        # the best run's test figure is computed from its own predictions
        predictions = pd.read_parquet(sweep_dir / "best" / "predictions.parquet")
        test = predictions[predictions["split"] == "test"]
        metrics = json.loads((sweep_dir / "best" / "metrics.json").read_text())
        assert metrics["test"]["macro"]["auroc"] == pytest.approx(
            roc_auc_score(test["y__abnormal"], test["p__abnormal"]), abs=1e-6)
    changed = looks[0] != looks[1]
    assert [look["best"] for look in sweep["test_looks"]] == (looks if changed else looks[:1])
    report = (sweep_dir / "report.md").read_text()
    assert ("has been read 2 times" in report) == changed
    assert ("read the test split 2 times" in result.output) == changed


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
