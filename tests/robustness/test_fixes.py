"""The fixes behind the battery that a bad input alone does not show: --debug, unexpected
errors, Markdown escaping, reruns that add a missing evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from battery_inputs import tiny_run_config
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.problems import DataError
from cxrfuse.reporting.document import Section, render_markdown

runner = CliRunner()


def test_debug_shows_the_traceback_instead_of_the_error_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.parquet")
    result = runner.invoke(app, ["--debug", "stats", missing])
    assert isinstance(result.exception, DataError) and "error:" not in result.output
    result = runner.invoke(app, ["stats", missing])  # the flag does not stick
    assert result.exit_code == 2 and result.output.startswith("error:")


def test_an_unexpected_exception_is_one_line_and_exit_code_1(
    tmp_path: Path, battery_phantoms: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrfuse.stats

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cxrfuse.stats, "render_summary", broken)
    result = runner.invoke(app, ["stats", str(battery_phantoms), "--sections", "findings"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        "error: unexpected RuntimeError: boom (rerun with `cxrfuse --debug ...` for the traceback)"
    ]


def test_report_markdown_escapes_html_from_user_names(tmp_path: Path) -> None:
    section = Section("<b>run</b>").add("text", "label <script>alert(1)</script> & **bold** ->")
    section.add("table", pd.DataFrame({"label": ["<img src=x>", "a|b"], "auroc": [0.5, 0.7]}))
    md = render_markdown("exp <i>", [section], tmp_path)
    assert "<script>" not in md and "<img" not in md and "<b>" not in md and "<i>" not in md
    assert "&lt;script>" in md and "**bold**" in md and "a\\|b" in md and "->" in md


def test_an_experiment_rerun_evaluates_a_finished_run_without_metrics(
    tmp_path: Path, battery_run: Path, battery_phantoms: Path
) -> None:
    base = tiny_run_config(tmp_path, battery_phantoms)
    base["data"]["store"] = str(battery_run.parents[1] / "store")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"name": "e", "runs_dir": str(tmp_path / "runs"), "base": base}))
    argv = ["experiment", str(config), "--offline", "--no-progress"]
    assert runner.invoke(app, argv).exit_code == 0
    metrics = tmp_path / "runs" / "e" / "runs" / "tiny-seed0" / "metrics.json"
    first = json.loads(metrics.read_text())
    metrics.unlink()  # what a kill during the evaluation leaves (metrics.json is written last)
    result = runner.invoke(app, argv)
    assert result.exit_code == 0 and "without metrics" in result.output
    again = json.loads(metrics.read_text())
    assert {k: again[k] for k in ("val", "test", "ci")} == {k: first[k] for k in ("val", "test", "ci")}


def test_local_image_weights_come_from_the_command_line_only(battery_run: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    from cxrfuse.encoders import create_image_encoder

    weights = tmp_path / "lite0.safetensors"  # the default weights, as a local file
    state = create_image_encoder("efficientnet-lite0").backbone.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    run = shutil.copytree(battery_run, tmp_path / "run")
    sidecar = json.loads((run / "model.json").read_text())
    sidecar["image"]["weights"] = str(weights)  # what training with a local file records
    (run / "model.json").write_text(json.dumps(sidecar))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (40, 40), 90).save(image)
    report = tmp_path / "r.txt"
    report.write_text("FINDINGS: Clear lungs.\nIMPRESSION: Normal.\n")
    args = ["--image", str(image), "--report", str(report)]
    refused = runner.invoke(app, ["predict", str(run), *args])
    assert refused.exit_code == 2 and "image.weights" in refused.output
    given = runner.invoke(app, ["predict", str(run), *args, "--image-weights", str(weights)])
    assert given.exit_code == 0, given.output
    original = runner.invoke(app, ["predict", str(battery_run), *args])
    assert json.loads(given.output)["probabilities"] == json.loads(original.output)["probabilities"]


def test_a_report_without_headings_is_a_warning_in_the_answer(battery_run: Path, tmp_path: Path) -> None:
    """Text without section headings is not what the run reads: the answer says so (and still
    gives the image's reading) instead of silently embedding the words as if they were findings."""
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("L", (40, 40), 90).save(image)
    report = tmp_path / "r.txt"
    report.write_text("just some words")
    result = runner.invoke(app, ["predict", str(battery_run), "--image", str(image), "--report", str(report)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert any("no section headings" in w for w in answer["warnings"]), answer["warnings"]
    assert set(answer["probabilities"]) == set(answer["decisions"])
    # the image is one gray value: its probabilities carry no image evidence, and it says so
    assert any(w.startswith(f"{image}: blank image (every pixel the model reads is 90)")
               for w in answer["warnings"]), answer["warnings"]  # fmt: skip


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_configs_and_run_json_in_utf16_or_with_a_bom_read_like_utf8(
        battery_run: Path, battery_phantoms: Path, tmp_path: Path, encoding: str) -> None:  # fmt: skip
    """A YAML config or a hand-edited run.json saved as UTF-16 or with a BOM (Windows
    editors) is read as the same values, not refused as 'unexpected'."""
    from cxrfuse.config.common import read_yaml_config
    from cxrfuse.rundir import RunDir

    payload = tiny_run_config(tmp_path, battery_phantoms)
    plain, wide = tmp_path / "plain.yaml", tmp_path / "wide.yaml"
    plain.write_text(yaml.safe_dump(payload), encoding="utf-8")
    wide.write_text(yaml.safe_dump(payload), encoding=encoding)
    assert read_yaml_config(wide) == read_yaml_config(plain) == payload
    run = tmp_path / "run"
    import shutil

    shutil.copytree(battery_run, run)
    info = (run / "run.json").read_text(encoding="utf-8")
    (run / "run.json").write_text(info, encoding=encoding)
    assert RunDir(run).info() == RunDir(battery_run).info()


def test_an_oversized_report_is_refused_by_the_python_api_too(battery_run: Path) -> None:
    from cxrfuse.inference import Predictor
    from cxrfuse.inference.predict import MAX_TEXT_CHARS

    with pytest.raises(DataError, match=r"report: 20,001 characters, over the limit of 20,000"):
        Predictor(battery_run).predict(report="x" * (MAX_TEXT_CHARS + 1), indication="cough")
