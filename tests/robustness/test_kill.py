"""Kill ``cxrfuse experiment`` with SIGKILL while fine-tuning, during evaluation and before the
summary, and ``cxrfuse clip train`` while training; each rerun goes on from what is on disk
and the end result equals an uninterrupted run (bit-identical predictions or weights, every
run evaluated, the summary written)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from battery_inputs import tiny_run_config
from typer.testing import CliRunner

from cxrfuse.cli import app

SRC = Path(__file__).resolve().parents[2] / "src"
RUNS = ("finetune-seed0", "embeddings-seed0")  # fine-tuning first, then a head on the store
runner = CliRunner()


def experiment_config(tmp: Path, phantoms: Path, store: Path, runs_dir: Path) -> Path:
    """Two tiny runs of the battery's run config: image fine-tuning, then a head on stored
    embeddings."""
    base = tiny_run_config(tmp, phantoms)
    base["data"]["store"] = str(store)
    base["training"].update(max_epochs=3, early_stopping=None)
    base["finetune"] = {"freeze": ["_conv_stem", "_bn0"], "image_lr": 0.001,
                        "augment": {"hflip": 0.5, "rotate_deg": 5}}  # fmt: skip
    payload = {"name": "killed", "runs_dir": str(runs_dir), "base": base,
               "grid": {"training.mode": ["finetune", "embeddings"]}}  # fmt: skip
    path = tmp / f"{runs_dir.name}.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def status(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def run_until(config: Path, moment: Callable[[], bool], timeout: float = 240.0,
              verb: tuple[str, ...] = ("experiment",)) -> bool:  # fmt: skip
    """Start ``cxrfuse VERB CONFIG --offline --no-progress`` in a subprocess and SIGKILL it at
    ``moment``; True when it was killed (False when it ended first)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "cxrfuse.cli", *verb, str(config),
                             "--offline", "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if moment():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
        assert proc.poll() is not None, "experiment did not end in time"
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_experiment_resumes_after_sigkill_at_each_stage(battery_run: Path, battery_phantoms: Path,
                                                        tmp_path: Path) -> None:  # fmt: skip
    store = battery_run.parents[1] / "store"  # the vectors are there: no embedding here
    config = experiment_config(tmp_path, battery_phantoms, store, tmp_path / "killed")
    runs = [tmp_path / "killed" / "killed" / "runs" / name for name in RUNS]
    first, second = runs

    # 1. while fine-tuning the first run
    assert run_until(config, lambda: status(first) == "running")
    assert status(first) == "running" and not (first / "predictions.parquet").exists()
    # 2. during the evaluation of the first run: finished, metrics.json not yet written
    killed = run_until(config, lambda: status(first) == "finished"
                       and not (first / "metrics.json").exists())  # fmt: skip
    assert killed and status(first) == "finished" and not (first / "metrics.json").exists()
    # 3. after the last evaluation, before (or while) the summary is written
    assert run_until(config, lambda: (second / "metrics.json").exists())
    # 4. to the end: the rerun evaluates the first run and writes the summary
    assert not run_until(config, lambda: False)
    for run in runs:
        assert status(run) == "finished" and (run / "metrics.json").is_file(), run
    summary = pd.read_csv(tmp_path / "killed" / "killed" / "summary.csv")
    assert list(summary["status"]) == ["finished", "finished"]

    # the same experiment never interrupted, in this process
    reference = experiment_config(tmp_path, battery_phantoms, store, tmp_path / "reference")
    result = runner.invoke(app, ["experiment", str(reference), "--offline", "--no-progress"])
    assert result.exit_code == 0, result.output
    for name, run in zip(RUNS, runs):
        ref = pd.read_parquet(tmp_path / "reference" / "killed" / "runs" / name / "predictions.parquet")
        got = pd.read_parquet(run / "predictions.parquet")
        pd.testing.assert_frame_equal(got, ref)  # bit-identical
    ref_summary = pd.read_csv(tmp_path / "reference" / "killed" / "summary.csv")
    metrics = [c for c in summary.columns if c.startswith("test_")]
    pd.testing.assert_frame_equal(summary[metrics], ref_summary[metrics])


def running_for(run: Path, seconds: float) -> Callable[[], bool]:
    """A moment: ``seconds`` after run.json first said ``running``."""
    started: list[float] = []

    def moment() -> bool:
        if not started and status(run) == "running":
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > seconds

    return moment


def clip_config(tmp: Path, phantoms: Path, runs_dir: Path) -> Path:
    """A CLIP run of a few seconds: efficientnet-lite0 at 32 px + MiniLM, a 16-d space."""
    payload = {
        "name": "clip", "runs_dir": str(runs_dir), "offline": True,
        "data": {"manifest": str(phantoms), "task": "normal-abnormal"},
        "image": {"input_size": 32}, "text": {"max_length": 32, "freeze_blocks": 5},
        "model": {"projection_dim": 16},
        "training": {"batch_size": 8, "max_epochs": 3, "warmup_epochs": 0.5, "progress": False},
    }  # fmt: skip
    path = tmp / f"{runs_dir.name}.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


@pytest.mark.slow
def test_clip_train_reruns_to_the_same_model_after_sigkill(battery_phantoms: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    from safetensors.numpy import load_file

    reference = clip_config(tmp_path, battery_phantoms, tmp_path / "reference")
    result = runner.invoke(app, ["clip", "train", str(reference), "--offline", "--no-progress"])
    assert result.exit_code == 0, result.output
    duration = json.loads((tmp_path / "reference" / "clip" / "run.json").read_text())["timing_s"]

    config = clip_config(tmp_path, battery_phantoms, tmp_path / "killed")
    run = tmp_path / "killed" / "clip"
    for fraction in (0.5, 0.25, 0.1):  # into a run as long as the reference: fitting, if it can
        if run_until(config, running_for(run, fraction * duration), verb=("clip", "train")):
            break
        shutil.rmtree(run)  # this one ended before the kill: try earlier
    else:
        pytest.fail("clip train always ended before it could be killed")
    assert status(run) == "running" and not (run / "model.safetensors").exists()
    assert not run_until(config, lambda: False, verb=("clip", "train"))
    assert status(run) == "finished"
    got = load_file(run / "model.safetensors")
    ref = load_file(tmp_path / "reference" / "clip" / "model.safetensors")
    assert got.keys() == ref.keys()
    assert all((got[k] == ref[k]).all() for k in ref)  # bit-identical
