"""The embedded default demo, on a slice of the bundled reports."""

from __future__ import annotations

from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import read_manifest


def test_demo_runs_end_to_end_and_reruns_from_cache(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--limit", "60", "--size", "64"])
    assert result.exit_code == 0, result.output
    report = out / "report.md"
    assert f"report: {report}" in result.output.replace("\n", "")
    text = report.read_text()
    assert "The images are synthetic phantoms" in text
    assert "### indication only" in text and "### masked findings+impression" in text
    assert "0 surviving label-term" in text  # masking removes every label term
    assert (out / "phantom_gallery.png").stat().st_size > 10_000
    phantoms = read_manifest(out / "phantoms" / "manifest.parquet")
    assert len(phantoms) == 60 and phantoms.images == "phantom"
    assert phantoms.has_images().all() and set(phantoms.df["split"]) == {"train", "val", "test"}
    first = min((out / "phantoms" / "images").iterdir())
    mtime = first.stat().st_mtime_ns
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--limit", "60", "--size", "64"])
    assert again.exit_code == 0, again.output
    assert "reusing" in again.output and first.stat().st_mtime_ns == mtime
