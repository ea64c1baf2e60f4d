"""`cxrfuse explain` / `cxrfuse attribute` on a run directory trained by the real runner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from explain_models import LABELS, label_manifest
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms

runner = CliRunner()


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A concat-MLP over efficientnet-lite0 (64 px, ImageNet) + tf-idf indication embeddings,
    trained for 2 epochs on 40 phantom studies with two views."""
    from cxrfuse.config import validate_run
    from cxrfuse.training import train_run

    root = tmp_path_factory.mktemp("run")
    make_phantoms(label_manifest(40, seed=2), root / "phantoms", PhantomConfig(size=64),
                  progress=False)  # fmt: skip
    config = {
        "name": "fused", "runs_dir": str(root / "runs"), "seed": 0,
        "data": {"manifest": str(root / "phantoms" / "manifest.parquet"), "task": "lesions",
                 "store": str(root / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": 64, "views": "mean"},
        "text": {"encoder": "tfidf", "sections": ["indication"], "options": {"svd_dim": 4}},
        "model": {"kind": "concat-mlp", "modalities": ["image", "text"], "hidden": [16]},
        "training": {"max_epochs": 2, "batch_size": 16, "early_stopping": None},
    }  # fmt: skip
    return train_run(validate_run(config, "test config"), progress=False)


def test_help_has_examples() -> None:
    for verb in ("explain", "attribute"):
        result = runner.invoke(app, [verb, "--help"])
        assert result.exit_code == 0 and "Example" in result.output and "cxrfuse" in result.output


def test_explain_one_study_and_score(fused_run: Path) -> None:
    manifest = pd.read_parquet(yaml.safe_load((fused_run / "config.yaml").read_text())["data"]
                               ["manifest"])  # fmt: skip
    sid = str(manifest.loc[manifest["split"] == "test", "study_id"].iloc[0])
    result = runner.invoke(app, ["explain", str(fused_run), "--study", sid, "--label",
                                 "Cardiomegaly,Nodule", "--method", "gradcam++", "--no-progress"])
    assert result.exit_code == 0, result.output
    index = pd.read_csv(fused_run / "explain" / "gradcam++" / "index.csv")
    assert len(index) == 2 * 2 and set(index["study_id"].astype(str)) == {sid}
    assert all(Path(p).exists() for p in index["overlay"])
    # one run-level colour scale per label (from val images), recorded with each map
    assert index["scale"].notna().all() and (index["scale"] > 0).all()
    assert index.groupby("label")["scale"].nunique().eq(1).all()
    assert set(index["shown"]) <= {True, False} and "raw_max" in index
    for _, row in index[~index["shown"]].iterrows():  # a flat map is said, not drawn
        assert "flat" in row["note"] or "empty" in row["note"]
    result = runner.invoke(app, ["explain", str(fused_run), "--split", "test", "--limit", "1",
                                 "--score", "--score-limit", "4", "--no-progress",
                                 "--attribution"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "hit rate" in result.output and "image share" in result.output
    scores = fused_run / "explain" / "gradcam" / "scores"
    assert (scores / "pointing_game.md").exists() and (scores / "deletion.png").exists()


def test_attribute_writes_the_table(fused_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["attribute", str(fused_run), "--removal", "zeros",
                                 "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "attribution.csv")
    assert set(table["label"]) == set(LABELS)
    assert (tmp_path / "attribution.png").exists()


def test_bad_input_is_one_clear_line(fused_run: Path) -> None:
    result = runner.invoke(app, ["explain", str(fused_run), "--study", "NOPE"])
    assert result.exit_code == 2 and "NOPE" in result.output
    result = runner.invoke(app, ["explain", str(fused_run), "--study", "S0000", "--method", "x"])
    assert result.exit_code == 2 and "unknown CAM method" in result.output
    result = runner.invoke(app, ["attribute", str(fused_run), "--removal", "half"])
    assert result.exit_code == 2 and "mean or zeros" in result.output
    result = runner.invoke(app, ["explain", str(fused_run.parent / "missing")])
    assert result.exit_code == 2


def test_report_shows_attribution_and_pointing_scores(fused_run: Path, tmp_path: Path) -> None:
    """`cxrfuse report` on a run copy picks up what `attribute` and `explain --score` wrote."""
    import shutil

    from cxrfuse.explain.runs import attribute_run, explain_run
    from cxrfuse.reporting import write_report

    run = shutil.copytree(fused_run, tmp_path / "run",
                          ignore=shutil.ignore_patterns("explain", "attribution", "report*"))
    html = write_report(run)[0].read_text()
    assert "<h2>Explanations" in html and "No explanations yet" in html
    attribute_run(run)
    explain_run(run, limit=1, score=True, score_limit=4, progress=False)
    html_path, md_path = write_report(run)
    html, md = html_path.read_text(), md_path.read_text()
    assert "No explanations yet" not in html
    assert "Modality attribution" in html and "image_share" in html
    assert "pointing-game hit rate" in html and "hit_rate" in html
    for name in ("attribution", "pointing_game", "deletion"):
        assert f"{name}.png" in md  # linked in the Markdown, embedded in the HTML
    assert html.count('src="data:image/png;base64,') >= 3
