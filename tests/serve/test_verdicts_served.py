"""The run's test-set verdicts reach every answer: ``/v1/model`` lists them, each
``/v1/predict`` answer carries them per label and as warnings, and the page shows a label whose
model is at chance without a red "positive" (in a real browser when Chromium is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cxrfuse.serve import Service, create_app


@pytest.fixture(scope="module")
def client(served_run: Path) -> TestClient:
    return TestClient(create_app(service=Service(served_run)))


def _files(study: dict) -> list:
    return [("images", (Path(p).name, Path(p).read_bytes(), "image/png"))
            for p in (study["frontal"], study["lateral"])]  # fmt: skip


def test_card_and_answers_carry_the_runs_verdicts(client: TestClient, served_run: Path,
                                                   test_study: dict) -> None:  # fmt: skip
    stored = json.loads((served_run / "metrics.json").read_text())["test"]["verdicts"]
    assert "chance" in {v["kind"] for v in stored}  # 10 test studies: the interval is wide
    card = client.get("/v1/model").json()
    assert card["verdicts"] == stored
    assert card["test_metrics"]["baselines"]["abnormal"]["prevalence"] is not None
    answer = client.post("/v1/predict", files=_files(test_study),
                         data={"indication": test_study["indication"]}).json()  # fmt: skip
    assert answer["verdicts"]["abnormal"] == list(dict.fromkeys(v["kind"] for v in stored))
    for v in stored:
        assert any(v["message"] in w for w in answer["warnings"])
    no_skill = [k for k in answer["verdicts"]["abnormal"] if k in ("chance", "trivial")]
    assert card["no_skill"] == ({"abnormal": no_skill} if no_skill else {})
