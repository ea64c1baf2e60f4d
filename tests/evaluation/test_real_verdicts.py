"""End to end on real radiographs paired with real IU reports (``../shared/data/iu-nih-pairs``,
skipped where absent): ingest the Kaggle layout, split, train image / text / fused runs on
normal-abnormal from the CLI, evaluate, and check that every run's metrics.json carries the
baselines and exactly the verdicts whose conditions hold, that the reports show them as
banners above the results, and that the served model card, answers and page say the image
model is not distinguishable from chance (its encoder is a fixed random draw at 64 px, which
reads nothing of a radiograph; 62 test studies at 84 % abnormal)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.evaluation import paired_bootstrap

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "iu-nih-pairs"
pytestmark = pytest.mark.skipif(not (DATA / "indiana_reports.csv").is_file(),
                                reason=f"{DATA} is absent (real radiographs, not in the repository)")


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    manifest = tmp / "iu.parquet"
    cli("ingest", "iu-xray", "--layout", "kaggle", "--images", str(DATA), "--out", str(manifest))
    cli("split", str(manifest), "--task", "normal-abnormal")
    config = {
        "name": "real", "runs_dir": str(tmp / "runs"), "seeds": [0],
        "grid": {"model.modalities": [["image"], ["text"], ["image", "text"]]},
        "base": {
            "name": "real",
            "data": {"manifest": str(manifest), "task": "normal-abnormal",
                     "store": str(tmp / "store")},
            "image": {"encoder": "efficientnet-lite0", "weights": "none", "input_size": 64,
                      "views": "mean", "embed_batch_size": 32},
            "text": {"encoder": "tfidf", "sections": ["indication"], "options": {"svd_dim": 16}},
            "model": {"kind": "concat-mlp", "hidden": [32], "dropout": 0.3},
            "training": {"max_epochs": 15, "batch_size": 32,
                         "early_stopping": {"monitor": "val_loss", "patience": 4}},
            "evaluation": {"n_boot": 300},
        },
    }  # fmt: skip
    (tmp / "real.yaml").write_text(yaml.safe_dump(config))
    cli("experiment", str(tmp / "real.yaml"), "--no-progress")
    printed = cli("evaluate", str(tmp / "runs" / "real"))
    assert "conclusion:" in printed and "chance:" in printed
    cli("report", str(tmp / "runs" / "real"))
    return tmp / "runs" / "real"


def test_metrics_carry_baselines_and_the_verdicts_that_hold(experiment: Path) -> None:
    for run in ("image-seed0", "text-seed0", "multimodal-seed0"):
        metrics = json.loads((experiment / "runs" / run / "metrics.json").read_text())
        base = metrics["test"]["baselines"]["abnormal"]
        assert 0.75 < base["prevalence"] < 0.95  # about 84 % abnormal
        assert base["always_positive"]["f1"] == pytest.approx(2 * base["prevalence"]
                                                              / (1 + base["prevalence"]))  # fmt: skip
        kinds = {v["kind"] for v in metrics["test"]["verdicts"]}
        ci = metrics["ci"]["label/abnormal/auroc"]
        assert ("chance" in kinds) == (ci["low"] <= 0.5 <= ci["high"]), run
        frame = pd.read_parquet(experiment / "runs" / run / "predictions.parquet")
        test = frame[frame["split"] == "test"]
        y, p = test[["y__abnormal"]].to_numpy(float), test[["p__abnormal"]].to_numpy(float)
        diff = paired_bootstrap(y, p, np.ones_like(p), metrics["thresholds"]["abnormal"], 0.5,
                                metrics=("f1",), n_boot=300, seed=0)["f1"]  # fmt: skip
        assert ("trivial" in kinds) == (diff["low"] <= 0), run
        val = frame[frame["split"] == "val"]["y__abnormal"]
        assert ("small_val" in kinds) == (min(val.sum(), (val == 0).sum()) < 10), run
    image = json.loads((experiment / "runs" / "image-seed0" / "metrics.json").read_text())
    assert "chance" in {v["kind"] for v in image["test"]["verdicts"]}
    evaluation = json.loads((experiment / "evaluation.json").read_text())
    assert {v["run"] for v in evaluation["verdicts"]} >= {"image-seed0"}
    assert "over" in evaluation["conclusion"] and "test studies" in evaluation["conclusion"]


def test_reports_open_with_the_conclusion_and_banners(experiment: Path) -> None:
    html = (experiment / "report.html").read_text()
    overview = html[: html.index("Unimodal vs multimodal, setting")]
    assert "Conclusion." in overview and "fusion adds" in overview.lower()
    assert "Run image-seed0: abnormal: AUROC" in overview and "not distinguishable from chance" in overview
    assert "Always positive (baseline)" in html
    cli("report", str(experiment / "runs" / "image-seed0"))
    run_html = (experiment / "runs" / "image-seed0" / "report.html").read_text()
    top = run_html[: run_html.index("Test metrics at val-chosen thresholds")]
    assert 'class="warning"' in top and "not distinguishable from chance" in top


def test_served_image_model_says_chance_and_shows_no_positive(experiment: Path) -> None:
    from fastapi.testclient import TestClient

    from cxrfuse.serve import Service, create_app

    run = experiment / "runs" / "image-seed0"
    client = TestClient(create_app(service=Service(run)))
    card = client.get("/v1/model").json()
    assert "chance" in card["no_skill"]["abnormal"]
    image = next((DATA / "images" / "images_normalized").glob("*.png"))
    answer = client.post("/v1/predict", files=[("images", (image.name, image.read_bytes(),
                                                           "image/png"))]).json()  # fmt: skip
    assert "chance" in answer["verdicts"]["abnormal"]
    assert any("not distinguishable from chance" in w for w in answer["warnings"])
    page = client.get("/").text
    assert "not distinguishable from chance" in page and "noskill" in page


CHROMIUM = next((p for p in (os.environ.get("CXRFUSE_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (Debian package `chromium`)")
def test_page_in_a_browser_shows_chance_not_positive(experiment: Path) -> None:
    """The served page, driven in Chromium with a real radiograph: the image model's row says
    "not distinguishable from chance" in grey, never a red "positive", under a red banner."""
    import socket
    import threading
    import time

    import uvicorn
    from playwright.sync_api import sync_playwright

    from cxrfuse.serve import Service, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    service = Service(experiment / "runs" / "image-seed0")
    server = uvicorn.Server(uvicorn.Config(create_app(service=service), host="127.0.0.1",
                                           port=port, log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    image = next((DATA / "images" / "images_normalized").glob("*.png"))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#verdicts:not([hidden])")
                assert "not distinguishable from chance" in page.inner_text("#verdicts")
                page.set_input_files("#files", [str(image)])
                page.uncheck("#explain")
                page.click("#submit")
                row = "#probabilities tr[data-label='abnormal']"
                page.wait_for_selector(row, timeout=60_000)
                assert page.get_attribute(row, "class") == "noskill"
                decision = page.inner_text(f"{row} td.decision")
                assert "not distinguishable from chance" in decision and "positive" not in decision.split(";")[0]
                color = page.eval_on_selector(f"{row} td.decision", "e => getComputedStyle(e).color")
                assert color == "rgb(102, 115, 127)"  # the neutral grey, not the red of "positive"
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
