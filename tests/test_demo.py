"""The embedded default demo, end to end on a slice of the bundled reports."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import read_manifest

ARGS = ["--limit", "120", "--size", "64", "--input-size", "64", "--max-epochs", "3",
        "--n-boot", "50", "--no-meteor"]


def test_demo_runs_end_to_end_and_reruns_from_cache(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    exp = out / "runs" / "iu-normal-abnormal"
    html, md = exp / "report.html", exp / "report.md"
    assert f"report: {html}" in result.output.replace("\n", "")
    text = md.read_text()
    assert "synthetic phantoms" in text and "Leakage probe" in text
    assert text.index("**Conclusion.**") < text.index("## Data")  # the conclusion opens it
    assert "Always positive (baseline)" in text and "Verdicts of every run" in text
    assert "Fused vs best unimodal" in text or "fused" in text.lower()
    assert html.read_text().count("data:image/png;base64,") >= 3  # plots embedded
    assert "Modality attribution" in text and "No explanations yet" not in text
    assert "## Report generation: retrieval (k = 5, medoid)" in text
    assert "best constant report (BLEU-4 on train)" in text
    assert (out / "phantom_gallery.png").stat().st_size > 10_000
    runs = sorted(p.name for p in (exp / "runs").iterdir())
    assert len(runs) == 6  # {findings+impression, indication} x {image, text, image+text}
    for name in runs:
        run = json.loads((exp / "runs" / name / "run.json").read_text())
        assert run["status"] == "finished" and run["images"] == "phantom"
        assert (exp / "runs" / name / "metrics.json").is_file()
        if len(run["modalities"]) == 2:  # fused runs get the modality shuffle test
            shuffle = json.loads((exp / "runs" / name / "ablation.json").read_text())["shuffle"]
            assert set(shuffle) == {"image", "text"}
            assert (exp / "runs" / name / "attribution" / "attribution_summary.csv").is_file()
    phantoms = read_manifest(out / "phantoms" / "manifest.parquet")
    assert len(phantoms) == 120 and phantoms.images == "phantom"
    first = min((out / "phantoms" / "images").iterdir())
    mtime = first.stat().st_mtime_ns
    again = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS])
    assert again.exit_code == 0, again.output
    assert "reusing" in again.output and first.stat().st_mtime_ns == mtime
    assert again.output.count("finished before, skipped") == 6
