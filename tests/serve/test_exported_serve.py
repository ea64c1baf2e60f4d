"""An exported folder stands alone: `cxrfuse export RUN --to DIR` (and `--format onnx`), the
folder copied elsewhere, the run and the first export deleted, then `cxrfuse predict DIR` and
`cxrfuse serve DIR` (a real uvicorn server in its own process, over HTTP) answer the run's own
stored test predictions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.store.distributed import free_port

SRC = Path(__file__).resolve().parents[2] / "src"
runner = CliRunner()


@pytest.fixture(scope="module")
def exported(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The served run copied, exported twice (run files; + ONNX), both folders moved to a new
    place, and the run copy and the first exports deleted."""
    pytest.importorskip("onnxruntime")
    tmp = tmp_path_factory.mktemp("exported-serve")
    run = Path(shutil.copytree(served_run, tmp / "run"))
    folders = {}
    for fmt in ("run", "onnx"):
        first = tmp / f"export-{fmt}"
        result = runner.invoke(app, ["export", str(run), "--to", str(first), "--format", fmt])
        assert result.exit_code == 0, result.output
        folders[fmt] = Path(shutil.copytree(first, tmp / "elsewhere" / f"model-{fmt}"))
        shutil.rmtree(first)
    shutil.rmtree(run)
    return folders


def stored(served_run: Path, study_id: str) -> float:
    frame = pd.read_parquet(served_run / "predictions.parquet").set_index("study_id")
    return float(frame.loc[study_id, "p__abnormal"])


@pytest.fixture
def server(tmp_path: Path) -> Iterator:
    """Starts ``cxrfuse serve FOLDER --port P [--backend ...]`` as a process (cwd: an empty
    folder) and yields its base URL once /health answers; the process is terminated after."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path, *extra: str) -> str:
        port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1")
        log = (tmp_path / f"serve-{port}.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "cxrfuse.cli", "serve", str(folder),
                                 "--port", str(port), *extra],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"cxrfuse serve did not answer /health: "
                             f"{(tmp_path / f'serve-{port}.log').read_text()}")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_exported_folder_holds_no_path_to_the_deleted_run(exported: dict[str, Path]) -> None:
    for folder in exported.values():
        assert (folder / "README.md").is_file() and (folder / "model.safetensors").is_file()
        assert not (folder / "predictions.parquet").exists()
        files = json.loads((folder / "export.json").read_text())["files"]
        assert set(files) <= {p.name for p in folder.iterdir()}
    assert (exported["onnx"] / "model.onnx").is_file()


def test_predict_from_the_moved_export(exported: dict[str, Path], served_run: Path,
                                       test_study: dict) -> None:
    expected = stored(served_run, test_study["study_id"])
    for fmt, backend in (("run", "torch"), ("onnx", "torch"), ("onnx", "onnxruntime")):
        result = runner.invoke(app, ["predict", str(exported[fmt]), "--image", test_study["frontal"],
                                     "--view", "PA", "--image", test_study["lateral"], "--view", "LATERAL",
                                     "--indication", test_study["indication"], "--backend", backend])  # fmt: skip
        assert result.exit_code == 0, (fmt, backend, result.output)
        answer = json.loads(result.output)
        assert answer["probabilities"]["abnormal"] == pytest.approx(expected, abs=1e-4), (fmt, backend)


@pytest.mark.parametrize(("fmt", "backend"), [("run", "torch"), ("onnx", "onnxruntime")])
def test_serve_the_moved_export_over_http(exported: dict[str, Path], served_run: Path,
                                          test_study: dict, server, fmt: str, backend: str) -> None:
    url = server(exported[fmt], "--backend", backend)
    card = httpx.get(f"{url}/v1/model", timeout=30).json()
    assert card["labels"] == ["abnormal"] and card["backend"] == backend
    assert card["thresholds"] == json.loads((served_run / "model.json").read_text())["thresholds"]
    files = [("images", (name, Path(test_study[key]).read_bytes(), "application/octet-stream"))
             for name, key in (("f.png", "frontal"), ("l.png", "lateral"))]  # fmt: skip
    answer = httpx.post(f"{url}/v1/predict", files=files, timeout=120,
                        data={"views": ["PA", "LATERAL"], "indication": test_study["indication"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = stored(served_run, test_study["study_id"])
    assert body["probabilities"]["abnormal"] == pytest.approx(expected, abs=1e-4)
    assert body["decisions"]["abnormal"] == (expected >= body["thresholds"]["abnormal"])
    page = httpx.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and "<script>" in page.text
